#!/usr/bin/env python3
"""Draw the shipped workflows and the example inputs for the README (Pillow only).

    python docs/make_graph_images.py            # every workflows/NAME.json + the example inputs
    python docs/make_graph_images.py NAME ...   # only these workflows

* ``docs/images/NAME.png``: the UI-format workflow ``workflows/NAME.json`` as the editor lays it
  out (positions and sizes from the file): group frames with their titles, nodes with their
  title, type, sockets and widget values, links coloured by type, Note nodes with their
  text (as much as fits), and a legend of the link types.
* ``docs/images/example_inputs.png``: ``examples/portrait.png``, the waveform of
  ``examples/speech.wav`` and a few frames of ``examples/driving.mp4``: what the workflows
  read. No model output is shown: no model weights are used here.

Each picture is drawn at twice its size, scaled down (smooth edges) and saved as an adaptive
palette PNG, so it stays small.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
EXAMPLES = ROOT / "examples"
OUT = Path(__file__).resolve().parent / "images"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WIDTH = 1200            # final picture width
SS = 2                  # supersampling
MARGIN = 16
HEADER = 34
TITLE_H = 30            # litegraph title bar (canvas units), drawn above ``pos``
ROW = 24                # canvas units per socket or widget row (as core.graph sizes nodes)
TYPE_ROW = 22           # the class type, under the title

BG = (24, 24, 26)
NODE_BODY = (53, 53, 53)
NODE_TITLE = (34, 34, 34)
NODE_EDGE = (80, 80, 84)
WIDGET_BG = (34, 34, 36)
TEXT = (226, 226, 226)
DIM = (150, 150, 150)
NOTE_TITLE = (0x44, 0x33, 0x22)
NOTE_BODY = (0x66, 0x55, 0x33)
NOTE_TEXT = (238, 230, 214)
#: link and socket colours (IMAGE is ComfyUI's; the others are picked to be told apart)
TYPE_COLORS = {
    "IMAGE": (100, 181, 246), "AUDIO": (255, 183, 77), "VIDEO": (240, 98, 146),
    "TALKINGHEAD_PORTRAIT": (229, 115, 115), "TALKINGHEAD_MOTION": (186, 104, 200),
    "TALKINGHEAD_AUDIO_EMBEDS": (77, 208, 225), "FLOAT": (174, 213, 129), "INT": (174, 213, 129),
    "STRING": (144, 164, 174),
}
TYPE_LABELS = {"TALKINGHEAD_PORTRAIT": "PORTRAIT", "TALKINGHEAD_MOTION": "MOTION",
               "TALKINGHEAD_AUDIO_EMBEDS": "AUDIO_EMBEDS"}
OTHER = (176, 176, 176)
PREFIX = "TalkingHead_"


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


def hex_rgb(color: str) -> Tuple[int, int, int]:
    color = color.lstrip("#")
    if len(color) == 3:
        color = "".join(c * 2 for c in color)
    return tuple(int(color[i:i + 2], 16) for i in (0, 2, 4))


def mix(a, b, t: float) -> Tuple[int, int, int]:
    """``a`` blended towards ``b`` by ``t``."""
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def fit(draw: ImageDraw.ImageDraw, text: str, fnt, width: float) -> str:
    """``text``, cut with an ellipsis to ``width`` pixels."""
    if draw.textlength(text, font=fnt) <= width:
        return text
    while text and draw.textlength(text + "…", font=fnt) > width:
        text = text[:-1]
    return text + "…" if text else ""


def wrap(draw: ImageDraw.ImageDraw, text: str, fnt, width: float) -> List[str]:
    """Lines of ``text`` that fit ``width`` pixels (paragraphs kept; bullets hang)."""
    lines = []
    avg = max(1.0, draw.textlength("abcdefghijklmnopqrstuvwxyz", font=fnt) / 26)
    for paragraph in text.split("\n"):
        if not paragraph.strip():
            lines.append("")
            continue
        lead = paragraph[:len(paragraph) - len(paragraph.lstrip())]
        indent = lead + ("  " if paragraph.lstrip().startswith("- ") else "")
        chars = max(8, int(width / avg))
        while True:
            parts = textwrap.wrap(paragraph, chars, subsequent_indent=indent, break_on_hyphens=False) or [""]
            if all(draw.textlength(p, font=fnt) <= width for p in parts) or chars <= 8:
                break
            chars -= 2
        lines.extend(parts)
    return lines


# --------------------------------------------------------------------------- node widgets


def widget_rows(registry, node: dict) -> List[Tuple[str, Optional[str], bool]]:
    """``(name, shown value, linked)`` for each widget of a node, from its class's inputs."""
    from core import graph

    cls = registry.get(node["type"]) if registry else None
    if cls is None:
        return []
    values = list(node.get("widgets_values") or [])
    linked = {(i.get("widget") or {}).get("name") for i in node.get("inputs") or [] if i.get("widget")}
    rows, pos = [], 0
    for spec in graph.input_specs(cls):
        if not spec.is_widget:
            continue
        value = values[pos] if pos < len(values) else None
        pos += 1 + bool(spec.has_control) + bool(spec.upload_value)
        if spec.name in linked:
            rows.append((spec.name, None, True))
        else:
            if isinstance(value, bool):
                shown = "true" if value else "false"
            elif isinstance(value, float):
                shown = f"{value:g}"
            else:
                shown = str(value)
            rows.append((spec.name, shown, False))
    return rows


def load_registry():
    try:
        import run

        return run.registry()
    except Exception as exc:  # the picture still works without widget names
        print(f"note: node classes not loaded ({type(exc).__name__}: {exc}); widgets are left out",
              file=sys.stderr)
        return {}


# --------------------------------------------------------------------------- workflow picture


class Canvas:
    """Canvas units -> pixels of the supersampled picture."""

    def __init__(self, left: float, top: float, scale: float, offset_y: float) -> None:
        self.left, self.top, self.scale, self.offset_y = left, top, scale, offset_y

    def x(self, v: float) -> float:
        return (MARGIN + (v - self.left) * self.scale) * SS

    def y(self, v: float) -> float:
        return (self.offset_y + (v - self.top) * self.scale) * SS

    def d(self, v: float) -> float:
        return v * self.scale * SS


def bounds(workflow: dict) -> Tuple[float, float, float, float]:
    boxes = [(n["pos"][0], n["pos"][1] - TITLE_H, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow["nodes"]]
    boxes += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in workflow.get("groups") or []]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
            max(b[3] for b in boxes))


def bezier(p0, p3, steps: int = 40) -> List[Tuple[float, float]]:
    dist = max(40.0, abs(p3[0] - p0[0]) * 0.5)
    p1, p2 = (p0[0] + dist, p0[1]), (p3[0] - dist, p3[1])
    points = []
    for i in range(steps + 1):
        t = i / steps
        u = 1 - t
        points.append((u ** 3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * p3[0],
                       u ** 3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * p3[1]))
    return points


def draw_workflow(workflow: dict, name: str, registry) -> Image.Image:
    left, top, right, bottom = bounds(workflow)
    scale = (WIDTH - 2 * MARGIN) / (right - left)
    height = round(HEADER + (bottom - top) * scale + MARGIN)
    cv = Canvas(left, top, scale, HEADER)
    img = Image.new("RGB", (WIDTH * SS, height * SS), BG)
    draw = ImageDraw.Draw(img)
    f_head = font(15 * SS, bold=True)
    f_legend = font(11 * SS)
    f_title = font(12 * SS, bold=True)
    f_type = font(9.5 * SS)
    f_row = font(9 * SS)
    f_note = font(10 * SS)

    # header: name and the link types used
    draw.text((MARGIN * SS, 9 * SS), name, font=f_head, fill=TEXT)
    x = MARGIN * SS + draw.textlength(name, font=f_head) + 24 * SS
    used = list(dict.fromkeys(str(link[5]) for link in workflow["links"]))
    for link_type in used:
        label = TYPE_LABELS.get(link_type, link_type)
        color = TYPE_COLORS.get(link_type, OTHER)
        draw.line([(x, 18 * SS), (x + 18 * SS, 18 * SS)], fill=color, width=3 * SS)
        draw.text((x + 22 * SS, 11 * SS), label, font=f_legend, fill=DIM)
        x += 22 * SS + draw.textlength(label, font=f_legend) + 16 * SS

    # groups
    for group in workflow.get("groups") or []:
        gx, gy, gw, gh = group["bounding"]
        color = hex_rgb(group.get("color") or "#3f789e")
        f_group = font(min(15.0, max(11.0, group.get("font_size", 24) * scale)) * SS, bold=True, condensed=True)
        band = group.get("font_size", 24) * 1.4
        box = [cv.x(gx), cv.y(gy), cv.x(gx + gw), cv.y(gy + gh)]
        draw.rounded_rectangle(box, radius=6 * SS, fill=mix(BG, color, 0.16), outline=mix(BG, color, 0.7),
                               width=SS)
        draw.rounded_rectangle([box[0], box[1], box[2], cv.y(gy + band)], radius=6 * SS,
                               fill=mix(BG, color, 0.45))
        draw.rectangle([box[0] + SS, cv.y(gy + band) - 6 * SS, box[2] - SS, cv.y(gy + band)],
                       fill=mix(BG, color, 0.45))
        draw.text((box[0] + 6 * SS, (box[1] + cv.y(gy + band)) / 2), fit(draw, group["title"], f_group,
                  box[2] - box[0] - 12 * SS), font=f_group, fill=TEXT, anchor="lm")

    sockets_in: Dict[Tuple[int, int], Tuple[float, float]] = {}
    sockets_out: Dict[Tuple[int, int], Tuple[float, float]] = {}
    widgets: Dict[int, list] = {}
    for node in workflow["nodes"]:
        if node["type"] in ("Note", "MarkdownNote"):
            continue
        x0, y0 = node["pos"]
        w = node["size"][0]
        body = y0 + TYPE_ROW
        plain = [(i, e) for i, e in enumerate(node.get("inputs") or []) if not e.get("widget")]
        for row, (slot, _) in enumerate(plain):
            sockets_in[(node["id"], slot)] = (cv.x(x0), cv.y(body + row * ROW + ROW / 2))
        for slot, _ in enumerate(node.get("outputs") or []):
            sockets_out[(node["id"], slot)] = (cv.x(x0 + w), cv.y(body + slot * ROW + ROW / 2))
        rows = widget_rows(registry, node)
        widgets[node["id"]] = rows
        first = body + max(len(plain), len(node.get("outputs") or [])) * ROW
        by_name = {name: r for r, (name, _, _) in enumerate(rows)}
        for slot, entry in enumerate(node.get("inputs") or []):
            name = (entry.get("widget") or {}).get("name")
            if name is not None:
                row = by_name.get(name, len(rows))
                sockets_in[(node["id"], slot)] = (cv.x(x0), cv.y(first + row * ROW + ROW / 2))

    # links under the nodes
    for link_id, src, src_slot, dst, dst_slot, link_type in workflow["links"]:
        a, b = sockets_out.get((src, src_slot)), sockets_in.get((dst, dst_slot))
        if a is None or b is None:
            continue
        color = TYPE_COLORS.get(str(link_type), OTHER)
        draw.line(bezier(a, b), fill=mix(BG, color, 0.9), width=max(2, round(2.2 * SS)), joint="curve")

    for node in workflow["nodes"]:
        x0, y0 = node["pos"]
        w, h = node["size"]
        is_note = node["type"] in ("Note", "MarkdownNote")
        title_fill = NOTE_TITLE if is_note else (hex_rgb(node["color"]) if node.get("color") else NODE_TITLE)
        body_fill = NOTE_BODY if is_note else (hex_rgb(node["bgcolor"]) if node.get("bgcolor") else NODE_BODY)
        outer = [cv.x(x0), cv.y(y0 - TITLE_H), cv.x(x0 + w), cv.y(y0 + h)]
        draw.rounded_rectangle(outer, radius=5 * SS, fill=body_fill, outline=NODE_EDGE, width=SS)
        draw.rounded_rectangle([outer[0], outer[1], outer[2], cv.y(y0)], radius=5 * SS, fill=title_fill,
                               outline=NODE_EDGE, width=SS)
        draw.rectangle([outer[0] + SS, cv.y(y0) - 5 * SS, outer[2] - SS, cv.y(y0)], fill=title_fill)
        inner = outer[2] - outer[0] - 12 * SS
        title = node.get("title") or node["type"]
        draw.ellipse([outer[0] + 5 * SS, cv.y(y0 - TITLE_H / 2) - 3 * SS, outer[0] + 11 * SS,
                      cv.y(y0 - TITLE_H / 2) + 3 * SS], fill=DIM)
        draw.text((outer[0] + 15 * SS, cv.y(y0 - TITLE_H / 2)), fit(draw, title, f_title, inner - 10 * SS),
                  font=f_title, fill=TEXT, anchor="lm")
        if is_note:
            text = (node.get("widgets_values") or [""])[0]
            lines = wrap(draw, text, f_note, inner)
            line_h = 12.5 * SS
            room = int((cv.y(y0 + h) - cv.y(y0) - 8 * SS) // line_h)
            if len(lines) > room:
                lines = lines[:max(0, room)]
                if lines:
                    lines[-1] = fit(draw, lines[-1] + " …", f_note, inner)
            for i, line in enumerate(lines):
                draw.text((outer[0] + 6 * SS, cv.y(y0) + 5 * SS + i * line_h), line, font=f_note, fill=NOTE_TEXT)
            continue
        kind = node["type"][len(PREFIX):] if node["type"].startswith(PREFIX) else node["type"]
        draw.text((outer[0] + 6 * SS, cv.y(y0 + TYPE_ROW / 2)), fit(draw, kind, f_type, inner), font=f_type,
                  fill=DIM, anchor="lm")
        body = y0 + TYPE_ROW
        plain = [e for e in node.get("inputs") or [] if not e.get("widget")]
        outputs = node.get("outputs") or []
        half = (outer[2] - outer[0]) / 2 - 14 * SS
        for row, entry in enumerate(plain):
            cy = cv.y(body + row * ROW + ROW / 2)
            color = TYPE_COLORS.get(entry["type"], OTHER)
            draw.ellipse([outer[0] - 4 * SS, cy - 4 * SS, outer[0] + 4 * SS, cy + 4 * SS], fill=color)
            draw.text((outer[0] + 8 * SS, cy), fit(draw, entry["name"], f_row, half), font=f_row, fill=DIM,
                      anchor="lm")
        for row, entry in enumerate(outputs):
            cy = cv.y(body + row * ROW + ROW / 2)
            color = TYPE_COLORS.get(entry["type"], OTHER)
            draw.ellipse([outer[2] - 4 * SS, cy - 4 * SS, outer[2] + 4 * SS, cy + 4 * SS], fill=color)
            draw.text((outer[2] - 8 * SS, cy), fit(draw, entry["name"], f_row, half), font=f_row, fill=DIM,
                      anchor="rm")
        first = body + max(len(plain), len(outputs)) * ROW
        for row, (wname, value, linked) in enumerate(widgets.get(node["id"], [])):
            top_px, bottom_px = cv.y(first + row * ROW + 2), cv.y(first + (row + 1) * ROW - 2)
            if bottom_px > outer[3] - 2 * SS:
                break
            cy = (top_px + bottom_px) / 2
            if linked:
                color = next((TYPE_COLORS.get(e["type"], OTHER) for e in node["inputs"]
                              if (e.get("widget") or {}).get("name") == wname), OTHER)
                draw.ellipse([outer[0] - 4 * SS, cy - 4 * SS, outer[0] + 4 * SS, cy + 4 * SS], fill=color)
                draw.text((outer[0] + 8 * SS, cy), fit(draw, wname, f_row, inner), font=f_row, fill=DIM, anchor="lm")
                continue
            draw.rounded_rectangle([outer[0] + 6 * SS, top_px, outer[2] - 6 * SS, bottom_px],
                                   radius=(bottom_px - top_px) / 2, fill=WIDGET_BG)
            label = fit(draw, wname, f_row, inner * 0.5)
            draw.text((outer[0] + 12 * SS, cy), label, font=f_row, fill=DIM, anchor="lm")
            room = inner - draw.textlength(label, font=f_row) - 18 * SS
            draw.text((outer[2] - 12 * SS, cy), fit(draw, value, f_row, room), font=f_row, fill=TEXT, anchor="rm")
        if node["type"].endswith("LoadPortrait") or node["type"] == "LoadImage":
            preview(img, node, cv, first + len(widgets.get(node["id"], [])) * ROW)
    return img


def preview(img: Image.Image, node: dict, cv: Canvas, start: float) -> None:
    """The picked image under the widgets, as the editor shows it (when it is in examples/)."""
    name = next((v for v in node.get("widgets_values") or [] if isinstance(v, str) and "." in v), None)
    path = EXAMPLES / name if name else None
    if path is None or not path.is_file():
        return
    x0, y0 = node["pos"]
    w, h = node["size"]
    box_w, box_h = cv.d(w - 20), cv.y(y0 + h) - cv.y(start) - 8 * SS
    if box_w < 10 or box_h < 10:
        return
    thumb = Image.open(path).convert("RGB")
    thumb.thumbnail((int(box_w), int(box_h)), Image.LANCZOS)
    img.paste(thumb, (int(cv.x(x0 + w / 2) - thumb.width / 2), int(cv.y(start) + 4 * SS)))


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


# --------------------------------------------------------------------------- example inputs


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
    color = TYPE_COLORS["AUDIO"]
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


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="workflow names (default: all, plus the example inputs)")
    args = parser.parse_args(argv)
    registry = load_registry()
    names = args.names or sorted(p.name[:-len(".api.json")] for p in (WORKFLOWS / "api").glob("*.api.json"))
    for name in names:
        workflow = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
        save(draw_workflow(workflow, name, registry), OUT / f"{name}.png")
    if not args.names:
        save(draw_inputs(), OUT / "example_inputs.png", photo=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
