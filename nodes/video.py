"""ResizePad256, MuxVideo and JoinSegments."""
from __future__ import annotations

from ..core import audio as core_audio
from ..core import resize, video
from ..core.errors import InputError
from ..core.frames import FrameStream
from . import specs
from .base import file_metadata, progress, register, save_path, video_preview

PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]


@register("ResizePad256", category="image")
class ResizePad256:
    """Scale frames so the long side is `size` (aspect ratio kept) and pad them centred to a square, on the GPU, whole
    batches at once. 'crop' fills the square instead; 'stretch' ignores the aspect ratio. Defaults reproduce the
    classic SDA -> FOM 128x96 -> 256x256 step."""
    OUTPUTS = (
        ("images", "IMAGE", "The frames as size x size squares."),
    )
    INPUTS = {
        "required": {
            "images": ("IMAGE", {"tooltip": "Frames to resize (any size; a video is a batch)."}),
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
            "antialias": ("BOOLEAN", {"default": False,
                                      "tooltip": "Blur before shrinking to avoid aliasing (off = classic behaviour)."}),
            "device": specs.device("Where the resize runs; results return to the CPU."),
        },
    }

    def run(self, images, size, mode, pad_mode, pad_value, interpolation, antialias=False, device="auto"):
        out = resize.resize_pad(images, size=size, mode=mode, pad_mode=pad_mode, pad_value=pad_value,
                                interpolation=interpolation, antialias=antialias, device=device,
                                out_device=images.device, progress=progress("ResizePad256"))
        return (out,)


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
        if (frames is None) == (images is None):
            raise InputError("MuxVideo needs its video from one input: connect either frames (a frame stream) or "
                             "images (an IMAGE batch)" + (", not both" if frames is not None else ""))
        source = frames if frames is not None else FrameStream.from_images(images, fps, label="MuxVideo's images")
        track = core_audio.from_comfy(audio) if audio is not None else None
        # no samples at all is a video without sound (written without an audio track); a few samples,
        # less than one frame, is a broken file, not speech
        if track is not None and track.num_samples > 0:
            core_audio.require_one_frame(track, fps, "MuxVideo's audio input")
        path, subfolder, filename, kind = save_path(filename_prefix, "mp4", temp=not save_output, width=source.width,
                                                    height=source.height)
        total = len(source)
        if extend_to_audio and track is not None:
            total = max(total, core_audio.num_video_frames(track, fps))
        video.write_video(path, source, fps=fps, audio=audio, crf=crf, preset=preset, min_frames=total,
                          metadata=file_metadata(prompt, extra_pnginfo),
                          progress=progress("MuxVideo"))
        return {"ui": video_preview(filename, subfolder, kind), "result": (str(path),)}


@register("JoinSegments", category="video")
class JoinSegments:
    """Join talking-head segments one after another (several speakers, each with their own portrait and speech). Each
    segment's audio is fitted to its frames so every speaker stays in sync."""
    OUTPUTS = (
        ("images", "IMAGE", "All frames in order."),
        ("audio", "AUDIO", "The audio of all segments in order, at the first segment's rate."),
    )
    INPUTS = {
        "required": {
            "images_1": ("IMAGE", {"tooltip": "Frames of segment 1."}),
            "images_2": ("IMAGE", {"tooltip": "Frames of segment 2."}),
            "fps": specs.fps("Frame rate of the segments."),
        },
        "optional": {
            **{f"audio_{i}": ("AUDIO", {"tooltip": f"Audio of segment {i} (silence when not connected)."})
               for i in (1, 2)},
            **{name: spec for i in (3, 4) for name, spec in (
                (f"images_{i}", ("IMAGE", {"tooltip": f"Frames of segment {i}."})),
                (f"audio_{i}", ("AUDIO", {"tooltip": f"Audio of segment {i} (silence when not connected)."})))},
        },
    }

    def run(self, images_1, images_2, fps, **optional):
        inputs = {"images_1": images_1, "images_2": images_2, **optional}
        segments = [(inputs[f"images_{i}"], inputs.get(f"audio_{i}")) for i in range(1, 5)
                    if inputs.get(f"images_{i}") is not None]
        frames, audio = core_audio.join_segments(segments, fps)
        return (frames, core_audio.to_comfy(audio))
