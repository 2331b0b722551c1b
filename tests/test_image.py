"""Tests for core.image: loading every Pillow mode, conversions, safe_join."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from core import image
from core.errors import InputError


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- plain modes
def test_rgb_png_exact(tmp_path):
    a = _rgb()
    p = tmp_path / "rgb.png"
    Image.fromarray(a).save(p)
    img, alpha = image.load_image_with_alpha(p)
    assert img.shape == (1, 6, 5, 3) and img.dtype == torch.float32
    assert alpha is None
    assert torch.equal(img[0], torch.from_numpy(a).float() / 255)
    assert torch.equal(image.load_image(str(p)), img)


def test_rgba_keeps_colour_and_returns_alpha(tmp_path):
    a = np.zeros((4, 3, 4), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 200, 10, 30
    a[..., 3] = np.arange(12, dtype=np.uint8).reshape(4, 3) * 20
    p = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    img, alpha = image.load_image_with_alpha(p)
    assert img.shape == (1, 4, 3, 3) and alpha.shape == (1, 4, 3)
    # colour channels as stored, not composited onto black/white
    assert torch.allclose(img[0, 0, 0], torch.tensor([200, 10, 30]) / 255.0)
    assert torch.allclose(alpha[0], torch.from_numpy(a[..., 3]).float() / 255)
    assert image.load_image(p).shape == (1, 4, 3, 3)


def test_la_gray_alpha(tmp_path):
    g = np.array([[0, 100], [200, 255]], np.uint8)
    al = np.array([[255, 0], [128, 64]], np.uint8)
    p = tmp_path / "la.png"
    Image.fromarray(np.stack([g, al], -1), "LA").save(p)
    img, alpha = image.load_image_with_alpha(p)
    assert torch.allclose(img[0, ..., 0], torch.from_numpy(g).float() / 255)
    assert torch.equal(img[0, ..., 0], img[0, ..., 2])
    assert torch.allclose(alpha[0], torch.from_numpy(al).float() / 255)


def test_l_and_1(tmp_path):
    g = np.array([[0, 17], [128, 255]], np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "l.png")
    img, alpha = image.load_image_with_alpha(tmp_path / "l.png")
    assert alpha is None and img.shape == (1, 2, 2, 3)
    assert torch.allclose(img[0, ..., 1], torch.from_numpy(g).float() / 255)

    b = Image.new("1", (3, 2), 0)
    b.putpixel((1, 0), 1)
    b.save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").mode == "1"
    img = image.load_image(tmp_path / "one.png")
    expect = torch.zeros(2, 3)
    expect[0, 1] = 1
    assert torch.equal(img[0, ..., 0], expect)


def test_palette_with_and_without_transparency(tmp_path):
    pal = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9)
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal)
    im.save(tmp_path / "p.png")
    img, alpha = image.load_image_with_alpha(tmp_path / "p.png")
    assert alpha is None
    assert torch.equal(img[0, 0, 0], torch.tensor([1.0, 0, 0]))
    assert torch.equal(img[0, 1, 0], torch.tensor([0.0, 0, 1]))

    im.save(tmp_path / "pt.png", transparency=1)
    assert Image.open(tmp_path / "pt.png").mode == "P"
    img, alpha = image.load_image_with_alpha(tmp_path / "pt.png")
    assert alpha is not None
    assert torch.equal(alpha[0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(img[0, 1, 0], torch.tensor([0.0, 0, 1]))


def test_pa_mode_via_converter():
    im = Image.new("PA", (2, 1))
    rgb, alpha = image._pil_to_arrays(im, "x")
    assert rgb.shape == (1, 2, 3) and alpha is not None and alpha.shape == (1, 2)


def test_16bit_gray_png(tmp_path):
    a = np.array([[0, 1, 256], [32768, 65534, 65535]], np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    assert p.read_bytes()[24] == 16  # the PNG header's bit depth (Pillow < 10.3 opens it as mode "I")
    img = image.load_image(p)
    expect = torch.from_numpy(a.astype(np.float64) / 65535).float()
    assert torch.allclose(img[0, ..., 0], expect, atol=1e-7, rtol=0)
    assert img[0, 0, 1, 0] > 0  # 16-bit precision kept (would be 0 after an 8-bit cut)
    assert img[0, 1, 2, 0] == 1.0


def test_16bit_big_endian_tiff(tmp_path):
    a = np.array([[0, 1000], [50000, 65535]], np.uint16)
    im = Image.frombytes("I;16B", (2, 2), a.astype(">u2").tobytes())
    p = tmp_path / "g16b.tif"
    im.save(p)
    assert Image.open(p).mode == "I;16B"
    img = image.load_image(p)
    assert torch.allclose(img[0, ..., 0], torch.from_numpy(a / 65535).float(), atol=1e-7)


def test_int32_tiff_and_int_helper(tmp_path):
    a = np.array([[0, 2 ** 30], [2 ** 31 - 1, -5]], np.int32)
    p = tmp_path / "i32.tif"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode == "I"
    img = image.load_image(p)
    assert img[0, 0, 1, 0] == pytest.approx(0.5, abs=1e-6)
    assert img[0, 1, 0, 0] == pytest.approx(1.0)
    assert img[0, 1, 1, 0] == 0.0  # negatives clipped
    # an 'I' image without a bit-depth tag whose values fit 16 bits is scaled by 65535
    rgb, _ = image._pil_to_arrays(Image.fromarray(np.array([[0, 65535, 32768]], np.int32)), "x")
    assert np.allclose(rgb[0, :, 0], [0, 1, 32768 / 65535])


def test_float_tiff(tmp_path):
    a = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    Image.fromarray(a).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    img = image.load_image(tmp_path / "f.tif")
    assert torch.allclose(img[0, ..., 0], torch.from_numpy(a))
    Image.fromarray(a * 255).save(tmp_path / "f255.tif")
    img = image.load_image(tmp_path / "f255.tif")
    assert torch.allclose(img[0, ..., 2], torch.from_numpy(a), atol=1e-6)


def test_cmyk_and_ycbcr(tmp_path):
    im = Image.new("CMYK", (2, 2), (255, 0, 0, 0))  # pure cyan
    im.save(tmp_path / "c.tif")
    assert Image.open(tmp_path / "c.tif").mode == "CMYK"
    img = image.load_image(tmp_path / "c.tif")
    assert torch.equal(img[0, 0, 0], torch.tensor([0.0, 1.0, 1.0]))
    ycc = Image.new("RGB", (3, 2), (10, 120, 230)).convert("YCbCr")
    rgb, alpha = image._pil_to_arrays(ycc, "x")
    assert alpha is None
    assert np.allclose(rgb * 255, np.asarray(ycc.convert("RGB")), atol=0)
    assert np.abs(rgb[0, 0] * 255 - [10, 120, 230]).max() <= 3


def _png_rgb16(arr):
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_48bit_rgb_png(tmp_path):
    a = np.random.default_rng(1).integers(0, 65536, (3, 4, 3)).astype(np.uint16)
    a[0, 0] = [65535, 0, 32768]
    p = tmp_path / "rgb48.png"
    p.write_bytes(_png_rgb16(a))
    img = image.load_image(p)
    assert img.shape == (1, 3, 4, 3)
    # within one 8-bit step of the true 16-bit value
    assert torch.allclose(img[0], torch.from_numpy(a / 65535).float(), atol=1 / 255 + 1e-6)
    assert torch.allclose(img[0, 0, 0], torch.tensor([1.0, 0.0, 128 / 255]))


def test_multiframe_first_frame_only(tmp_path):
    frames = [Image.new("RGB", (4, 3), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(p).n_frames == 3
    img = image.load_image(p)
    assert img.shape == (1, 3, 4, 3)
    assert torch.allclose(img[0, 1, 1], torch.tensor([1.0, 0.0, 0.0]), atol=2 / 255)


def test_exif_orientation_rotates(tmp_path):
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16] = (255, 0, 0)  # left half red
    a[:, 16:] = (0, 0, 255)  # right half blue
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif.tobytes(), quality=95)
    img = image.load_image(p)
    assert img.shape == (1, 32, 16, 3)  # H and W swapped
    top, bottom = img[0, 4, 8], img[0, 28, 8]
    assert top[0] > 0.8 and top[2] < 0.2  # red went to the top
    assert bottom[2] > 0.8 and bottom[0] < 0.2
    # without the tag nothing rotates
    im.save(tmp_path / "plain.jpg", quality=95)
    assert image.load_image(tmp_path / "plain.jpg").shape == (1, 16, 32, 3)


def test_tiny_image(tmp_path):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "t.png")
    img = image.load_image(tmp_path / "t.png")
    assert img.shape == (1, 1, 1, 3)
    assert torch.allclose(img[0, 0, 0], torch.tensor([1, 2, 3]) / 255.0)


# --------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nothere.png"):
        image.load_image(tmp_path / "nothere.png")


def test_directory_is_refused(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match="dir.png"):
        image.load_image(tmp_path / "dir.png")


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError, match="bad.png.*not a readable image"):
        image.load_image(p)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_file(tmp_path, fmt, ext):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"cut\.{ext}.*(truncated|corrupt)"):
        image.load_image(p)


def test_pixel_limit(tmp_path, monkeypatch):
    Image.new("RGB", (5, 4)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="big.png.*megapixels"):
        image.load_image(tmp_path / "big.png", max_pixels=19)
    assert image.load_image(tmp_path / "big.png", max_pixels=20).shape == (1, 4, 5, 3)
    monkeypatch.setattr(image, "MAX_PIXELS", 10)
    with pytest.raises(InputError, match="limit"):
        image.load_image(tmp_path / "big.png")
    # Pillow's own decompression-bomb refusal becomes an InputError too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4)
    with pytest.raises(InputError, match="big.png.*too large"):
        image.load_image(tmp_path / "big.png", max_pixels=0)


# --------------------------------------------------------------------------- conversions
def test_image_to_uint8_rounds_and_clips():
    x = torch.tensor([-0.5, 0.0, 0.5 / 255, 0.6 / 255, 0.5, 1.0, 3.0, float("nan")]).view(1, 1, 8, 1).expand(1, 1, 8, 3)
    u = image.image_to_uint8(x)
    assert u.dtype == np.uint8 and u.shape == (1, 1, 8, 3)
    assert u[0, 0, :, 0].tolist() == [0, 0, 0, 1, 128, 255, 255, 0]


def test_uint8_roundtrip():
    a = _rgb(3, 4)
    t = image.uint8_to_image(a)
    assert t.shape == (1, 3, 4, 3) and t.dtype == torch.float32
    assert np.array_equal(image.image_to_uint8(t)[0], a)
    b = np.stack([a, a[::-1].copy()])
    assert image.uint8_to_image(b).shape == (2, 3, 4, 3)
    assert image.uint8_to_image(a[..., 0]).shape == (1, 3, 4, 3)
    rgba = np.concatenate([a, np.full((3, 4, 1), 7, np.uint8)], -1)
    assert torch.equal(image.uint8_to_image(rgba), t)
    with pytest.raises(InputError):
        image.uint8_to_image(a.astype(np.float32))
    with pytest.raises(InputError):
        image.uint8_to_image(np.zeros((2, 2, 2), np.uint8))


def test_ensure_image():
    x = torch.rand(2, 5, 4, 3)
    assert image.ensure_image(x) is x
    assert torch.equal(image.ensure_image(torch.cat([x, torch.ones(2, 5, 4, 1)], -1)), x)
    one = image.ensure_image(x[..., :1])
    assert one.shape == (2, 5, 4, 3) and torch.equal(one[..., 2], x[..., 0])
    assert image.ensure_image(x.half()).dtype == torch.float32
    assert torch.equal(image.ensure_image(torch.full((1, 1, 1, 3), 255, dtype=torch.uint8)), torch.ones(1, 1, 1, 3))
    with pytest.raises(InputError, match="MASK"):
        image.ensure_image(torch.rand(1, 5, 4))
    with pytest.raises(InputError):
        image.ensure_image(torch.rand(1, 5, 4, 2))
    with pytest.raises(InputError):
        image.ensure_image(torch.zeros(1, 5, 4, 3, dtype=torch.int64))
    with pytest.raises(InputError):
        image.ensure_image(torch.zeros(0, 5, 4, 3))
    with pytest.raises(InputError):
        image.ensure_image(np.zeros((1, 5, 4, 3), np.float32))


# --------------------------------------------------------------------------- safe_join
def test_safe_join_accepts_names_and_subfolders(tmp_path):
    root = tmp_path / "input"
    (root / "sub").mkdir(parents=True)
    assert image.safe_join(root, "face.png") == (root / "face.png").resolve()
    assert image.safe_join(root, "sub/face.png") == (root / "sub" / "face.png").resolve()
    assert image.safe_join(root, "sub\\face.png") == (root / "sub" / "face.png").resolve()
    assert image.safe_join(str(root), "./sub//face.png") == (root / "sub" / "face.png").resolve()


@pytest.mark.parametrize("name", [
    "../secret.png", "sub/../../secret.png", "..", "sub\\..\\..\\x.png",
    "/etc/passwd", "\\etc\\passwd", "C:\\Windows\\x.png", "C:x.png", "c:/x.png",
    "\\\\server\\share\\x.png", "a\x00b.png", "", "   ", ".",
])
def test_safe_join_refuses(tmp_path, name):
    with pytest.raises(InputError):
        image.safe_join(tmp_path, name)


def test_safe_join_refusal_message(tmp_path):
    with pytest.raises(InputError, match="outside the input folder"):
        image.safe_join(tmp_path, "../x.png")
    with pytest.raises(InputError, match="outside the input folder"):
        image.safe_join(tmp_path, "/abs/x.png")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_safe_join_symlinks(tmp_path):
    root = tmp_path / "input"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "s.png").write_bytes(b"x")
    (root / "inner.png").write_bytes(b"x")
    os.symlink(outside, root / "escape")
    os.symlink(outside / "s.png", root / "link.png")
    os.symlink(root / "inner.png", root / "ok.png")
    with pytest.raises(InputError, match="outside the input folder"):
        image.safe_join(root, "escape/s.png")
    with pytest.raises(InputError, match="outside the input folder"):
        image.safe_join(root, "link.png")
    assert image.safe_join(root, "ok.png") == (root / "inner.png").resolve()


def test_as_uint8_rgb_one_helper_for_landmarks_and_sda():
    as_uint8_rgb = image.as_uint8_rgb
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_uint8_rgb(gray).shape == (3, 4, 3) and (as_uint8_rgb(gray)[..., 2] == gray).all()
    rgba = torch.rand(1, 3, 4, 4)
    out = as_uint8_rgb(rgba)
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    assert np.array_equal(out, np.round(rgba[0, ..., :3].numpy() * 255).astype(np.uint8))
    with pytest.raises(InputError, match="the face image must be one image, got a batch of 2"):
        as_uint8_rgb(torch.rand(2, 3, 4, 3), "face image")
    with pytest.raises(InputError, match="unsupported face image dtype int32"):
        as_uint8_rgb(np.zeros((3, 4, 3), np.int32), "face image")
