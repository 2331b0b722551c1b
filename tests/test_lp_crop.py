"""LivePortrait's crop geometry and paste-back against tiny/crop_pasteback.safetensors (the
official src/utils/crop.py, cv2)."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tolerance as tol
from conftest import FIXTURES
from core.errors import InputError
from core.face import CenterDetector, CropRecord, Face, FaceDetector, crop_image, paste_back
from core.image import load_image
from core.liveportrait import crop as C

REF = load_file(str(FIXTURES / "liveportrait" / "crop_pasteback.safetensors"))
#: the official crop runs in float32 (ours in float64): its widest sum is the mean of the 106 landmarks
CROP_TERMS = 106


def affine_magnitude(m, points):
    """The size of the terms of ``m @ [x, y, 1]`` over ``points``: what the float32 roundings are relative to."""
    return float(np.abs(m[:2, :2]).sum(1).max() * np.abs(points).max() + np.abs(m[:2, 2]).max())


def test_official_crop_matrix_from_106_landmarks():
    m = C.crop_matrix(REF["crop.lmk106"].numpy(), dsize=512, scale=2.3, vy_ratio=-0.125, rotate=True)
    pts = REF["crop.lmk106"].numpy().astype(np.float64)
    # the reference computed in float32: the translation t - s (cos cx + sin cy) errs relative to its terms
    # (crop-size products of ~300 px coordinates), not to the matrix entries
    tol.close_sum(m, REF["crop.M_o2c"].numpy(), terms=CROP_TERMS, magnitude=affine_magnitude(m, pts))
    in_crop = (np.c_[pts, np.ones(len(pts))] @ m.T)[:, :2]
    tol.close_sum(in_crop, REF["crop.pt_crop"].numpy(), terms=CROP_TERMS, magnitude=affine_magnitude(m, pts))
    rec = C.crop_record(REF["crop.lmk106"].numpy(), (300, 260))
    corners = np.array([[0.0, 0.0], [512.0, 512.0]])
    tol.close_sum(rec.inverse, REF["crop.M_c2o"].numpy()[:2], terms=CROP_TERMS,
                  magnitude=affine_magnitude(np.r_[rec.inverse, [[0, 0, 1]]], corners))


def test_crop_pixels_match_cv2():
    """The 512 crop resampled like cv2.warpAffine (bilinear), then INTER_AREA to 256 (= 2x2 mean)."""
    rec = C.crop_record(REF["crop.lmk106"].numpy(), (300, 260))
    img = REF["crop.img_ori_u8"].float()[None] / 255
    crop512 = crop_image(img, rec, padding_mode="zeros")
    crop256 = torch.nn.functional.avg_pool2d(crop512.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    diff = ((crop256[0] * 255).round().int() - REF["crop.img_crop256_u8"].int()).abs()
    assert diff.float().mean() < 0.5 and (diff > 3).float().mean() < 0.01


def test_68_point_layout_gives_a_comparable_crop():
    pts = np.array([[x, 100.0] for x in np.linspace(60, 140, 17)] + [[100.0, 100.0]] * 51)
    pts[36:42] = [[70, 80]] * 6
    pts[42:48] = [[130, 80]] * 6
    pts[60], pts[64] = [90, 140], [110, 140]
    centre, side, angle = C.crop_square(pts, scale=2.0, vy_ratio=0.0)
    assert abs(angle) < 1e-9 and side > 0 and abs(centre[0] - 100) < 1e-9
    with pytest.raises(ValueError, match="106 or 68"):
        C.crop_square(np.zeros((5, 2)))


def test_paste_back_matches_official():
    rec = CropRecord(matrix=REF["crop.M_o2c"].numpy()[:2], inverse=REF["crop.M_c2o"].numpy()[:2], crop_size=512,
                     full_size=(300, 260), bbox=None, score=1.0, landmarks=None, detector="ref", num_faces=1)
    full = REF["crop.img_ori_u8"].float()[None] / 255
    frame = REF["crop.generated512_u8"].float()[None] / 255
    mask = load_image(FIXTURES / "liveportrait" / "mask_template.png")[0, ..., 0]
    out = paste_back(full, frame, rec, mask=mask, antialias=False, premultiplied=False)
    u8 = (out[0] * 255).clamp(0, 255).to(torch.uint8)  # the official truncation
    tol.close_uint8(u8, REF["crop.pasted_u8"])  # and cv2's fixed-point bilinear


class _Boxes(FaceDetector):
    """A detector with set boxes per frame (told apart by the frame's value), recording what it saw."""

    name = "boxes"

    def __init__(self, per_frame):
        self.per_frame, self.seen = per_frame, []

    def detect(self, image):
        index = int(round(float(image[0, 0, 0]) * 100))
        self.seen.append(index)
        return [Face(box, score) for box, score in self.per_frame.get(index, [])]


def _numbered_frames(count, h=40, w=48):
    frames = torch.rand(count, h, w, 3)
    frames[:, 0, 0, 0] = torch.arange(count) / 100  # the frame's number, for the detector above
    return frames


def test_crop_driving_video_uses_one_mean_box_for_the_whole_video():
    """Up to 8 evenly spaced frames are searched; the largest face of each is averaged into one
    LivePortrait driving crop that every frame is cut to (zeros outside the picture)."""
    frames = _numbered_frames(10)
    # frame 0: a small face with the higher score and the larger one; frame 4: one face; the rest: none
    boxes = {0: [((1.0, 1.0, 5.0, 5.0), 0.99), ((10.0, 8.0, 30.0, 32.0), 0.6)], 4: [((14.0, 10.0, 34.0, 30.0), 0.9)]}
    det = _Boxes(boxes)
    out = C.crop_driving_video(frames, det, 32, device="cpu")
    assert det.seen == [0, 1, 3, 4, 5, 6, 8, 9]
    mean_box = np.mean([[10.0, 8.0, 30.0, 32.0], [14.0, 10.0, 34.0, 30.0]], axis=0)
    record = C.record_from_box(mean_box, (40, 48), 32, C.DRIVING_SCALE, C.DRIVING_VY)
    assert out.shape == (10, 32, 32, 3) and torch.equal(out, crop_image(frames, record, padding_mode="zeros"))
    # the square (2.2 x the box) runs past the 40x48 frame: black there, not stretched edge pixels
    assert (out[:, 0] == 0).all()
    # fewer than 8 frames: every frame is searched
    det = _Boxes({1: [((10.0, 8.0, 30.0, 32.0), 0.6)]})
    C.crop_driving_video(_numbered_frames(3), det, 16, device="cpu")
    assert det.seen == [0, 1, 2]


def test_crop_driving_video_detector_crops_and_no_face():
    frames = _numbered_frames(2, 30, 50)
    # the "center" box already is the crop: used as is, not enlarged
    out = C.crop_driving_video(frames, CenterDetector(), 30, device="cpu")
    assert torch.equal(out, frames[:, :, 10:40])
    with pytest.raises(InputError, match=r'(?s)No face was found in the driving video.*"center"'):
        C.crop_driving_video(frames, _Boxes({}), 32, device="cpu")
