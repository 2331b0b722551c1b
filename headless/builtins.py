"""Headless stand-ins for the few ComfyUI core nodes our workflows use.

They exist only in the headless runner's registry (``run.py`` adds :data:`BUILTIN_NODES` to the pack's
nodes; inside ComfyUI the real ones are used), take the same inputs and return the same types, so one
workflow JSON runs in both places: LoadImage, LoadAudio, LoadVideo, GetVideoComponents, SaveImage,
PreviewImage, CreateVideo, SaveVideo. They read and write files by the same rules as the pack's nodes
(:mod:`core.host_files`).
"""
from __future__ import annotations

import functools
from fractions import Fraction

import torch

from ..core import audio as core_audio
from ..core import image as core_image
from ..core import video as core_video
from ..core.files import atomic_write
from ..core.host import HOST
from ..core.host_files import (IMAGE_EXTENSIONS, file_metadata, list_input_files, resolve_input_file, save_path,
                               validate_input_file, video_preview)

#: what LoadAudio lists (ffmpeg reads the sound of the video containers too)
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".aac", ".mp4", ".webm", ".mkv", ".mov")
#: what LoadVideo lists
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


class LoadImage:
    CATEGORY = "image"
    FUNCTION = "load_image"
    RETURN_TYPES = ("IMAGE", "MASK")
    DISPLAY_NAME = "Load Image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (list_input_files(IMAGE_EXTENSIONS), {"image_upload": True})}}

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        return validate_input_file(image, "image")

    def load_image(self, image):
        img, alpha = core_image.load_image_with_alpha(resolve_input_file(image, "image"))
        mask = 1.0 - alpha if alpha is not None else torch.zeros((1, 64, 64), dtype=torch.float32)
        return (img, mask)


class LoadAudio:
    CATEGORY = "audio"
    FUNCTION = "load"
    RETURN_TYPES = ("AUDIO",)
    DISPLAY_NAME = "Load Audio"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": (list_input_files(AUDIO_EXTENSIONS), {"audio_upload": True})}}

    @classmethod
    def VALIDATE_INPUTS(cls, audio):
        return validate_input_file(audio, "audio file")

    def load(self, audio):
        return (core_audio.to_comfy(core_audio.load_audio(resolve_input_file(audio, "audio file"))),)


class SaveImage:
    CATEGORY = "image"
    FUNCTION = "save_images"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    DISPLAY_NAME = "Save Image"
    TEMP = False

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        from PIL import Image, PngImagePlugin

        info = PngImagePlugin.PngInfo()
        for key, value in file_metadata(prompt, extra_pnginfo).items():
            info.add_text(key, value)
        results = []
        for frame in core_image.image_to_uint8(images):
            path, sub, name, kind = save_path(filename_prefix, "png", temp=self.TEMP)
            with atomic_write(path) as tmp:
                Image.fromarray(frame).save(tmp, format="PNG", pnginfo=info)
            results.append({"filename": name, "subfolder": sub, "type": kind})
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    DISPLAY_NAME = "Preview Image"
    TEMP = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save_images(self, images, prompt=None, extra_pnginfo=None):
        return super().save_images(images, "preview", prompt, extra_pnginfo)


class HeadlessVideo:
    """The part of ComfyUI's VideoInput our runner needs, for frames already in memory (CreateVideo)."""

    def __init__(self, images, audio=None, frame_rate=Fraction(25)) -> None:
        self.images, self.audio, self.frame_rate = images, audio, Fraction(frame_rate)

    def get_components(self):
        return {"images": self.images, "audio": self.audio, "frame_rate": self.frame_rate}

    def get_dimensions(self):
        return int(self.images.shape[2]), int(self.images.shape[1])

    def get_frame_rate(self) -> Fraction:
        return self.frame_rate

    def get_duration(self) -> float:
        return float(self.images.shape[0] / self.frame_rate)


class HeadlessVideoFile:
    """ComfyUI's VideoFromFile as far as our runner needs it: a video file whose frames are decoded only when asked
    for (``get_components`` decodes them all, as ComfyUI's does; the pack's VideoFrames streams them from
    ``get_stream_source``). The sound track is read at once, so a damaged one is an error at LoadVideo."""

    def __init__(self, path) -> None:
        self.path = path
        # the header only (the frames are counted when asked for); a damaged sound track is an error, none is None
        self.width, self.height, fps = core_video.video_info(path)
        self.frame_rate = Fraction(fps).limit_denominator(1001)
        sound = core_audio.load_audio_track(path)
        self.audio = None if sound is None else core_audio.to_comfy(sound)

    def get_stream_source(self) -> str:
        return str(self.path)

    def get_components(self):
        images, _ = core_video.load_video(self.path)
        return {"images": images, "audio": self.audio, "frame_rate": self.frame_rate}

    def get_dimensions(self):
        return self.width, self.height

    def get_frame_rate(self) -> Fraction:
        return self.frame_rate

    @functools.cached_property
    def _frame_count(self) -> int:  # a decoding pass: only when asked for, once
        return core_video.count_frames(self.path)

    def get_frame_count(self) -> int:
        return self._frame_count

    def get_duration(self) -> float:
        return float(self._frame_count / self.frame_rate)


class CreateVideo:
    CATEGORY = "image/video"
    FUNCTION = "execute"
    RETURN_TYPES = ("VIDEO",)
    DISPLAY_NAME = "Create Video"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0})},
                "optional": {"audio": ("AUDIO",)}}

    def execute(self, images, fps, audio=None):
        return (HeadlessVideo(images, audio, Fraction(fps).limit_denominator(1001)),)


class LoadVideo:
    CATEGORY = "image/video"
    FUNCTION = "execute"
    RETURN_TYPES = ("VIDEO",)
    DISPLAY_NAME = "Load Video"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (list_input_files(VIDEO_EXTENSIONS), {"video_upload": True})}}

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        return validate_input_file(file, "video file")

    def execute(self, file):
        return (HeadlessVideoFile(resolve_input_file(file, "video file")),)


class GetVideoComponents:
    CATEGORY = "image/video"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    DISPLAY_NAME = "Get Video Components"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",)}}

    def execute(self, video):
        comp = video.get_components()
        return (comp["images"], comp["audio"], float(comp["frame_rate"]))


class SaveVideo:
    CATEGORY = "image/video"
    FUNCTION = "execute"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    DISPLAY_NAME = "Save Video"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                             "format": (["auto", "mp4"], {"default": "auto"}),
                             "codec": (["auto", "h264"], {"default": "auto"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def execute(self, video, filename_prefix, format="auto", codec="auto", prompt=None, extra_pnginfo=None):
        comp = video.get_components()
        images, audio, rate = comp["images"], comp["audio"], comp["frame_rate"]
        w, h = video.get_dimensions()
        path, sub, name, kind = save_path(filename_prefix, "mp4", width=w, height=h)
        core_video.write_video(path, images, fps=float(rate), audio=audio,
                               metadata=file_metadata(prompt, extra_pnginfo),
                               progress=HOST.progress("SaveVideo"))
        return {"ui": video_preview(name, sub, kind)}


BUILTIN_NODES = {cls.__name__: cls for cls in (LoadImage, LoadAudio, LoadVideo, GetVideoComponents, SaveImage,
                                                PreviewImage, CreateVideo, SaveVideo)}
