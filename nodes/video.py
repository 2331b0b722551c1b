"""ResizePad256, MuxVideo and JoinSegments."""
from __future__ import annotations

import torch

from ..core import audio as core_audio
from ..core import resize
from ..core import video as core_video
from ..core.device import resolve_device
from ..core.errors import InputError
from ..core.frames import FrameStream
from ..core.host import HOST
from ..core.progress import Progress
from . import specs
from .base import (FRAMES_TYPE, file_metadata, image_output, linked_outputs, progress, register, save_path,
                   video_preview)

PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]


def _alternative(node: str, also: str) -> str:
    return f"connect {node}'s frame_stream output to MuxVideo's frames input (or {also}) instead"


def _reporting(stream: FrameStream, label: str) -> FrameStream:
    """``stream`` whose pulls report progress (frames done of all) on the host's bar for ``label``."""
    def around(batches, count):
        bar = Progress(count, progress(label))
        for batch in batches:
            bar.step(int(batch.shape[0]))
            yield batch
    return stream.derive(around)


@register("ResizePad256", category="image")
class ResizePad256:
    """Scale frames so the long side is `size` (aspect ratio kept) and pad them centred to a square, on the GPU, whole
    batches at once. 'crop' fills the square instead; 'stretch' ignores the aspect ratio. Defaults reproduce the
    classic SDA -> FOM 128x96 -> 256x256 step. Takes a frame stream (frames) or an IMAGE batch (images); the result
    is a frame stream, resized batch by batch as the next node pulls it, and an IMAGE batch when connected."""
    OUTPUTS = (
        ("images", "IMAGE", "The frames as size x size squares, as one IMAGE batch (made only when connected; for "
                            "long videos use frame_stream)."),
        ("frame_stream", FRAMES_TYPE, "The frames as size x size squares, as a frame stream: resized batch by batch "
                                      "when the next node pulls it (MuxVideo's frames, FOMAnimate's "
                                      "driving_frames, ...), so memory stays the same whatever the length."),
    )
    INPUTS = {
        "required": {
            "size": ("INT", {"default": 256, "min": 8, "max": 4096, "step": 1,
                             "tooltip": "Side of the square output in pixels."}),
            "mode": (resize.RESIZE_MODES, {"default": "pad",
                                           "tooltip": "pad: fit inside and pad; crop: fill and cut the centre; stretch: ignore the aspect ratio."}),
            "pad_mode": (resize.PAD_MODES, {"default": "constant",
                                            "tooltip": "How the border is filled in pad mode: a constant colour, the edge pixels, or a mirror image."}),
            "pad_value": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Grey level of constant padding (0 = black)."}),
            "interpolation": (resize.INTERPOLATIONS, {"default": "bilinear",
                                                      "tooltip": "Resampling filter (bilinear matches the classic pipeline)."}),
        },
        "optional": {
            "frames": specs.frames("Frames to resize as a frame stream (e.g. SDABase's frame_stream), pulled batch by "
                                   "batch. Connect this or images."),
            "images": ("IMAGE", {"tooltip": "Frames to resize as one IMAGE batch (any size; a video is a batch). "
                                            "Connect this or frames."}),
            "antialias": ("BOOLEAN", {"default": False,
                                      "tooltip": "Blur before shrinking to avoid aliasing (off = classic behaviour)."}),
            "device": specs.device("Where the resize runs; results return to the CPU."),
        },
        "hidden": dict(specs.GRAPH_HIDDEN),
    }

    def run(self, images=None, size=256, mode="pad", pad_mode="constant", pad_value=0.0, interpolation="bilinear",
            antialias=False, device="auto", frames=None, prompt=None, unique_id=None):
        if (frames is None) == (images is None):
            raise InputError("ResizePad256 needs its frames from one input: connect either frames (a frame stream) "
                             "or images (an IMAGE batch)" + (", not both" if frames is not None else ""))
        linked = linked_outputs(prompt, unique_id)
        options = dict(size=size, mode=mode, pad_mode=pad_mode, pad_value=pad_value, interpolation=interpolation,
                       antialias=antialias, device=device)
        if frames is not None:
            source = frames
        elif images.ndim == 4 and images.shape[-1] == 3:
            batch = 16 if resolve_device(device).type == "cpu" else 256  # resize_pad's own chunks
            source = FrameStream.from_images(images, batch_size=batch, label="ResizePad256's images input")
        elif linked is None or 1 not in linked:
            source = None  # not RGB frames: an IMAGE output only, as before streams
        else:
            raise InputError(f"ResizePad256's frame_stream output needs RGB frames [B,H,W,3]; the images input has "
                             f"shape {tuple(images.shape)}: use the images output")
        stream = None if source is None else source.map(
            lambda batch: resize.resize_pad(batch, out_device="cpu", **options), size, size, "ResizePad256's frames")
        out = None
        if images is not None:
            if linked is None or 0 in linked:  # an IMAGE in memory already: resized whole, as it always was
                out = resize.resize_pad(images, out_device=images.device, progress=progress("ResizePad256"),
                                        **options)
        else:
            out = image_output(_reporting(stream, "ResizePad256"), 0, linked, "ResizePad256's images output",
                               _alternative("ResizePad256", "FOMAnimate's driving_frames"))
        return (out, stream)


@register("VideoFrames", category="video")
class VideoFrames:
    """A video (LoadVideo's VIDEO) as a frame stream: the frames are decoded batch by batch each time the next node
    pulls them, so a driving video of any length takes a few batches of memory (GetVideoComponents decodes the whole
    video into one IMAGE batch). Also gives the video's sound and frame rate, as GetVideoComponents does."""
    OUTPUTS = (
        ("frame_stream", FRAMES_TYPE, "The video's frames as a frame stream (FOMAnimate's driving_frames, "
                                      "ResizePad256's frames, LivePortraitExtractMotion's driving_frames, ...)."),
        ("audio", "AUDIO", "The video's sound track (nothing when it has none)."),
        ("fps", "FLOAT", "The video's frame rate."),
    )
    INPUTS = {
        "required": {
            "video": ("VIDEO", {"tooltip": "A video, e.g. from LoadVideo."}),
        },
    }

    def run(self, video):
        source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
        label = "VideoFrames' frames"
        if source is None:  # frames in memory already (CreateVideo's VIDEO, an older ComfyUI)
            parts = video.get_components()
            rate = float(parts["frame_rate"])
            return (FrameStream.from_images(parts["images"], rate, label=label), parts["audio"], rate)
        rate = float(video.get_frame_rate()) if hasattr(video, "get_frame_rate") else None
        stream, sound = core_video.open_video(source, label, rate, folder=HOST.temp_dir())
        return (stream, None if sound is None else core_audio.to_comfy(sound), float(stream.fps))


@register("MuxVideo", category="video")
class MuxVideo:
    """Write frames and (optionally) audio to an mp4 (H.264 yuv420p + AAC) in the output folder. Frames stream into
    ffmpeg; the audio is trimmed or padded to the video's length; the file appears under its final name only once it
    is complete."""
    OUTPUT_NODE = True
    OUTPUTS = (
        ("filename", "STRING", "Full path of the written mp4."),
    )
    INPUTS = {
        "required": {
            "fps": specs.fps("Frames per second of the video (talking-head models use 25)."),
            "filename_prefix": ("STRING", {"default": "TalkingHead/talk",
                                           "tooltip": "Name of the file in the output folder; may contain a sub-folder. "
                                                      "A counter is appended: prefix_00001_.mp4."}),
        },
        "optional": {
            "frames": specs.frames("The video as a frame stream (a node's frame_stream output): written batch by "
                                   "batch, so memory stays the same whatever the length. Connect this or images."),
            "images": ("IMAGE", {"tooltip": "The video frames as one IMAGE batch (from any node). Connect this or "
                                            "frames. Odd sizes get one edge row/column repeated."}),
            "audio": ("AUDIO", {"tooltip": "Sound track; trimmed or padded with silence to the video's length."}),
            "crf": ("INT", {"default": 19, "min": 0, "max": 51, "step": 1,
                            "tooltip": "H.264 quality: lower is better and bigger (17-23 is typical)."}),
            "preset": (PRESETS, {"default": "medium", "tooltip": "H.264 speed/size trade-off."}),
            "extend_to_audio": ("BOOLEAN", {"default": False,
                                            "tooltip": "When the audio is longer than the frames, hold the last frame "
                                                       "until the audio ends (a still portrait over a whole speech)."}),
            "save_output": ("BOOLEAN", {"default": True,
                                        "tooltip": "Off: write to the temp folder (a preview that is cleaned up)."}),
        },
        "hidden": dict(specs.SAVE_HIDDEN),
    }

    def run(self, images=None, fps=25.0, filename_prefix="TalkingHead/talk", audio=None, crf=19, preset="medium",
            extend_to_audio=False, save_output=True, frames=None, prompt=None, extra_pnginfo=None):
        source, _, total = core_video.mux_source(frames, images, fps, audio, extend_to_audio)
        path, subfolder, filename, kind = save_path(filename_prefix, "mp4", temp=not save_output, width=source.width,
                                                    height=source.height)
        core_video.write_video(path, source, fps=fps, audio=audio, crf=crf, preset=preset, min_frames=total,
                               metadata=file_metadata(prompt, extra_pnginfo), progress=progress("MuxVideo"))
        return {"ui": video_preview(filename, subfolder, kind), "result": (str(path),)}


@register("JoinSegments", category="video")
class JoinSegments:
    """Join talking-head segments one after another (several speakers, each with their own portrait and speech). Each
    segment's audio is fitted to its frames so every speaker stays in sync. A segment's frames come as a frame stream
    (frames_i) or an IMAGE batch (images_i); the joined frames are a frame stream, and an IMAGE batch when
    connected."""
    OUTPUTS = (
        ("images", "IMAGE", "All frames in order, as one IMAGE batch (made only when connected; for long videos use "
                            "frame_stream)."),
        ("audio", "AUDIO", "The audio of all segments in order, at the first segment's rate."),
        ("frame_stream", FRAMES_TYPE, "All frames in order as a frame stream: each segment pulled batch by batch "
                                      "when the next node (MuxVideo's frames, ...) pulls it, so memory stays the "
                                      "same whatever the length."),
    )
    INPUTS = {
        "required": {
            "fps": specs.fps("Frame rate of the segments."),
        },
        "optional": {
            **{name: spec for i in (1, 2, 3, 4) for name, spec in (
                (f"frames_{i}", specs.frames(f"Frames of segment {i} as a frame stream (e.g. FOMAnimate's "
                                             f"frame_stream). Connect this or images_{i}"
                                             + (" (segment 1 and 2 are needed)." if i < 3 else "."))),
                (f"images_{i}", ("IMAGE", {"tooltip": f"Frames of segment {i} as one IMAGE batch. Connect this or "
                                                      f"frames_{i}" + (" (segment 1 and 2 are needed)." if i < 3
                                                                       else ".")})),
                (f"audio_{i}", ("AUDIO", {"tooltip": f"Audio of segment {i} (silence when not connected)."})))},
        },
        "hidden": dict(specs.GRAPH_HIDDEN),
    }

    def run(self, images_1=None, images_2=None, fps=25.0, prompt=None, unique_id=None, **optional):
        inputs = {"images_1": images_1, "images_2": images_2, **optional}
        segments = []
        for i in range(1, 5):
            frames, images = inputs.get(f"frames_{i}"), inputs.get(f"images_{i}")
            if frames is not None and images is not None:
                raise InputError(f"JoinSegments' segment {i} has frames from two inputs: connect either frames_{i} "
                                 f"(a frame stream) or images_{i} (an IMAGE batch), not both")
            if frames is None and images is None:
                if i < 3:
                    raise InputError(f"JoinSegments needs segment {i}: connect either frames_{i} (a frame stream) "
                                     f"or images_{i} (an IMAGE batch)")
                continue
            segments.append((i, frames, images, inputs.get(f"audio_{i}")))
        core_audio.require_one_frame_size([(f.height, f.width, 3) if f is not None else tuple(im.shape[1:])
                                           for _, f, im, _ in segments])
        audio = core_audio.join_segment_audio([(len(f) if f is not None else int(im.shape[0]), a)
                                               for _, f, im, a in segments], fps)
        linked = linked_outputs(prompt, unique_id)
        stream = FrameStream.concat([f if f is not None else FrameStream.from_images(im, fps, label=f"JoinSegments' "
                                                                                                  f"images_{i} input")
                                     for i, f, im, _ in segments], label="JoinSegments' frames")
        if all(f is None for _, f, _, _ in segments):  # IMAGE batches in memory already: joined as they always were
            out = torch.cat([im for _, _, im, _ in segments], 0) if linked is None or 0 in linked else None
        else:
            out = image_output(stream, 0, linked, "JoinSegments' images output",
                               _alternative("JoinSegments", "ResizePad256's frames"))
        return (out, core_audio.to_comfy(audio), stream)
