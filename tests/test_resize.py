import pytest
import torch
from safetensors.torch import load_file

import tolerance as tol
from conftest import FIXTURES
from core.resize import resize_pad, square_geometry


def test_deepstory_resize_pad_256_matches_the_classic_pipeline():
    """SDA-sized 128x96 frames -> 256x256 as the classic pipeline computed them: bit for bit on the kernel
    that made the fixture, within float32 rounding elsewhere (ATEN_CPU_CAPABILITY=default or one OpenMP
    thread move ~1 % of the pixels by one ulp)."""
    io = load_file(str(FIXTURES / "fom" / "io.safetensors"))
    frames = io["deepstory.sda_frames"] / 255.0  # (T,3,128,96), as deepstory divides first
    expected = io["deepstory.driving_256.frame0"]  # (1,3,256,256)
    out = resize_pad(frames.permute(0, 2, 3, 1), 256)  # ComfyUI IMAGE layout
    assert out.shape == (2, 256, 256, 3)
    # bilinear: per axis two taps with rounded weights summing to 1 (3 roundings), two axes; the padding is 0
    tol.close_sum(out[:1].permute(0, 3, 1, 2), expected, terms=2 * 3)
    assert torch.equal(out[:1, :, :32], torch.zeros(1, 256, 32, 3))
    # the same in channels-first layout
    out_nchw = resize_pad(frames, 256, channels_last=False)
    tol.close_sum(out_nchw[:1], expected, terms=2 * 3)


def test_geometry_modes():
    assert square_geometry(128, 96, 256, "pad") == square_geometry(128, 96, 256)
    g = square_geometry(128, 96, 256, "pad")
    assert (g.resized_h, g.resized_w, g.top, g.left) == (256, 192, 0, 32)
    assert g.pads() == (32, 32, 0, 0)
    g = square_geometry(90, 120, 256, "crop")
    assert (g.resized_h, g.resized_w, g.top, g.left) == (256, 341, 0, -43)
    g = square_geometry(7, 5, 256, "stretch")
    assert (g.resized_h, g.resized_w, g.top, g.left) == (256, 256, 0, 0)
    with pytest.raises(ValueError):
        square_geometry(0, 5, 256)
    with pytest.raises(ValueError):
        square_geometry(5, 5, 256, "zoom")


def test_pad_keeps_content_centred_and_pads_with_value():
    img = torch.full((1, 50, 100, 3), 0.5)
    out = resize_pad(img, 64, pad_value=0.25)
    # 100 wide -> 64, 50 high -> 32, padded 16 rows top and bottom; bilinear: 2 taps per axis whose weights sum
    # to 1 (each weight one rounding), so a constant comes back up to a 4-term sum of 0.5 x weights
    tol.close_sum(out[0, 16:48], torch.full((32, 64, 3), 0.5), terms=4 + 4, magnitude=0.5)
    assert torch.all(out[0, :16] == 0.25) and torch.all(out[0, 48:] == 0.25)


def test_crop_and_stretch_shapes_and_values():
    img = torch.rand(3, 40, 80, 3)
    crop = resize_pad(img, 20, mode="crop", interpolation="nearest")
    assert crop.shape == (3, 20, 20, 3)
    # nearest-resized 40x80 -> 20x40, centre 20 columns = source columns 20..59 step 2
    assert torch.equal(crop, img[:, ::2, 20:60:2])
    st = resize_pad(img, 16, mode="stretch")
    assert st.shape == (3, 16, 16, 3)


@pytest.mark.parametrize("pad_mode", ["edge", "reflect"])
def test_non_constant_padding_even_when_wider_than_the_image(pad_mode):
    img = torch.rand(2, 4, 200, 3)  # becomes 256 x 5: the pad (125 px) is far wider than 5 rows
    out = resize_pad(img, 256, pad_mode=pad_mode)
    assert out.shape == (2, 256, 256, 3)
    middle = out[:, 125:130]
    if pad_mode == "edge":
        assert torch.equal(out[:, 0], middle[:, 0])
    else:
        assert torch.equal(out[:, 124], middle[:, 1])  # mirror of the row next to the edge
    one_row = resize_pad(torch.rand(1, 1, 300, 3), 256, pad_mode="reflect")
    assert torch.isfinite(one_row).all() and one_row.shape == (1, 256, 256, 3)


def test_chunks_equal_one_batch_and_report_progress():
    img = torch.rand(10, 30, 20, 3)
    calls = []
    a = resize_pad(img, 32, chunk=3, progress=lambda d, t: calls.append((d, t)))
    b = resize_pad(img, 32, chunk=100)
    assert torch.equal(a, b)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_uint8_input_and_bicubic_range():
    img = (torch.rand(2, 17, 9, 3) * 255).to(torch.uint8)
    out = resize_pad(img, 33, interpolation="bicubic")
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError):
        resize_pad(torch.rand(5, 5, 3), 8)
