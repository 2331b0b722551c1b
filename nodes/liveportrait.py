"""LivePortrait nodes: the model set (LoadLivePortrait), motion from a driving video, rendering a portrait from
motion (a frame stream, IMAGE batches when connected, or straight to an mp4), saving and loading motion."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

from ..core import checks
from ..core import face as core_face
from ..core import frames as core_frames
from ..core import liveportrait as lp
from ..core.cache import CACHE
from ..core.errors import FramesTooLargeError, InputError
from ..core.face import get_detector
from ..core.files import atomic_write
from ..core.frames import FrameStream
from ..core.liveportrait.crop import crop_driving_stream, crop_driving_video
from ..core.liveportrait.pipeline import LivePortraitSet, render_images, render_stream
from . import specs
from .base import (FRAMES_TYPE, LIVEPORTRAIT_TYPE, MOTION_TYPE, image_output, linked_outputs, list_input_files,
                   progress, register, resolve_input_file, save_path, using, validate_input_file)

CROP_CHOICES = ["detect face (one box for the video)", "as is (already face crops)"]
#: the inputs every LivePortrait renderer shares (LivePortraitRender, LivePortraitRenderVideo)
RENDER_REQUIRED = {
    "liveportrait": specs.liveportrait(),
    "portrait": specs.portrait(),
    "motion": specs.motion("From LivePortraitExtractMotion, MotionDiT, ProceduralMotion or LoadMotion."),
    "relative": ("BOOLEAN", {"default": True, "tooltip": "Apply the motion relative to its first frame "
                                                         "(keeps the portrait's own pose and expression)."}),
    "region": (list(lp.motion.REGIONS), {"default": "all", "tooltip": "Which part follows the motion."}),
    "stitching": ("BOOLEAN", {"default": True, "tooltip": "Stitching keeps the shoulders in place "
                                                          "for a clean paste-back."}),
    "multiplier": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                             "tooltip": "Scale of the motion (1 = as driven)."}),
    "batch_size": specs.batch_size(4, 64, "Frames rendered per pass."),
}
RENDER_OPTIONAL = {
    "expression_friendly": ("BOOLEAN", {"default": False, "tooltip": "Scale the motion by the ratio of "
                                                                      "the faces' keypoint volumes."}),
    "normalize_lip": ("BOOLEAN", {"default": False, "tooltip": "Close the portrait's mouth before "
                                                               "animating (needs its lip ratio)."}),
    "paste_back": ("BOOLEAN", {"default": True, "tooltip": "Paste the faces back into the full portrait."}),
    "keep_model_loaded": specs.keep_loaded("the LivePortrait networks"),
}


def _keypoints(lp_set: LivePortraitSet, portrait, motion, relative, region, stitching, multiplier,
               expression_friendly, normalize_lip):
    """The set's networks, the portrait's source and the driving keypoints of ``motion`` on it."""
    models = lp_set.models()
    source = lp_set.source(portrait)
    x_d = lp.motion_keypoints(models, source, motion, relative=relative, region=region, stitching=stitching,
                              multiplier=multiplier, expression_friendly=expression_friendly,
                              normalize_lip=normalize_lip)
    return models, source, x_d


@register("LoadLivePortrait", category="loaders")
class LoadLivePortrait:
    """Load a LivePortrait model set once for the whole graph: connect its output to every LivePortrait node
    (ExtractMotion, Render, RenderVideo, ProceduralMotion, MotionDiT). The choice of model set, device and precision
    is made here, once. The files come from models/liveportrait (downloaded when missing and allowed)."""
    OUTPUTS = (
        ("liveportrait", LIVEPORTRAIT_TYPE, "The loaded LivePortrait model set."),
    )
    INPUTS = {
        "required": {
            "model": (list(lp.VARIANTS), {"default": "human", "tooltip": "LivePortrait model set: human, or the "
                                                                         "animal models (v1.1, or the first release "
                                                                         "v1.0). Animal faces need the 'center' or "
                                                                         "'none' crop."}),
            "precision": specs.precision("auto = fp16 on a GPU; on the CPU, bf16 rendering where the CPU has native "
                                         "bf16 (AMX or AVX-512 BF16: about 5x faster, within the README's bound of "
                                         "fp32), else fp32."),
        },
        "optional": {
            "device": specs.device(),
            "auto_download": specs.auto_download("missing LivePortrait weights"),
        },
    }

    def run(self, model, precision, device="auto", auto_download=True):
        return (LivePortraitSet(model, device=device, precision=precision, download=auto_download).load(),)


@register("LivePortraitExtractMotion", category="liveportrait")
class LivePortraitExtractMotion:
    """Video-driven LivePortrait: read the head pose, expression, scale and translation of every frame of a driving
    video with LivePortrait's motion extractor. The result drives LivePortraitRender like MotionDiT's audio-driven
    motion does."""
    OUTPUTS = (
        ("motion", MOTION_TYPE, "Per-frame LivePortrait motion (pose, expression, translation, scale)."),
    )
    CHECK_OUTPUTS = True  # the extractor runs in fp16 on a GPU
    INPUTS = {
        "required": {
            "liveportrait": specs.liveportrait(),
            "fps": specs.fps("Frame rate of the driving video (connect VideoFrames' or GetVideoComponents' fps)."),
            "crop": (CROP_CHOICES, {"default": CROP_CHOICES[0],
                                    "tooltip": "Find the face (one box for the whole video, as LivePortrait does), "
                                               "or use the frames as they are when they already are face crops."}),
            "detector": (core_face.DETECTOR_CHOICES, {"default": core_face.DETECTOR_CHOICES[0],
                                                      "tooltip": "Face detector for 'detect face' (runs where the "
                                                                 "LivePortrait set runs)."}),
            "batch_size": specs.batch_size(8, 128, "Frames per forward pass."),
        },
        "optional": {
            "driving_frames": specs.frames("The driving video as a frame stream (VideoFrames' frame_stream): read "
                                           "batch by batch, so memory stays the same whatever its length. Connect "
                                           "this or driving."),
            "driving": ("IMAGE", {"tooltip": "The driving video as one IMAGE batch (GetVideoComponents' images). "
                                             "Connect this or driving_frames."}),
        },
    }

    def run(self, liveportrait, driving=None, fps=25.0, crop=CROP_CHOICES[0], detector=core_face.DETECTOR_CHOICES[0],
            batch_size=8, driving_frames=None):
        if (driving is None) == (driving_frames is None):
            raise InputError("LivePortraitExtractMotion needs its driving video from one input: connect either "
                             "driving_frames (a frame stream) or driving (an IMAGE batch)"
                             + (", not both" if driving is not None else ""))
        models = liveportrait.models()
        frames = driving if driving is not None else driving_frames
        if crop == CROP_CHOICES[0]:
            found = get_detector(detector, liveportrait.device, liveportrait.download)
            cut = crop_driving_video if driving is not None else crop_driving_stream
            frames = cut(frames, found, models.input_size, device=liveportrait.device)
        motion = lp.extract_motion(models, frames, fps=fps, batch_size=batch_size, device=liveportrait.device,
                                   precision=liveportrait.precision, size=models.input_size,
                                   progress=progress("LivePortraitExtractMotion"))
        return (motion,)


#: what to do instead of asking for a whole long video as one IMAGE batch
RENDER_ALTERNATIVE = ("connect LivePortraitRender's frame_stream output to MuxVideo's frames input (or use "
                      "LivePortraitRenderVideo, which writes the mp4 itself) instead")


def _unloading(stream: FrameStream, family: str) -> FrameStream:
    """``stream`` whose every pull ends by unloading ``family`` from the cache (keep_model_loaded off): after the
    last batch, and also when the pull fails or is cancelled. The producer loads the networks again through the
    cache on the next pull."""
    def around(batches, count) -> Iterator[torch.Tensor]:
        with using(family, False):
            yield from batches
    return stream.derive(around)


def _check_fits_together(streams: Sequence[FrameStream], what: str, alternative: str) -> None:
    """:meth:`FrameStream.check_fits` for several IMAGE batches made in one pass (they are in memory together)."""
    free = core_frames.available_memory()
    need = sum(s.nbytes for s in streams)
    if free is None or need <= core_frames.MEMORY_SHARE * free:
        return
    sizes = " and of ".join(f"{s.width}x{s.height}" for s in streams)
    raise FramesTooLargeError(f"{what}: {streams[0].count} frames of {sizes} as IMAGE batches would need "
                              f"{need / 2 ** 30:.1f} GiB, and {free / 2 ** 30:.1f} GiB of memory is free. "
                              f"{alternative}")


class _Rendering:
    """One rendering of a portrait following a motion: the driving keypoints computed once (the networks loaded
    now), then the frames as streams (made when pulled) or as IMAGE batches."""

    def __init__(self, lp_set: LivePortraitSet, portrait, motion, relative, region, stitching, multiplier,
                 batch_size, expression_friendly, normalize_lip, node: str) -> None:
        self.lp_set, self.portrait, self.batch_size = lp_set, portrait, batch_size
        self.fps = getattr(motion, "fps", None)
        self.models, self.source, self.x_d = _keypoints(lp_set, portrait, motion, relative, region, stitching,
                                                        multiplier, expression_friendly, normalize_lip)
        self.bar = progress(node)

    def stream(self, paste_back: bool, label: str) -> FrameStream:
        """The full portraits with the faces pasted back, or the face crops; each batch checked as it is made."""
        return render_stream(self.lp_set, self.source, self.x_d, self.portrait.full if paste_back else None,
                             batch_size=self.batch_size, progress=self.bar, label=label, fps=self.fps)

    def images(self):
        """``(pasted, faces)`` as IMAGE batches, rendered in one pass."""
        return render_images(self.models, self.source, self.x_d, self.portrait.full, batch_size=self.batch_size,
                             device=self.lp_set.device, precision=self.lp_set.precision, progress=self.bar)


@register("LivePortraitRender", category="liveportrait")
class LivePortraitRender:
    """Render the portrait with LivePortrait following a motion (from a driving video, MotionDiT or procedural motion):
    warping + decoding in batches, stitching, optional lip normalisation, then the faces pasted back into the full
    portrait with a feathered mask. The frame_stream output renders batch by batch while the next node pulls it
    (MuxVideo's frames: memory stays the same whatever the length); the IMAGE outputs are made only when something
    is connected to them."""
    OUTPUTS = (
        ("frames", "IMAGE", "The animated portrait at its full size (faces pasted back), or the face crops when "
                            "paste_back is off, as one IMAGE batch (made only when connected; for long videos use "
                            "frame_stream)."),
        ("face_frames", "IMAGE", "The rendered face crops (512x512), as one IMAGE batch (made only when connected)."),
        ("frame_stream", FRAMES_TYPE, "The frames (full portrait, or the face crops when paste_back is off) as a "
                                      "frame stream: rendered batch by batch when the next node (MuxVideo's frames "
                                      "input, ...) pulls it, so memory stays the same whatever the length."),
    )
    CHECK_OUTPUTS = True  # the warping and decoding networks run in fp16 on a GPU
    INPUTS = {"required": RENDER_REQUIRED, "optional": RENDER_OPTIONAL, "hidden": dict(specs.GRAPH_HIDDEN)}

    @staticmethod
    def frame_stream(liveportrait, portrait, motion, relative, region, stitching, multiplier, batch_size,
                     expression_friendly=False, normalize_lip=False, paste_back=True,
                     node: str = "LivePortraitRender", label: Optional[str] = None) -> FrameStream:
        """The frame_stream output (networks loaded and keypoints computed now; frames rendered when pulled),
        called ``label`` in messages (default ``<node>'s frame_stream output``). LivePortraitRenderVideo's too."""
        rendering = _Rendering(liveportrait, portrait, motion, relative, region, stitching, multiplier, batch_size,
                               expression_friendly, normalize_lip, node)
        return rendering.stream(paste_back, label or f"{node}'s frame_stream output")

    def run(self, liveportrait, portrait, motion, relative, region, stitching, multiplier, batch_size,
            expression_friendly=False, normalize_lip=False, paste_back=True, keep_model_loaded=True,
            prompt=None, unique_id=None):
        linked = linked_outputs(prompt, unique_id)
        wanted = [linked is None or slot in linked for slot in range(2)]  # frames, face_frames
        # the stream is pulled after this node: when it is connected it unloads the networks itself (after its
        # pull); else they go now, once the IMAGE outputs are made (and on an error, in any case)
        pulled_later = linked is not None and 2 in linked
        try:
            frames, faces, stream = self._outputs(liveportrait, portrait, motion, relative, region, stitching,
                                                  multiplier, batch_size, expression_friendly, normalize_lip,
                                                  paste_back, keep_model_loaded or pulled_later, linked, wanted)
        except BaseException:
            if not keep_model_loaded:
                CACHE.unload("liveportrait")
            raise
        if not keep_model_loaded:
            stream = _unloading(stream, "liveportrait")
        return (frames, faces, stream)

    @staticmethod
    def _outputs(liveportrait, portrait, motion, relative, region, stitching, multiplier, batch_size,
                 expression_friendly, normalize_lip, paste_back, keep_loaded, linked, wanted):
        """``(frames or None, face_frames or None, frame_stream)``; the networks unloaded at the end unless
        ``keep_loaded``."""
        with using("liveportrait", keep_loaded, lambda: liveportrait):
            rendering = _Rendering(liveportrait, portrait, motion, relative, region, stitching, multiplier,
                                   batch_size, expression_friendly, normalize_lip, "LivePortraitRender")
            stream = rendering.stream(paste_back, "LivePortraitRender's frame_stream output")
            frames = faces = None
            if wanted[0] and wanted[1] and paste_back:  # both in one pass
                _check_fits_together([rendering.stream(True, "frames"), rendering.stream(False, "face_frames")],
                                     "LivePortraitRender's frames and face_frames outputs", RENDER_ALTERNATIVE)
                frames, faces = rendering.images()
            elif not paste_back and (wanted[0] or wanted[1]):  # both are the face crops
                name = "frames" if wanted[0] else "face_frames"
                crops = rendering.stream(False, f"LivePortraitRender's {name} output").materialize(
                    None, RENDER_ALTERNATIVE)
                frames, faces = (crops if wanted[0] else None), (crops if wanted[1] else None)
            else:
                frames = image_output(rendering.stream(True, "LivePortraitRender's frames output"), 0, linked,
                                      None, RENDER_ALTERNATIVE)
                faces = image_output(rendering.stream(False, "LivePortraitRender's face_frames output"), 1, linked,
                                     None, RENDER_ALTERNATIVE)
        return frames, faces, stream


def _video_inputs():
    """LivePortraitRenderVideo's inputs: the renderer's plus MuxVideo's (read when ComfyUI asks, so the
    registration order stays that of nodes/__init__.py)."""
    from .video import MuxVideo

    mux = MuxVideo.INPUT_TYPES()
    required = dict(RENDER_REQUIRED)
    required["fps"] = ("FLOAT", {**mux["required"]["fps"][1],
                                 "tooltip": "Frames per second of the video: connect the motion's fps "
                                            "(ProceduralMotion, MotionDiT, LoadMotion)."})
    required["filename_prefix"] = ("STRING", {**mux["required"]["filename_prefix"][1],
                                              "default": "TalkingHead/liveportrait"})
    optional = dict(RENDER_OPTIONAL)
    optional["paste_back"] = ("BOOLEAN", {"default": True, "tooltip": "Paste the faces back into the full "
                                                                      "portrait (off: a video of the face crops)."})
    for name in ("audio", "crf", "preset", "save_output"):
        optional[name] = mux["optional"][name]
    return {"required": required, "optional": optional, "hidden": dict(specs.SAVE_HIDDEN)}


@register("LivePortraitRenderVideo", category="liveportrait")
class LivePortraitRenderVideo:
    """LivePortraitRender and MuxVideo in one node, for long audio: every batch of frames is rendered, pasted back and
    written straight into the mp4 (H.264 + AAC), so memory stays the same whatever the length (no IMAGE batch of the
    whole video). The file appears under its final name only once it is complete; a cancel leaves nothing behind."""
    OUTPUT_NODE = True
    OUTPUTS = (
        ("filename", "STRING", "Full path of the written mp4."),
    )

    @classmethod
    def INPUT_TYPES(cls):
        return _video_inputs()

    def run(self, liveportrait, portrait, motion, relative, region, stitching, multiplier, batch_size, fps,
            filename_prefix, expression_friendly=False, normalize_lip=False, paste_back=True, keep_model_loaded=True,
            audio=None, crf=19, preset="medium", save_output=True, prompt=None, extra_pnginfo=None):
        from .video import MuxVideo

        # LivePortraitRender's frame stream written by MuxVideo: each batch is checked as it is rendered, and an
        # error or a cancel aborts the writer, so no partial video is left behind
        with using("liveportrait", keep_model_loaded, lambda: liveportrait):
            stream = LivePortraitRender.frame_stream(liveportrait, portrait, motion, relative, region, stitching,
                                                     multiplier, batch_size, expression_friendly, normalize_lip,
                                                     paste_back, node="LivePortraitRenderVideo",
                                                     label="LivePortraitRenderVideo's frames")
            return MuxVideo().run(frames=stream, fps=fps, filename_prefix=filename_prefix, audio=audio, crf=crf,
                                  preset=preset, save_output=save_output, prompt=prompt, extra_pnginfo=extra_pnginfo)


@register("SaveMotion", category="liveportrait")
class SaveMotion:
    """Save a motion (from a driving video, MotionDiT or procedural motion) as a .safetensors file in the output
    folder, to render it again later with LoadMotion."""
    OUTPUT_NODE = True
    OUTPUTS = (
        ("filename", "STRING", "Full path of the saved motion file."),
    )

    INPUTS = {"required": {
        "motion": specs.motion("The motion to save."),
        "filename_prefix": ("STRING", {"default": "TalkingHead/motion",
                                       "tooltip": "Name in the output folder; a counter is appended."}),
    }}

    def run(self, motion, filename_prefix):
        path, subfolder, filename, kind = save_path(filename_prefix, "safetensors")
        try:
            with atomic_write(path) as tmp:
                motion.save(tmp)
        except Exception as exc:  # safetensors' I/O errors are not OSErrors; nothing half-written stays
            from ..core.video import VideoWriteError, write_hint

            raise VideoWriteError(f"cannot write {filename} into {path.parent}: {exc} "
                                  f"({write_hint(exc, path)})") from exc
        return {"ui": {"text": [f"saved {len(motion)} frames of motion to {subfolder + '/' if subfolder else ''}"
                                f"{filename}"]}, "result": (str(path),)}


@register("LoadMotion", category="liveportrait")
class LoadMotion:
    """Load a motion saved by SaveMotion (a .safetensors file in the input folder)."""
    OUTPUTS = (
        ("motion", MOTION_TYPE, "The motion."),
        ("fps", "FLOAT", "Its frame rate."),
    )

    INPUTS = {"required": {"motion_file": specs.dynamic(lambda: (list_input_files((".safetensors",)) or [""], {
        "tooltip": "A motion file in ComfyUI's input folder (SaveMotion writes them to the output folder)."}))}}

    @classmethod
    def VALIDATE_INPUTS(cls, motion_file):
        return validate_input_file(motion_file, "motion file")

    def run(self, motion_file):
        path = resolve_input_file(motion_file, "motion file")
        motion = lp.Motion.load(path)
        checks.require_finite("motion", motion, f"motion file '{path.name}'")
        return (motion, float(motion.fps))
