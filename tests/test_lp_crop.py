"""LivePortrait's crop geometry and paste-back against tiny/crop_pasteback.safetensors (the
official src/utils/crop.py, cv2)."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tolerance as tol
from conftest import FIXTURES
from core.face import CropRecord, crop_image, paste_back
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
