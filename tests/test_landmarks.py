"""core.face.landmarks: face-alignment's 2D-FAN with random weights (no downloads, CPU, ~10 s)."""
import copy
import socket
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tolerance as tol

face_alignment = pytest.importorskip("face_alignment")
from face_alignment.models import FAN  # noqa: E402

from core.face import landmarks as L  # noqa: E402
from core import weights as W  # noqa: E402
from core.cache import CACHE  # noqa: E402
from core.errors import CheckpointError, InputError, WeightsMissingError  # noqa: E402
from core.face import Face, FaceDetector  # noqa: E402

OFFICIAL, TWIN = W.model_file(L.FILE_ID).names
# a pixel-centre face box in the 200x180 test picture; its crop square runs past the top and left
# edges, so face-alignment's zero padding is exercised too
BOX = (12.7, 30.6, 95.2, 121.9)


def _no_network(*args, **kwargs):
    raise AssertionError("tests must not touch the network")


@pytest.fixture(scope="module")
def offline():
    """No network for the whole module, module-scoped fixtures included."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(urllib.request, "urlopen", _no_network)
        mp.setattr(torch.hub, "download_url_to_file", _no_network)
        mp.setattr(torch.hub, "load_state_dict_from_url", _no_network)
        mp.setattr(face_alignment.utils, "download_url_to_file", _no_network)
        mp.setattr(face_alignment.utils, "load_file_from_url", _no_network)
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        yield


@pytest.fixture(scope="module")
def fan_state(offline):
    torch.manual_seed(0)
    net = FAN(4)
    with torch.no_grad():  # non-trivial batch-norm statistics, so buffers must load too
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def fan_files(fan_state, tmp_path_factory):
    d = tmp_path_factory.mktemp("fan")
    torch.save(fan_state, d / OFFICIAL)  # the official file is a plain state dict
    save_file(fan_state, str(d / TWIN))
    return d / OFFICIAL, d / TWIN


@pytest.fixture(scope="module")
def landmarker(fan_files):
    return L.FANLandmarks(fan_files[0], device="cpu")


@pytest.fixture(scope="module")
def image():
    """A smooth, non-symmetric uint8 RGB test picture [H, W, 3]."""
    rng = np.random.default_rng(1)
    h, w = 180, 200
    small = rng.integers(0, 256, (h // 10, w // 10, 3)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(h, w),
                                          mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (xx * 0.4 + yy * 0.2)[..., None]
    return np.clip(big.numpy() * 0.7 + ramp, 0, 255).round().astype(np.uint8)


def _window(lm: L.FANLandmarks, box):
    """The square face-alignment crops, in pixel-centre coordinates: (x0, y0, x1, y1)."""
    centre, scale = lm.crop_params(box)
    half = 200.0 * scale / 2.0
    return centre[0] - half - 0.5, centre[1] - half - 0.5, centre[0] + half - 0.5, centre[1] + half - 0.5


@pytest.fixture(scope="module")
def ours(landmarker, image):
    """Our landmarks from a float 0..1 tensor image (the face-alignment reference gets uint8)."""
    t = torch.from_numpy(image).float() / 255.0
    return landmarker.landmarks(t, BOX)


def test_landmarks_shape_finite_and_inside_the_crop(landmarker, ours):
    assert ours.shape == (68, 2) and ours.dtype == np.float64
    assert np.isfinite(ours).all()
    x0, y0, x1, y1 = _window(landmarker, BOX)
    assert x0 < -0.5 and y0 < -0.5  # the square runs past the picture
    assert (ours[:, 0] >= x0).all() and (ours[:, 0] <= x1).all()
    assert (ours[:, 1] >= y0).all() and (ours[:, 1] <= y1).all()
    # the square is about twice the box, around it
    assert x0 < BOX[0] and BOX[2] < x1 and y0 < BOX[1] and BOX[3] < y1
    assert (x1 - x0) < 2.3 * max(BOX[2] - BOX[0], BOX[3] - BOX[1])
    assert np.ptp(ours, axis=0).min() > 1.0  # not degenerate


def test_matches_face_alignment_get_landmarks_from_image(landmarker, image, ours):
    """face-alignment's own method, same random net: its landmarks are ours moved to its
    spans-0..W convention (+0.5) and truncated to integers (see the module docstring)."""
    fa = object.__new__(face_alignment.FaceAlignment)
    fa.face_alignment_net = landmarker.net
    fa.device = "cpu"
    fa.dtype = torch.float32
    fa.flip_input = True
    fa.landmarks_type = face_alignment.LandmarksType.TWO_D
    fa.face_detector = SimpleNamespace(reference_scale=195)
    fa.max_batch_size = 1
    fa.verbose = False
    (theirs,) = fa.get_landmarks_from_image(image.copy(), detected_faces=[np.array(BOX) + 0.5])
    theirs = np.asarray(theirs, dtype=np.float64)
    assert theirs.shape == (68, 2)
    span = ours + 0.5  # pixel-centre -> face-alignment's spans-0..W convention
    # face-alignment maps the heatmap cells in float32 (the side, 1 / side, -c / side + 0.5, * 64, a 3x3
    # inverse of 3 roundings per entry, a 3-term product): its value may sit that far on the other side of
    # an integer before truncation
    margin = tol.elementwise_bound(ops=11, magnitude=float(np.abs(span).max()))
    clear = np.abs(span - np.round(span)) > margin  # away from integer boundaries
    assert clear.mean() > 0.9
    assert np.array_equal(theirs[clear], np.trunc(span[clear]))
    assert (np.abs(theirs - span) < 1.0 + margin).all()
    # where the point is right of / below the picture's outer corner, int() is floor: within
    # [-0.5, 0.5) of our pixel-centre value
    pos = span > 0
    assert pos.mean() > 0.5
    assert (np.abs(theirs[pos] - ours[pos]) <= 0.5 + margin).all()


class _PeakNet(torch.nn.Module):
    """Heatmaps with a single peak at cell (kx, ky) for every landmark."""

    def __init__(self, kx: int, ky: int) -> None:
        super().__init__()
        self.kx, self.ky = kx, ky
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        hm = torch.zeros(x.shape[0], 68, 64, 64)
        hm[:, :, self.ky, self.kx] = 1.0
        return [hm]


def test_heatmap_cell_maps_to_documented_pixel_centre_coordinates(landmarker, image):
    lm = copy.copy(landmarker)
    lm.net, lm.flip_input = _PeakNet(kx=40, ky=21), False
    pts = lm.landmarks(image, BOX)
    x0, y0, x1, y1 = BOX
    side = 200.0 * (x1 - x0 + y1 - y0) / 195.0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * (y1 - y0)  # pixel-centre crop centre
    # heatmap cell k spans [k, k + 1] of 64 across the crop square centred on (cx, cy)
    expected = np.array([cx + (40 + 0.5 - 32) * side / 64, cy + (21 + 0.5 - 32) * side / 64])
    assert np.allclose(pts, expected[None].repeat(68, 0), atol=1e-9)


def test_pth_and_safetensors_load_identically(fan_files, fan_state, image):
    a = L.FANLandmarks(fan_files[0], device="cpu", flip_input=False)
    b = L.FANLandmarks(fan_files[1], device="cpu", flip_input=False)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys() == fan_state.keys()
    for k, v in fan_state.items():
        assert torch.equal(sa[k], v) and torch.equal(sb[k], v), k
    assert a.modules_for_cache() == [a.net] and not a.net.training
    assert np.array_equal(a.landmarks(image, BOX), b.landmarks(image, BOX))


def test_mismatched_checkpoint_names_the_missing_key(fan_state, tmp_path):
    state = dict(fan_state)
    del state["m0.b1_2.conv1.weight"]
    save_file(state, str(tmp_path / TWIN))
    with pytest.raises(CheckpointError, match=r"m0\.b1_2\.conv1\.weight") as info:
        L.FANLandmarks(tmp_path / TWIN, device="cpu")
    assert "Missing keys (1)" in str(info.value)


def test_bad_boxes_and_images_are_input_errors(landmarker, image):
    for box in [(10, 10, 5, 40), (0, 0, float("nan"), 30), (500, 10, 600, 90), (1, 2, 3)]:
        with pytest.raises(InputError):
            landmarker.landmarks(image, box)
    with pytest.raises(InputError):
        landmarker.landmarks(image.astype(np.int32), BOX)
    with pytest.raises(InputError):
        landmarker.landmarks(np.zeros((2, 20, 20, 3), np.uint8), (2, 2, 10, 10))


class _FakeDetector(FaceDetector):
    """Frame i has the faces ``plan[i]``."""

    name = "fake"

    def __init__(self, plan):
        self.plan, self.calls = plan, 0

    def detect(self, image):
        assert tuple(image.shape) == (24, 32, 3)
        faces = self.plan[self.calls]
        self.calls += 1
        return faces


class _FakeLandmarker:
    def __init__(self):
        self.boxes = []

    def landmarks(self, image, box):
        self.boxes.append(tuple(box))
        return np.full((68, 2), box[0])


def test_face_landmarks_none_where_no_face_and_largest_face_otherwise():
    small, big = Face(box=(1, 1, 5, 5), score=0.99), Face(box=(10, 2, 30, 20), score=0.6)
    det = _FakeDetector([[small, big], [], [small]])
    lmk = _FakeLandmarker()
    calls = []
    found = L.face_landmarks(torch.rand(3, 24, 32, 3), det, lmk, progress=lambda d, t, *a: calls.append((d, t)))
    assert det.calls == 3 and calls == [(1, 3), (2, 3), (3, 3)]
    assert found[1] is None
    assert found[0].shape == (68, 2) and found[0][0, 0] == 10 and found[2][0, 0] == 1
    assert lmk.boxes == [big.box, small.box]


@pytest.fixture
def isolated(isolated_weights, offline):
    yield isolated_weights
    CACHE.unload("face")


def test_get_landmarker_resolves_caches_and_never_downloads(isolated, fan_files):
    with pytest.raises(WeightsMissingError, match=OFFICIAL.replace(".", r"\.")):
        L.get_landmarker("cpu", download=False)
    with pytest.raises(WeightsMissingError, match="Download failed"):  # the blocked network
        L.get_landmarker("cpu", download=True)
    target = isolated / "models" / "face_detection" / TWIN
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(fan_files[1])
    a = L.get_landmarker("cpu", download=False)
    assert isinstance(a, L.FANLandmarks) and a.device == torch.device("cpu")
    assert L.get_landmarker("cpu", download=False) is a
    assert any(e.model is a for e in CACHE.entries("face"))
