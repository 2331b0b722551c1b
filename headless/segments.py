"""One long render split across workers: each renders a part of the frames, the parts are joined without re-encoding.

A job with ``"segments": N`` (or ``run.py batch --segments N``) runs N times, once per part. In part ``k`` the
workflow's MuxVideo is swapped for this module's segment writer (same inputs), which

1. takes MuxVideo's frames (its frame stream, or IMAGE batch) and counts the whole video as MuxVideo would
   (``extend_to_audio`` included): ``total`` frames;
2. renders only frames ``total * k // N`` .. ``total * (k + 1) // N - 1`` (:meth:`core.frames.FrameStream.section`:
   LivePortrait renders just those, in the batches a whole render uses, so every frame is the one a whole render
   makes; a producer that cannot start in the middle is pulled from the start and the earlier frames dropped);
3. encodes them as an mp4 of its own (MuxVideo's crf and preset, no sound): it starts with a keyframe;
4. writes ``k.json`` (the part's place and the video's length) and, in part 0, the sound track fitted to ``total``
   frames (``audio.wav``).

When every part is in, :func:`join` checks that they agree (one length, parts end to end), then joins them with
ffmpeg's concat demuxer (a stream copy) and adds the sound once (:func:`core.video.concat_videos`). With ``crf 0``
(lossless) the joined video decodes to exactly the frames of the same workflow rendered whole on one machine of the
same kind; with a lossy crf each part is its own encode, so the frames differ from a whole render's by the
encoder's loss at that crf, not by the render. Everything upstream of MuxVideo (the motion) runs in every part.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..core import video as core_video
from ..core.errors import InputError, TalkingHeadError
from ..core.frames import FrameStream
from ..core.host import HOST
from ..core.host_files import file_metadata
from .specs import Prompt, Registry
from .validation import is_output_node

__all__ = ["MUX", "SEGMENT_NODE", "join", "segment_class", "segment_prompt", "split_node"]

MUX = "TalkingHead_MuxVideo"
#: the class type the segment writer runs under in a part's prompt (known only to the batch's workers)
SEGMENT_NODE = "TalkingHead_BatchSegmentWriter"


def split_node(prompt: Prompt, registry: Registry) -> str:
    """The id of the MuxVideo a split render cuts, which must be the workflow's only output node."""
    outputs = [nid for nid, node in prompt.items()
               if node.get("class_type") in registry and is_output_node(registry[node["class_type"]])]
    muxes = [nid for nid in outputs if prompt[nid].get("class_type") == MUX]
    if len(muxes) != 1 or len(outputs) != 1:
        found = ", ".join(f"{nid} ({prompt[nid].get('class_type')})" for nid in outputs) or "none"
        raise InputError(f"splitting a render into segments needs a workflow whose only output is one MuxVideo "
                         f"(its output nodes: {found}); render it whole (no \"segments\") or end it in MuxVideo")
    return muxes[0]


def segment_prompt(prompt: Prompt, node_id: str, index: int, count: int) -> Prompt:
    """``prompt`` with its MuxVideo ``node_id`` made part ``index`` of ``count``."""
    out = copy.deepcopy(prompt)
    node = out[node_id]
    node["class_type"] = SEGMENT_NODE
    node["inputs"].update(segment_index=int(index), segment_count=int(count))
    return out


def segment_class(mux: type) -> type:
    """The segment writer node: MuxVideo's inputs (of the pack's MuxVideo class ``mux``) plus the part's place."""

    class SegmentWriter:
        OUTPUT_NODE = True
        RETURN_TYPES = ("STRING",)
        RETURN_NAMES = ("filename",)
        FUNCTION = "run"
        CATEGORY = getattr(mux, "CATEGORY", "")

        @classmethod
        def INPUT_TYPES(cls) -> Dict[str, Any]:
            spec = copy.deepcopy(mux.INPUT_TYPES())
            spec["required"]["segment_index"] = ("INT", {"default": 0, "min": 0})
            spec["required"]["segment_count"] = ("INT", {"default": 1, "min": 1})
            return spec

        def run(self, segment_index, segment_count, fps=25.0, filename_prefix="", images=None, frames=None,
                audio=None, crf=19, preset="medium", extend_to_audio=False, save_output=True, prompt=None,
                extra_pnginfo=None, **_):
            return write_part(int(segment_index), int(segment_count), frames, images, float(fps), audio, int(crf),
                              str(preset), bool(extend_to_audio))

    SegmentWriter.__name__ = SegmentWriter.__qualname__ = "SegmentWriter"
    return SegmentWriter


def write_part(index: int, count: int, frames: Optional[FrameStream], images, fps: float, audio, crf: int,
               preset: str, extend_to_audio: bool) -> dict:
    """Part ``index`` of ``count`` of MuxVideo's video, into the host's output folder (see the module's notes)."""
    source, track, total = core_video.mux_source(frames, images, fps, audio, extend_to_audio)
    n = len(source)
    if n == 0:
        raise InputError(f"no frames to write: {source.label} is empty")
    start, stop = total * index // count, total * (index + 1) // count
    out = HOST.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    if stop > start:
        part = source.section(start, min(stop, n)) if start < n else source.section(n - 1, n)
        core_video.write_video(out / f"{index}.mp4", part, fps=fps, crf=crf, preset=preset, min_frames=stop - start)
    if index == 0 and track is not None and track.num_samples > 0:
        core_video.write_audio_track(out / "audio.wav", track, total, fps)
    info = {"index": index, "count": count, "total": total, "start": start, "stop": stop, "fps": fps,
            "width": source.width, "height": source.height}
    (out / f"{index}.json").write_text(json.dumps(info), encoding="utf-8")
    return {"result": (str(out / f"{index}.mp4"),)}


def join(parts: Path, count: int, path: Path, prompt: Optional[Prompt] = None) -> int:
    """Join the ``count`` parts in the folder ``parts`` into the mp4 ``path`` (whole or not at all), with the
    original ``prompt`` embedded as MuxVideo embeds it; returns the video's frame count."""
    infos: List[dict] = []
    for k in range(count):
        try:
            infos.append(json.loads((parts / f"{k}.json").read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise TalkingHeadError(f"part {k} of {count} is missing or unreadable: {exc}") from exc
    totals = sorted({info["total"] for info in infos})
    if len(totals) != 1:
        raise TalkingHeadError(f"the parts disagree on the video's length ({', '.join(map(str, totals))} frames): "
                               f"the workflow did not compute the same thing on every worker; render it whole")
    sizes = {(info["width"], info["height"], info["fps"]) for info in infos}
    if len(sizes) != 1:
        raise TalkingHeadError(f"the parts disagree on the frame size or rate: {sorted(sizes)}")
    at = 0
    for info in infos:
        if info["start"] != at:
            raise TalkingHeadError(f"part {info['index']} starts at frame {info['start']}, expected {at}")
        at = info["stop"]
    if at != totals[0]:
        raise TalkingHeadError(f"the parts end at frame {at} of {totals[0]}")
    files = [parts / f"{info['index']}.mp4" for info in infos if info["stop"] > info["start"]]
    audio = parts / "audio.wav"
    core_video.concat_videos(files, path, audio if audio.is_file() else None,
                             metadata=file_metadata(prompt, None) if prompt is not None else None)
    return totals[0]
