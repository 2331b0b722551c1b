"""Tests for core.face: crop/paste math, detectors (random weights), detect_and_crop."""
import json
import socket
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import face
from core.errors import CheckpointError, InputError


def _linear_image(h, w, b=1):
    """An image whose channels are affine functions of (x, y): bilinear sampling is exact."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    r = 0.1 + 0.8 * x / max(w - 1, 1)
    g = 0.1 + 0.8 * y / max(h - 1, 1)
    bl = 0.5 + 0.2 * (x / max(w, 1) - y / max(h, 1))
    img = torch.stack([r, g, bl], -1).float()[None]
    return img.repeat(b, 1, 1, 1)


def _linear_at(pts, h, w):
    x, y = pts[..., 0], pts[..., 1]
    return np.stack([0.1 + 0.8 * x / max(w - 1, 1), 0.1 + 0.8 * y / max(h - 1, 1),
                     0.5 + 0.2 * (x / max(w, 1) - y / max(h, 1))], -1)


def _crop_pixel_centres(record):
    S = record.crop_size
    v, u = np.meshgrid(np.arange(S, dtype=np.float64), np.arange(S, dtype=np.float64), indexing="ij")
    return record.to_full(np.stack([u, v], -1).reshape(-1, 2)).reshape(S, S, 2)


# --------------------------------------------------------------------------- records
def test_crop_from_box_geometry():
    rec = face.crop_from_box((10, 20, 50, 100), (200, 300), crop_size=64, scale=2.0, vy=0.25)
    size = 80.0  # max(w=40, h=80)
    side = 2.0 * size
    cx, cy = 30.0, 60.0 + 0.25 * size
    # the square's edges land on the crop's outer edges -0.5 and S-0.5
    assert np.allclose(rec.to_crop([[cx - side / 2, cy - side / 2]]), [[-0.5, -0.5]])
    assert np.allclose(rec.to_crop([[cx + side / 2, cy + side / 2]]), [[63.5, 63.5]])
    assert np.allclose(rec.to_crop([[cx, cy]]), [[31.5, 31.5]])
    assert rec.scale == pytest.approx(64 / side)
    assert np.allclose(rec.matrix3 @ rec.inverse3, np.eye(3))
    pts = np.random.default_rng(0).uniform(-100, 400, (10, 2))
    assert np.allclose(rec.to_full(rec.to_crop(pts)), pts)
    assert rec.bbox == (10.0, 20.0, 50.0, 100.0) and rec.full_size == (200, 300)


def test_crop_from_box_rejects_bad_input():
    with pytest.raises(InputError):
        face.crop_from_box((10, 10, 10, 20), (50, 50), 32)
    with pytest.raises(InputError):
        face.crop_from_box((0, 0, 10, 10), (50, 50), 0)
    with pytest.raises(InputError):
        face.crop_from_box((0, 0, 10, 10), (50, 50), 32, scale=0)


def test_record_dict_roundtrip():
    rec = face.crop_from_box((1.5, 2, 30, 41), (64, 80), 32, score=0.9,
                             landmarks=np.array([[3.0, 4.0], [5.0, 6.0]]), detector="x", num_faces=3)
    d = json.loads(json.dumps(rec.to_dict()))
    back = face.CropRecord.from_dict(d)
    assert np.allclose(back.matrix, rec.matrix) and np.allclose(back.inverse, rec.inverse)
    assert back.crop_size == 32 and back.full_size == (64, 80) and back.num_faces == 3
    assert back.bbox == rec.bbox and back.score == pytest.approx(0.9) and back.detector == "x"
    assert np.allclose(back.landmarks, rec.landmarks)
    d.pop("inverse")
    assert np.allclose(face.CropRecord.from_dict(d).inverse, rec.inverse)
    with pytest.raises(InputError):
        face.CropRecord.from_dict({"matrix": [[1, 0, 0]]})


def test_with_crop_size_maps_same_square():
    rec = face.crop_from_box((10, 10, 40, 50), (100, 100), 64)
    half = rec.with_crop_size(32)
    corner = rec.to_full([[-0.5, -0.5], [63.5, 63.5]])
    assert np.allclose(half.to_full([[-0.5, -0.5], [31.5, 31.5]]), corner)
    assert half.scale == pytest.approx(rec.scale / 2)


# --------------------------------------------------------------------------- crop
@pytest.mark.parametrize("mode", face.PADDING_MODES)
def test_identity_crop_is_exact(mode):
    img = torch.rand(2, 9, 9, 3)
    faces = face.NoneDetector().detect(img[0])
    rec = face.crop_from_box(faces[0].box, (9, 9), 9, scale=1.0, vy=0.0)
    assert np.allclose(rec.matrix, [[1, 0, 0], [0, 1, 0]])
    out = face.crop_image(img, rec, padding_mode=mode, device="cpu")
    assert torch.equal(out, img)


def test_integer_translation_crop_is_exact_and_pads():
    img = torch.rand(1, 6, 7, 3)
    rec = face.CropRecord(matrix=[[1, 0, 3], [0, 1, -2]], inverse=None, crop_size=5, full_size=(6, 7))
    out = face.crop_image(img, rec, "zeros", device="cpu")
    # crop (u, v) = full (u - 3, v + 2)
    assert torch.equal(out[0, 0, 3], img[0, 2, 0])
    assert torch.equal(out[0, 3, 4], img[0, 5, 1])
    assert torch.all(out[0, :, :3] == 0) and torch.all(out[0, 4:] == 0)
    border = face.crop_image(img, rec, "border", device="cpu")
    assert torch.equal(border[0, 0, 0], img[0, 2, 0]) and torch.equal(border[0, 4, 4], img[0, 5, 1])
    refl = face.crop_image(img, rec, "reflection", device="cpu")
    assert torch.equal(refl[0, 0, 2], img[0, 2, 0]) and torch.equal(refl[0, 0, 1], img[0, 2, 1])


@pytest.mark.parametrize("mode", face.PADDING_MODES)
def test_exact_path_matches_sampling_path(mode):
    """The integer-shift fast path and grid sampling agree, padding included."""
    img = torch.rand(1, 8, 10, 3)
    m = np.array([[1.0, 0, 4], [0, 1.0, -3]])
    exact = face.crop_image(img, face.CropRecord(m, None, 12, (8, 10)), mode, device="cpu")
    m2 = m.copy()
    m2[:, 2] += 1e-4  # not an integer shift any more -> grid_sample
    sampled = face.crop_image(img, face.CropRecord(m2, None, 12, (8, 10)), mode, device="cpu")
    assert (exact - sampled).abs().max() < 1e-3


@pytest.mark.parametrize("crop_size,tol", [(96, 2e-4), (20, 1.5e-3)])  # enlarging; shrinking (antialiased)
def test_crop_samples_the_right_places(crop_size, tol):
    H, W = 60, 80
    img = _linear_image(H, W)
    rec = face.crop_from_box((30, 20, 50, 44), (H, W), crop_size, scale=1.5, vy=-0.1)
    out = face.crop_image(img, rec, "zeros", device="cpu")
    expect = _linear_at(_crop_pixel_centres(rec), H, W)
    # affine images are reproduced exactly by bilinear sampling; the antialias pre-filter used
    # when shrinking may move things by a few hundredths of a pixel (slope here: 0.01 per pixel)
    assert np.abs(out[0].numpy() - expect).max() < tol


def test_crop_outside_the_image():
    H, W = 30, 40
    img = torch.rand(1, H, W, 3) * 0.5 + 0.25
    for size in (32, 128):  # shrinking (antialiased) and enlarging
        rec = face.crop_from_box((-40, -30, 0, 10), (H, W), size, scale=2.0, vy=0.0)  # off the top-left
        pts = _crop_pixel_centres(rec)
        reach = 0.5 + 1.0 / rec.scale  # half an image pixel + one crop pixel of filter reach
        far = (pts[..., 0] < -reach) | (pts[..., 1] < -reach)
        out = face.crop_image(img, rec, "zeros", device="cpu")[0]
        assert far.any() and (~far).any()
        assert torch.all(out[torch.from_numpy(far)] == 0) and torch.all(out[torch.from_numpy(~far)].amax(-1) > 0)
    # enlarging crop: border padding repeats the nearest edge pixel
    out = face.crop_image(img, rec, "border", device="cpu")[0]
    corner = (pts[..., 0] < -reach) & (pts[..., 1] < -reach)
    assert torch.allclose(out[torch.from_numpy(corner)], img[0, 0, 0].expand(int(corner.sum()), 3))
    left = (pts[..., 0] < -reach) & (pts[..., 1] > 3.0) & (pts[..., 1] < 4.0)
    assert left.any() and torch.allclose(out[torch.from_numpy(left)], img[0, 3:5, 0].mean(0).expand(int(left.sum()), 3), atol=0.3)
    refl = face.crop_image(img, rec, "reflection", device="cpu")[0]
    assert torch.all(refl > 0.2)  # mirrored picture, no black
    entirely = face.crop_from_box((500, 500, 520, 520), (H, W), 64)
    assert torch.all(face.crop_image(img, entirely, "zeros", device="cpu") == 0)
    assert torch.allclose(face.crop_image(img, entirely, "border", device="cpu")[0, 5, 5], img[0, -1, -1])


def test_crop_checks_size_and_mode():
    rec = face.crop_from_box((0, 0, 10, 10), (20, 20), 8)
    with pytest.raises(InputError, match="20x20"):
        face.crop_image(torch.rand(1, 21, 20, 3), rec, device="cpu")
    with pytest.raises(InputError, match="padding_mode"):
        face.crop_image(torch.rand(1, 20, 20, 3), rec, "wrap", device="cpu")


# --------------------------------------------------------------------------- paste back
def test_square_mask():
    m = face.square_mask(20, 0.1)
    assert m.shape == (20, 20)
    assert torch.all(m[2:18, 2:18] == 1)
    assert m[0, 10] < 0.2 and m[0, 0] < m[0, 10] and m[1, 10] > m[0, 10]
    assert torch.equal(face.square_mask(7, 0.0), torch.ones(7, 7))


@pytest.mark.parametrize("crop_size", [128, 24])
def test_paste_back_roundtrip(crop_size):
    H, W = 70, 90
    img = _linear_image(H, W)
    rec = face.crop_from_box((35, 20, 60, 50), (H, W), crop_size, scale=1.6, vy=-0.1)
    crop = face.crop_image(img, rec, "border", device="cpu")
    out = face.paste_back(img, crop, rec, feather=0.1, device="cpu")
    assert out.shape == (1, H, W, 3) and out.dtype == torch.float32
    # where the pasted mask is fully on: the original comes back
    alpha = face.paste_back(torch.zeros(1, H, W, 3), torch.ones(1, crop_size, crop_size, 3), rec,
                            feather=0.1, device="cpu")[0, ..., 0]
    inside = alpha >= 1 - 1e-6
    assert inside.sum() > 100
    assert (out[0][inside] - img[0][inside]).abs().max() < 2e-4
    # far outside the crop: exactly the original
    foot = rec.to_full([[-0.5, -0.5], [crop_size - 0.5, crop_size - 0.5]])
    outside = torch.ones(H, W, dtype=torch.bool)
    outside[max(0, int(foot[0, 1]) - 2):int(foot[1, 1]) + 3, max(0, int(foot[0, 0]) - 2):int(foot[1, 0]) + 3] = False
    assert outside.any() and torch.equal(out[0][outside], img[0][outside])
    # anywhere: a convex mix of the same picture, so close everywhere
    assert (out - img).abs().max() < 0.05


def test_paste_back_blends_and_keeps_frame_order():
    H, W = 40, 50
    full = torch.full((H, W, 3), 0.2)
    rec = face.crop_from_box((15, 10, 35, 30), (H, W), 16, scale=1.2, vy=0.0)
    values = torch.tensor([0.3, 0.5, 0.7, 0.9, 1.0])
    crops = values.view(5, 1, 1, 1).expand(5, 16, 16, 3).clone()
    seen = []
    out = face.paste_back(full, crops, rec, feather=0.2, chunk=2, device="cpu",
                          progress=lambda d, t: seen.append((d, t)))
    assert out.shape == (5, H, W, 3)
    centre = out[:, 20, 25, 0]
    assert torch.allclose(centre, values, atol=1e-6)
    assert torch.all(out[:, 0, 0] == 0.2)
    # the feathered rim is between the two values
    rim = out[:, 20, int(round(rec.to_full([[0.5, 7.5]])[0, 0])), 0]
    assert torch.all(rim > 0.2) and torch.all(rim < values)
    assert seen[-1] == (3, 3)


def test_paste_back_masks_sizes_and_broadcast():
    H, W = 32, 32
    img = torch.rand(1, H, W, 3)
    rec = face.crop_from_box((7.5, 7.5, 23.5, 23.5), (H, W), 16, scale=1.0, vy=0.0)  # pixels 8..23
    assert np.allclose(rec.matrix, [[1, 0, -8], [0, 1, -8]])
    white = torch.ones(1, 16, 16, 3)
    # an all-zero mask pastes nothing
    assert torch.equal(face.paste_back(img, white, rec, mask=np.zeros((16, 16)), device="cpu"), img)
    # a mask of another size is resized; uint8 masks are 0..255
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    out = face.paste_back(img[0], white, rec, mask=m, device="cpu")
    assert torch.allclose(out[0, 16, 16], torch.ones(3)) and torch.equal(out[0, 9, 9], img[0, 9, 9])
    # crops at another resolution than the record: the record is rescaled
    big = face.paste_back(img, torch.ones(1, 64, 64, 3), rec, feather=0.0, device="cpu")
    assert torch.allclose(big[0, 8:24, 8:24], torch.ones(16, 16, 3), atol=1e-6)
    # several frames, one crop
    frames = torch.rand(3, H, W, 3)
    out = face.paste_back(frames, white, rec, feather=0.0, device="cpu")
    assert out.shape == (3, H, W, 3) and torch.equal(out[:, 0], frames[:, 0])
    assert torch.equal(out[:, 8:24, 8:24], torch.ones(3, 16, 16, 3))  # integer shift: exact
    with pytest.raises(InputError):
        face.paste_back(frames, torch.ones(2, 16, 16, 3), rec, device="cpu")
    with pytest.raises(InputError):
        face.paste_back(img, torch.ones(1, 16, 12, 3), rec, device="cpu")
    with pytest.raises(InputError):
        face.paste_back(torch.rand(1, 30, 32, 3), white, rec, device="cpu")


def test_paste_crop_outside_frame_returns_original():
    img = torch.rand(2, 20, 20, 3)
    rec = face.crop_from_box((100, 100, 120, 120), (20, 20), 8)
    assert torch.equal(face.paste_back(img, torch.ones(2, 8, 8, 3), rec, device="cpu"), img)


# --------------------------------------------------------------------------- simple detectors
def test_center_and_none_detectors():
    img = torch.rand(6, 10, 3)
    (c,) = face.CenterDetector().detect(img)
    assert c.box == (1.5, -0.5, 7.5, 5.5) and c.score == 1.0
    (n,) = face.NoneDetector().detect(np.zeros((6, 10, 3), np.uint8))
    assert n.box == (-0.5, -0.5, 9.5, 5.5)
    crop, rec = face.detect_and_crop(img[None], face.CenterDetector(), crop_size=6, device="cpu")
    assert torch.equal(crop[0], img[:, 2:8])  # the centred square, unscaled, pixel-exact
    assert rec.detector == "center" and rec.num_faces == 1
    crop, rec = face.detect_and_crop(img[None], face.NoneDetector(), crop_size=10, padding_mode="zeros", device="cpu")
    assert torch.equal(crop[0, 2:8], img) and torch.all(crop[0, :2] == 0)  # padded to a square


class _FakeDetector(face.FaceDetector):
    name = "fake"

    def __init__(self, faces):
        self.faces = faces

    def detect(self, image):
        return list(self.faces)


def test_largest_face_is_used():
    img = torch.rand(1, 100, 120, 3)
    faces = [face.Face((10, 10, 30, 30), 0.99), face.Face((50, 40, 90, 85), 0.6), face.Face((0, 0, 5, 5), 0.7)]
    crop, rec = face.detect_and_crop(img, _FakeDetector(faces), crop_size=32, scale=1.5, vy=0.0, device="cpu")
    assert rec.num_faces == 3 and rec.bbox == (50.0, 40.0, 90.0, 85.0) and rec.score == pytest.approx(0.6)
    assert crop.shape == (1, 32, 32, 3)
    assert np.allclose(rec.to_crop([[70, 62.5]]), [[15.5, 15.5]])
    assert rec.detector == "fake"


def test_no_face_error_names_fallbacks():
    with pytest.raises(InputError) as e:
        face.detect_and_crop(torch.rand(1, 20, 20, 3), _FakeDetector([]), device="cpu")
    msg = str(e.value)
    assert "No face" in msg and '"center"' in msg and "none (already cropped)" in msg


def test_make_detector_names():
    assert isinstance(face.make_detector("center", None), face.CenterDetector)
    assert isinstance(face.make_detector("none (already cropped)", None), face.NoneDetector)
    assert set(face.DETECTOR_CHOICES) == {"face-alignment sfd", "face-alignment blazeface", "center",
                                          "none (already cropped)"}
    with pytest.raises(InputError, match="unknown face detector"):
        face.make_detector("dlib", None)


# --------------------------------------------------------------------------- network detectors (random weights)
@pytest.fixture
def no_network(monkeypatch):
    import face_alignment.detection.sfd.sfd_detector as sfd_mod
    import face_alignment.detection.blazeface.blazeface_detector as bf_mod
    import face_alignment.utils as fa_utils

    def refuse(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(sfd_mod, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(bf_mod, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(bf_mod, "load_file_from_url", refuse)
    monkeypatch.setattr(fa_utils, "load_file_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _save_both(state, tmp_path, stem):
    from safetensors.torch import save_file

    pth, st = tmp_path / f"{stem}.pth", tmp_path / f"{stem}.safetensors"
    torch.save(state, pth)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    return pth, st


@pytest.fixture(scope="module")
def s3fd_files(tmp_path_factory):
    from face_alignment.detection.sfd.net_s3fd import s3fd

    torch.manual_seed(0)
    net = s3fd()
    with torch.no_grad():  # make the random net find "faces" at a few levels
        net.conv3_3_norm_mbox_conf.bias[3] += 3.0
        net.conv4_3_norm_mbox_conf.bias[1] += 2.0
        net.conv5_3_norm_mbox_conf.bias[1] += 2.0
    return _save_both(net.state_dict(), tmp_path_factory.mktemp("s3fd"), "s3fd")


def _image(h, w, seed=3):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _boxes(faces):
    return np.array([list(f.box) + [f.score] for f in faces])


def test_sfd_random_weights_pth_and_safetensors(s3fd_files, no_network):
    from face_alignment.detection.sfd.sfd_detector import SFDDetector

    pth, st = s3fd_files
    img = _image(64, 64)
    a = face.FaceAlignmentSFD(pth, device="cpu").detect(img)
    b = face.FaceAlignmentSFD(st, device="cpu").detect(torch.from_numpy(img).float() / 255)
    assert len(a) > 0 and len(a) == len(b)
    assert np.allclose(_boxes(a), _boxes(b), atol=1e-3)
    assert all(f.score > 0.5 for f in a)
    assert all(x.score >= y.score for x, y in zip(a, a[1:]))
    # the same detections as face-alignment's own SFD detector (its coordinates are +0.5)
    ref = np.array(SFDDetector("cpu", path_to_detector=str(pth)).detect_from_image(img.copy()))
    ref = ref[np.argsort(-ref[:, 4])]
    ours = _boxes(a)
    assert ref.shape == ours.shape
    assert np.allclose(ours[:, :4] + 0.5, ref[:, :4], atol=1e-3)
    assert np.allclose(ours[:, 4], ref[:, 4], atol=1e-5)


def test_sfd_max_side_maps_boxes_back(s3fd_files):
    pth, _ = s3fd_files
    big = torch.rand(64, 96, 3)
    det = face.FaceAlignmentSFD(pth, device="cpu", max_side=48)
    on_big = det.detect(big)  # shrunk to 32x48 internally
    small = F.interpolate(big.permute(2, 0, 1)[None], size=(32, 48), mode="bilinear", align_corners=False,
                          antialias=True)[0].permute(1, 2, 0)
    det.max_side = None
    on_small = det.detect(small)
    assert len(on_small) > 0 and len(on_small) == len(on_big)
    # image-edge coordinates (+0.5) scale by exactly 2
    assert np.allclose((_boxes(on_small)[:, :4] + 0.5) * 2, _boxes(on_big)[:, :4] + 0.5, atol=1e-3)
    assert np.allclose(_boxes(on_small)[:, 4], _boxes(on_big)[:, 4], atol=1e-5)


def test_sfd_rejects_wrong_weights(tmp_path):
    from safetensors.torch import save_file

    save_file({"conv1_1.weight": torch.zeros(3)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match="wrong.safetensors"):
        face.FaceAlignmentSFD(tmp_path / "wrong.safetensors", device="cpu")
    with pytest.raises(CheckpointError):
        face.FaceAlignmentSFD(tmp_path / "missing.pth", device="cpu")


def _anchors():
    rows = []
    for n, per in ((16, 2), (8, 6)):
        for y in range(n):
            for x in range(n):
                rows += [[(x + 0.5) / n, (y + 0.5) / n, 1.0, 1.0]] * per
    return np.array(rows, np.float32)


@pytest.fixture(scope="module")
def blazeface_files(tmp_path_factory):
    from face_alignment.detection.blazeface.net_blazeface import BlazeFace

    torch.manual_seed(1)
    net = BlazeFace()
    with torch.no_grad():
        net.classifier_8.bias += 1.0
        net.classifier_16.bias += 1.0
        for reg in (net.regressor_8, net.regressor_16):  # boxes of a sane, positive size
            reg.weight *= 0.05
            reg.bias.zero_()
            reg.bias.view(-1, 16)[:, 2:4] = 40.0
    d = tmp_path_factory.mktemp("blaze")
    pth, st = _save_both(net.state_dict(), d, "blazeface")
    np.save(d / "anchors.npy", _anchors())
    return pth, st, d / "anchors.npy"


def test_blazeface_random_weights(blazeface_files, no_network):
    from face_alignment.detection.blazeface.blazeface_detector import BlazeFaceDetector

    pth, st, anchors = blazeface_files
    img = _image(128, 128, seed=5)
    a = face.FaceAlignmentBlazeFace(pth, anchors, device="cpu").detect(img)
    b = face.FaceAlignmentBlazeFace(st, anchors, device="cpu").detect(img)
    assert len(a) > 0 and len(a) == len(b)
    assert np.allclose(_boxes(a), _boxes(b), atol=1e-4)
    assert a[0].landmarks.shape == (6, 2)
    # matches face-alignment's detector on a square 128 image (no resizing either way)
    ref = np.array(BlazeFaceDetector("cpu", path_to_detector=str(pth), path_to_anchor=str(anchors))
                   .detect_from_image(img.copy()))
    ref = ref[np.argsort(-ref[:, 4])]
    assert ref.shape == _boxes(a).shape
    assert np.allclose(_boxes(a)[:, :4] + 0.5, ref[:, :4], atol=1e-3)
    # a letterboxed non-square image maps boxes back into its own pixels
    wide = np.zeros((64, 128, 3), np.uint8)
    wide[:] = img[32:96]
    for f in face.FaceAlignmentBlazeFace(pth, anchors, device="cpu").detect(wide):
        assert np.isfinite(f.box).all()


def test_blazeface_bad_anchors(blazeface_files, tmp_path):
    pth, _, _ = blazeface_files
    np.save(tmp_path / "short.npy", np.zeros((10, 4), np.float32))
    with pytest.raises(CheckpointError, match="short.npy"):
        face.FaceAlignmentBlazeFace(pth, tmp_path / "short.npy", device="cpu")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="obj.npy"):
        face.FaceAlignmentBlazeFace(pth, tmp_path / "obj.npy", device="cpu")


def test_make_detector_uses_resolver(s3fd_files, blazeface_files, no_network):
    asked = []
    files = {"face_detection/s3fd": s3fd_files[1], "face_detection/blazeface": blazeface_files[1],
             "face_detection/blazeface_anchors": blazeface_files[2]}

    def resolver(file_id):
        asked.append(file_id)
        return files[file_id]

    assert isinstance(face.make_detector("face-alignment sfd", resolver, "cpu"), face.FaceAlignmentSFD)
    assert isinstance(face.make_detector("Face-Alignment BlazeFace", resolver, "cpu"), face.FaceAlignmentBlazeFace)
    assert asked == ["face_detection/s3fd", "face_detection/blazeface", "face_detection/blazeface_anchors"]
    with pytest.raises(InputError):
        face.make_detector("face-alignment sfd", None)


def test_detect_and_crop_with_sfd(s3fd_files):
    img = torch.from_numpy(_image(64, 64)).float()[None] / 255
    det = face.FaceAlignmentSFD(s3fd_files[1], device="cpu")
    faces = det.detect(img[0])
    crop, rec = face.detect_and_crop(img, det, crop_size=48, device="cpu")
    best = max(faces, key=lambda f: f.area)
    assert rec.num_faces == len(faces) and rec.bbox == best.box
    assert rec.detector == "face-alignment sfd" and crop.shape == (1, 48, 48, 3)
    size = max(best.width, best.height)
    assert rec.scale == pytest.approx(48 / (face.DEFAULT_SCALE * size))


def test_blazeface_degenerate_boxes_are_dropped(blazeface_files):
    pth, _, anchors = blazeface_files
    det = face.FaceAlignmentBlazeFace(pth, anchors, device="cpu")
    with torch.no_grad():  # every box gets a negative width and height
        for reg in (det.net.regressor_8, det.net.regressor_16):
            reg.bias.view(-1, 16)[:, 2:4] = -40.0
    assert det.detect(_image(128, 128, seed=5)) == []
