"""Regenerate the example inputs shipped in this folder (both are made here, no third-party media).

* ``portrait.png``: a drawn, non-square portrait (head off-centre, hair, shoulders) so cropping
  and paste-back have something to do.
* ``speech.wav``: a short sentence from espeak-ng (``apt-get install espeak-ng``), 16 kHz mono.
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


if __name__ == "__main__":
    portrait(HERE / "portrait.png")
    speech(HERE / "speech.wav")
    print("wrote", HERE / "portrait.png", HERE / "speech.wav")
