"""Regenerate the example inputs shipped in this folder (both are made here, no third-party media).

* ``portrait.png``: a drawn, non-square portrait (head off-centre, hair, shoulders) so cropping
  and paste-back have something to do.
* ``speech.wav``: a short sentence from espeak-ng (``apt-get install espeak-ng``), 16 kHz mono.
* ``driving.mp4``: 2 s (50 frames, 256x256, 25 fps) of a drawn face that nods and opens its
  mouth, with the first 2 s of the speech: a driving video for FOMAnimate.
* ``motion.safetensors``: 2 s of hand-made LivePortrait motion (a slow nod and turn, the lip
  keypoints opening and closing) in the pack's motion format, for the motion-driven workflow.
"""
import subprocess
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent


def portrait(path: Path) -> None:
    w, h = 480, 600
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):  # soft vertical gradient background
        for x in range(w):
            px[x, y] = (40 + y // 8, 70 + x // 10, 120 + y // 6)
    d = ImageDraw.Draw(img)
    cx, cy = 260, 250
    d.ellipse([cx - 190, cy + 170, cx + 190, cy + 480], fill=(50, 90, 140))          # shoulders
    d.rectangle([cx - 45, cy + 100, cx + 45, cy + 200], fill=(214, 168, 130))        # neck
    d.ellipse([cx - 118, cy - 150, cx + 118, cy + 60], fill=(70, 45, 30))            # hair
    d.ellipse([cx - 100, cy - 120, cx + 100, cy + 140], fill=(226, 180, 140))        # face
    d.ellipse([cx - 112, cy - 10, cx - 92, cy + 40], fill=(214, 168, 130))           # ears
    d.ellipse([cx + 92, cy - 10, cx + 112, cy + 40], fill=(214, 168, 130))
    for ex in (cx - 40, cx + 40):                                                     # eyes
        d.ellipse([ex - 20, cy - 20, ex + 20, cy + 2], fill=(250, 250, 250))
        d.ellipse([ex - 8, cy - 16, ex + 8, cy], fill=(60, 40, 30))
        d.arc([ex - 26, cy - 44, ex + 26, cy - 20], 200, 340, fill=(70, 45, 30), width=5)
    d.polygon([(cx, cy + 5), (cx - 12, cy + 50), (cx + 12, cy + 50)], fill=(205, 150, 115))  # nose
    d.chord([cx - 40, cy + 60, cx + 40, cy + 100], 0, 180, fill=(170, 60, 70))       # mouth
    img.filter(ImageFilter.GaussianBlur(1.2)).save(path)


def speech(path: Path) -> None:
    text = "Hello! This portrait is talking. Every frame was made from the sound of my voice."
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path.with_suffix(".raw.wav")), text], check=True)
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-i", str(path.with_suffix(".raw.wav")),
                    "-ac", "1", "-ar", "16000", str(path)], check=True)
    path.with_suffix(".raw.wav").unlink()


def driving(path: Path, speech_path: Path, frames: int = 50) -> None:
    import math
    import sys

    import numpy as np
    import torch

    sys.path.insert(0, str(HERE.parent))
    from core.audio import load_audio
    from core.video import write_video

    out = []
    for i in range(frames):
        t = i / 25.0
        img = Image.new("RGB", (256, 256), (90, 110, 140))
        d = ImageDraw.Draw(img)
        cx, cy = 128 + 6 * math.sin(2 * math.pi * 0.5 * t), 130 + 4 * math.sin(2 * math.pi * 0.8 * t)
        d.ellipse([cx - 62, cy - 80, cx + 62, cy + 84], fill=(225, 185, 150))
        for ex in (cx - 24, cx + 24):
            d.ellipse([ex - 10, cy - 18, ex + 10, cy - 4], fill=(40, 30, 30))
        d.polygon([(cx, cy - 2), (cx - 7, cy + 22), (cx + 7, cy + 22)], fill=(200, 150, 120))
        opening = 4 + 14 * abs(math.sin(2 * math.pi * 2.0 * t))
        d.ellipse([cx - 22, cy + 38 - opening / 2, cx + 22, cy + 38 + opening / 2], fill=(120, 40, 50))
        out.append(np.asarray(img))
    audio = load_audio(speech_path)
    write_video(path, torch.from_numpy(np.stack(out)), fps=25, audio=audio, crf=23)


def motion(path: Path, frames: int = 50) -> None:
    import math
    import sys

    import torch

    sys.path.insert(0, str(HERE.parent))
    from core.liveportrait.motion import LIP_KPS, Motion

    t = torch.arange(frames) / 25.0
    exp = torch.zeros(frames, 21, 3)
    opening = 0.02 * torch.sin(2 * math.pi * 2.0 * t).abs()
    for k in LIP_KPS:
        exp[:, k, 1] = opening * (1 if k in (14, 17, 19, 20) else -0.5)
    Motion(exp=exp, pitch=3 * torch.sin(2 * math.pi * 0.5 * t), yaw=5 * torch.sin(2 * math.pi * 0.3 * t),
           roll=2 * torch.sin(2 * math.pi * 0.4 * t), t=torch.zeros(frames, 3), scale=torch.full((frames,), 1.3),
           fps=25.0).save(path)


if __name__ == "__main__":
    portrait(HERE / "portrait.png")
    speech(HERE / "speech.wav")
    driving(HERE / "driving.mp4", HERE / "speech.wav")
    motion(HERE / "motion.safetensors")
    print("wrote", HERE / "portrait.png", HERE / "speech.wav", HERE / "driving.mp4", HERE / "motion.safetensors")
