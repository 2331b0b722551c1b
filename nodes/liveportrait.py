"""LivePortrait nodes: the model set (LoadLivePortrait), motion from a driving video, rendering a portrait from
motion (to an IMAGE batch, or straight to an mp4 for long audio), saving and loading motion."""
from __future__ import annotations

from ..core import checks
from ..core import face as core_face
from ..core import liveportrait as lp
from ..core import video as core_video
from ..core.face import get_detector
from ..core.files import atomic_write
from ..core.liveportrait.crop import crop_driving_video
from ..core.liveportrait.pipeline import LivePortraitSet, render_images
from . import specs
from .base import (LIVEPORTRAIT_TYPE, MOTION_TYPE, file_metadata, list_input_files, progress, register,
                   resolve_input_file, save_path, using, validate_input_file, video_preview)

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
            "precision": specs.precision(),
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
            "driving": ("IMAGE", {"tooltip": "The driving video (a batch of frames)."}),
            "fps": specs.fps("Frame rate of the driving video (connect GetVideoComponents' fps)."),
            "crop": (CROP_CHOICES, {"default": CROP_CHOICES[0],
                                    "tooltip": "Find the face (one box for the whole video, as LivePortrait does), "
                                               "or use the frames as they are when they already are face crops."}),
            "detector": (core_face.DETECTOR_CHOICES, {"default": core_face.DETECTOR_CHOICES[0],
                                                      "tooltip": "Face detector for 'detect face' (runs where the "
                                                                 "LivePortrait set runs)."}),
            "batch_size": specs.batch_size(8, 128, "Frames per forward pass."),
        },
    }

    def run(self, liveportrait, driving, fps, crop, detector, batch_size):
        models = liveportrait.models()
        frames = driving
        if crop == CROP_CHOICES[0]:
            found = get_detector(detector, liveportrait.device, liveportrait.download)
            frames = crop_driving_video(driving, found, models.input_size, device=liveportrait.device)
        motion = lp.extract_motion(models, frames, fps=fps, batch_size=batch_size, device=liveportrait.device,
                                   precision=liveportrait.precision, size=models.input_size,
                                   progress=progress("LivePortraitExtractMotion"))
        return (motion,)


@register("LivePortraitRender", category="liveportrait")
class LivePortraitRender:
    """Render the portrait with LivePortrait following a motion (from a driving video, MotionDiT or procedural motion):
    warping + decoding in batches, stitching, optional lip normalisation, then the faces pasted back into the full
    portrait with a feathered mask."""
    OUTPUTS = (
        ("frames", "IMAGE", "The animated portrait at its full size (faces pasted back), or the face crops when "
                            "paste_back is off."),
        ("face_frames", "IMAGE", "The rendered face crops (512x512)."),
    )
    CHECK_OUTPUTS = True  # the warping and decoding networks run in fp16 on a GPU
    INPUTS = {"required": RENDER_REQUIRED, "optional": RENDER_OPTIONAL}

    def run(self, liveportrait, portrait, motion, relative, region, stitching, multiplier, batch_size,
            expression_friendly=False, normalize_lip=False, paste_back=True, keep_model_loaded=True):
        with using("liveportrait", keep_model_loaded, lambda: liveportrait):
            models, source, x_d = _keypoints(liveportrait, portrait, motion, relative, region, stitching, multiplier,
                                             expression_friendly, normalize_lip)
            frames, faces = render_images(models, source, x_d, portrait.full if paste_back else None,
                                          batch_size=batch_size, device=liveportrait.device,
                                          precision=liveportrait.precision, progress=progress("LivePortraitRender"))
        return (frames if paste_back else faces, faces)


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
        with using("liveportrait", keep_model_loaded, lambda: liveportrait):
            models, source, x_d = _keypoints(liveportrait, portrait, motion, relative, region, stitching, multiplier,
                                             expression_friendly, normalize_lip)
            if paste_back:
                h, w = (int(v) for v in portrait.full.shape[1:3])
            else:
                h = w = models.output_size
            path, subfolder, filename, kind = save_path(filename_prefix, "mp4", temp=not save_output, width=w,
                                                        height=h)
            with core_video.VideoWriter(path, fps=fps, audio=audio, crf=crf, preset=preset,
                                        expected_frames=int(x_d.shape[0]),
                                        metadata=file_metadata(prompt, extra_pnginfo)) as writer:
                def write(frames):
                    # no IMAGE output to check here: each batch is checked before it is encoded, and
                    # an error aborts the writer, so no video with black frames is left behind
                    checks.require_finite_output("image", frames, "a batch of frames rendered by "
                                                                   "LivePortraitRenderVideo")
                    writer.write(frames)

                lp.render_to_video(models, source, x_d, write, portrait.full if paste_back else None,
                                   batch_size=batch_size, device=liveportrait.device,
                                   precision=liveportrait.precision, progress=progress("LivePortraitRenderVideo"))
        return {"ui": video_preview(filename, subfolder, kind), "result": (str(path),)}


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
