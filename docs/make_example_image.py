#!/usr/bin/env python3
"""Draw the example inputs for the README (Pillow only).

    python docs/make_example_image.py

``docs/images/example_inputs.png``: ``example_inputs/portrait.png``, the waveform of
``example_inputs/speech.wav`` and a few frames of ``example_inputs/driving.mp4``: what the workflows read.
No model output is shown: no model weights are used here. (The pictures of the workflows are
screenshots of ComfyUI's own frontend: ``tools/make_workflows.py``.)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example_inputs"
OUT = Path(__file__).resolve().parent / "images"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WIDTH = 1200            # final picture width
SS = 2                  # supersampling
BG = (24, 24, 26)
TEXT = (226, 226, 226)
DIM = (150, 150, 150)
AUDIO_COLOR = (255, 183, 77)


def font(size: float, bold: bool = False, condensed: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (or Pillow's own font where it is missing) at ``size`` pixels."""
    style = ("Condensed" if condensed else "") + ("-Bold" if bold else "")
    names = [f"DejaVuSans{style}.ttf", "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"]
    for name in names:
        for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/Library/Fonts",
                       "C:/Windows/Fonts", ""):
            try:
                return ImageFont.truetype(str(Path(folder) / name) if folder else name, round(size))
            except OSError:
                continue
    return ImageFont.load_default(size=round(size))


def save(img: Image.Image, path: Path, photo: bool = False) -> None:
    """Scale the supersampled picture down and save it as a 256-colour PNG (diagrams: no
    dithering, flat colours stay flat; photos: dithered, so gradients do not band)."""
    small = img.resize((img.width // SS, img.height // SS), Image.LANCZOS)
    if photo:
        small = small.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    else:
        small = small.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    small.save(path, optimize=True)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"{shown}  {small.width}x{small.height}  {path.stat().st_size // 1024} kB")


def draw_inputs() -> Image.Image:
    """The example portrait, the speech waveform and driving-video frames, side by side."""
    from core.audio import load_audio, to_mono
    from core.image import image_to_uint8, load_image
    from core.video import read_frames

    portrait = Image.fromarray(image_to_uint8(load_image(EXAMPLES / "portrait.png"))[0])
    audio = to_mono(load_audio(EXAMPLES / "speech.wav"))
    frames = list(read_frames(EXAMPLES / "driving.mp4"))

    height = 300
    pad, label_h = 16, 26
    total_h = pad + label_h + height + pad
    img = Image.new("RGB", (WIDTH * SS, total_h * SS), BG)
    draw = ImageDraw.Draw(img)
    f_label = font(13 * SS, bold=True)
    f_small = font(10.5 * SS)

    def label(x, text, sub):
        draw.text((x * SS, pad * SS), text, font=f_label, fill=TEXT)
        draw.text((x * SS + draw.textlength(text, font=f_label) + 8 * SS, pad * SS + 2 * SS), sub,
                  font=f_small, fill=DIM)

    top = (pad + label_h) * SS
    # portrait
    pw = round(portrait.width * height / portrait.height)
    img.paste(portrait.resize((pw * SS, height * SS), Image.LANCZOS), (pad * SS, top))
    label(pad, "portrait.png", f"{portrait.width}x{portrait.height}")
    x = pad + pw + 24

    # frames of the driving video: a 2x2 grid of frames spread over the clip
    grid = height // 2 - 2
    picks = [round(i * (len(frames) - 1) / 3) for i in range(4)]
    frames_w = 2 * grid + 4
    wave_w = WIDTH - x - pad - frames_w - 24

    # waveform
    wave = audio.waveform[0].numpy()
    label(x, "speech.wav", f"{audio.duration:.1f} s, {audio.sample_rate // 1000} kHz")
    x0, y_mid = x * SS, top + height * SS / 2
    draw.rounded_rectangle([x0, top, x0 + wave_w * SS, top + height * SS], radius=6 * SS, fill=(34, 34, 38))
    cols = wave_w * SS
    edges = np.linspace(0, len(wave), cols + 1).astype(int)
    peak = float(np.abs(wave).max()) or 1.0
    color = AUDIO_COLOR
    for i in range(cols):
        chunk = wave[edges[i]:max(edges[i] + 1, edges[i + 1])]
        lo, hi = float(chunk.min()) / peak, float(chunk.max()) / peak
        draw.line([(x0 + i, y_mid - hi * height * SS * 0.44), (x0 + i, y_mid - lo * height * SS * 0.44)],
                  fill=color, width=1)
    for second in range(int(audio.duration) + 1):  # a tick per second
        tx = x0 + second / audio.duration * (cols - 1)
        draw.line([(tx, top + height * SS - 8 * SS), (tx, top + height * SS)], fill=DIM, width=SS)
        if tx + 24 * SS < x0 + cols:
            draw.text((tx + 3 * SS, top + height * SS - 8 * SS), f"{second} s", font=f_small, fill=DIM, anchor="ls")
    x += wave_w + 24

    # driving frames
    fps = 25
    label(x, "driving.mp4", f"{len(frames)} frames, {frames[0].shape[1]}x{frames[0].shape[0]}")
    for k, index in enumerate(picks):
        frame = Image.fromarray(frames[index]).resize((grid * SS, grid * SS), Image.LANCZOS)
        fx, fy = (x + (k % 2) * (grid + 4)) * SS, top + (k // 2) * (grid + 4) * SS
        img.paste(frame, (fx, fy))
        stamp = f"{index / fps:.1f} s"
        tw = draw.textlength(stamp, font=f_small)
        draw.rectangle([fx, fy + grid * SS - 15 * SS, fx + tw + 8 * SS, fy + grid * SS], fill=(0, 0, 0))
        draw.text((fx + 4 * SS, fy + grid * SS - 3 * SS), stamp, font=f_small, fill=TEXT, anchor="ls")
    return img


def main() -> int:
    save(draw_inputs(), OUT / "example_inputs.png", photo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
