"""LivePortrait nodes: motion from a driving video, and rendering a portrait from motion (to an IMAGE batch, or
straight to an mp4 for long audio)."""
from __future__ import annotations

import numpy as np
import torch

from ..core import checks
from ..core import face as core_face
from ..core import liveportrait as lp
from ..core import video as core_video
from ..core.cache import CACHE
from ..core.device import DEVICE_CHOICES, PRECISION_CHOICES
from ..core.errors import InputError
from ..core.liveportrait.crop import DRIVING_SCALE, DRIVING_VY, record_from_box
from ..core.portrait import get_detector
from .base import (CATEGORY, MOTION_TYPE, PORTRAIT_TYPE, file_metadata, list_input_files, progress, register,
                   resolve_input_file, save_path, validate_input_file, video_preview)

CROP_CHOICES = ["detect face (one box for the video)", "as is (already face crops)"]
#: the ``model`` input of every node that loads LivePortrait
LP_MODEL_INPUT = (list(lp.VARIANTS), {"default": "human", "tooltip": "LivePortrait model set: human, or the animal "
                                                                     "models (v1.1, or the first release v1.0). Animal "
                                                                     "faces need the 'center' or 'none' crop."})


@register("LivePortraitExtractMotion", "LivePortraitExtractMotion")
class LivePortraitExtractMotion:
    DESCRIPTION = ("Video-driven LivePortrait: read the head pose, expression, scale and translation of every "
                   "frame of a driving video with LivePortrait's motion extractor. The result drives "
                   "LivePortraitRender like MotionDiT's audio-driven motion does.")
    CATEGORY = f"{CATEGORY}/liveportrait"
    FUNCTION = "run"
    RETURN_TYPES = (MOTION_TYPE,)
    RETURN_NAMES = ("motion",)
    OUTPUT_TOOLTIPS = ("Per-frame LivePortrait motion (pose, expression, translation, scale).",)
    CHECK_OUTPUTS = True  # the extractor runs in fp16 on a GPU

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "driving": ("IMAGE", {"tooltip": "The driving video (a batch of frames)."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.01,
                                  "tooltip": "Frame rate of the driving video (connect GetVideoComponents' fps)."}),
                "crop": (CROP_CHOICES, {"default": CROP_CHOICES[0],
                                        "tooltip": "Find the face (one box for the whole video, as LivePortrait does), "
                                                   "or use the frames as they are when they already are face crops."}),
                "detector": (core_face.DETECTOR_CHOICES, {"default": core_face.DETECTOR_CHOICES[0],
                                                          "tooltip": "Face detector for 'detect face'."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 128, "tooltip": "Frames per forward pass."}),
                "precision": (PRECISION_CHOICES, {"default": "auto", "tooltip": "auto = fp16 on GPU, fp32 on CPU."}),
            },
            "optional": {
                "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": "Where the networks run."}),
                "auto_download": ("BOOLEAN", {"default": True, "tooltip": "Download missing LivePortrait weights."}),
                "model": LP_MODEL_INPUT,
            },
        }

    def run(self, driving, fps, crop, detector, batch_size, precision, device="auto", auto_download=True,
            model="human"):
        models = lp.get_liveportrait(model, device=device, download=auto_download)
        size = int(models.config.get("input_size", 256))
        frames = driving
        if crop == CROP_CHOICES[0]:
            det = get_detector(detector, device, auto_download)
            picks = np.unique(np.linspace(0, driving.shape[0] - 1, min(8, driving.shape[0])).round().astype(int))
            boxes = [core_face.pick_largest(f).box for f in (det.detect(driving[i]) for i in picks) if f]
            if not boxes:
                raise InputError(core_face.NO_FACE_MESSAGE.replace("the image", "the driving video"))
            box = np.mean(np.asarray(boxes, dtype=np.float64), axis=0)
            record = record_from_box(box, tuple(driving.shape[1:3]), size, DRIVING_SCALE, DRIVING_VY,
                                     getattr(det, "is_face_box", True))
            frames = core_face.crop_image(driving, record, padding_mode="zeros", device=device)
        motion = lp.extract_motion(models, frames, fps=fps, batch_size=batch_size, device=device,
                                   precision=precision, size=size, progress=progress("LivePortraitExtractMotion"))
        return (motion,)


@register("LivePortraitRender", "LivePortraitRender")
class LivePortraitRender:
    DESCRIPTION = ("Render the portrait with LivePortrait following a motion (from a driving video, MotionDiT or "
                   "procedural motion): warping + decoding in batches, stitching, optional lip normalisation, "
                   "then the faces pasted back into the full portrait with a feathered mask.")
    CATEGORY = f"{CATEGORY}/liveportrait"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("frames", "face_frames")
    OUTPUT_TOOLTIPS = ("The animated portrait at its full size (faces pasted back), or the face crops when "
                       "paste_back is off.", "The rendered face crops (512x512).")
    CHECK_OUTPUTS = True  # the warping and decoding networks run in fp16 on a GPU

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "portrait": (PORTRAIT_TYPE, {"tooltip": "From LoadPortrait."}),
                "motion": (MOTION_TYPE, {"tooltip": "From LivePortraitExtractMotion, MotionDiT or procedural motion."}),
                "relative": ("BOOLEAN", {"default": True, "tooltip": "Apply the motion relative to its first frame "
                                                                     "(keeps the portrait's own pose and expression)."}),
                "region": (list(lp.motion.REGIONS), {"default": "all", "tooltip": "Which part follows the motion."}),
                "stitching": ("BOOLEAN", {"default": True, "tooltip": "Stitching keeps the shoulders in place "
                                                                      "for a clean paste-back."}),
                "multiplier": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                         "tooltip": "Scale of the motion (1 = as driven)."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Frames rendered per pass."}),
                "precision": (PRECISION_CHOICES, {"default": "auto", "tooltip": "auto = fp16 on GPU, fp32 on CPU."}),
            },
            "optional": {
                "expression_friendly": ("BOOLEAN", {"default": False, "tooltip": "Scale the motion by the ratio of "
                                                                                  "the faces' keypoint volumes."}),
                "normalize_lip": ("BOOLEAN", {"default": False, "tooltip": "Close the portrait's mouth before "
                                                                           "animating (needs its lip ratio)."}),
                "paste_back": ("BOOLEAN", {"default": True, "tooltip": "Paste the faces back into the full portrait."}),
                "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": "Where the networks run."}),
                "keep_model_loaded": ("BOOLEAN", {"default": True, "tooltip": "Keep the networks cached afterwards."}),
                "auto_download": ("BOOLEAN", {"default": True, "tooltip": "Download missing LivePortrait weights."}),
                "model": LP_MODEL_INPUT,
            },
        }

    def run(self, portrait, motion, relative, region, stitching, multiplier, batch_size, precision,
            expression_friendly=False, normalize_lip=False, paste_back=True, device="auto", keep_model_loaded=True,
            auto_download=True, model="human"):
        models = lp.get_liveportrait(model, device=device, download=auto_download)
        try:
            out_size = int(models.config.get("output_size", 512))
            source = lp.portrait_source(models, portrait, device=device, precision=precision)
            x_d = lp.motion_keypoints(models, source, motion, relative=relative, region=region, stitching=stitching,
                                      multiplier=multiplier, expression_friendly=expression_friendly,
                                      normalize_lip=normalize_lip)
            n = int(x_d.shape[0])
            faces = torch.empty((n, out_size, out_size, 3), dtype=torch.float32)
            full_h, full_w = portrait.full.shape[1:3]
            frames = torch.empty((n, full_h, full_w, 3), dtype=torch.float32) if paste_back else None
            done = 0
            for face, pasted in lp.render_pasted(models, source, x_d, portrait.full if paste_back else None,
                                                 batch_size=batch_size, device=device, precision=precision,
                                                 progress=progress("LivePortraitRender")):
                faces[done:done + face.shape[0]] = face
                if pasted is not None:
                    frames[done:done + face.shape[0]] = pasted
                done += face.shape[0]
        finally:
            if not keep_model_loaded:
                CACHE.unload("liveportrait")
        return (frames if paste_back else faces, faces)


@register("LivePortraitRenderVideo", "LivePortraitRenderVideo")
class LivePortraitRenderVideo:
    DESCRIPTION = ("LivePortraitRender and MuxVideo in one node, for long audio: every batch of frames is rendered, "
                   "pasted back and written straight into the mp4 (H.264 + AAC), so memory stays the same whatever "
                   "the length (no IMAGE batch of the whole video). The file appears under its final name only "
                   "once it is complete; a cancel leaves nothing behind.")
    CATEGORY = f"{CATEGORY}/liveportrait"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("Full path of the written mp4.",)

    @classmethod
    def INPUT_TYPES(cls):
        from .video import MuxVideo  # here, so the registration order stays that of nodes/__init__.py

        render = LivePortraitRender.INPUT_TYPES()
        mux = MuxVideo.INPUT_TYPES()
        required = dict(render["required"])
        required["fps"] = ("FLOAT", {**mux["required"]["fps"][1],
                                     "tooltip": "Frames per second of the video: connect the motion's fps "
                                                "(ProceduralMotion, MotionDiT, LoadMotion)."})
        required["filename_prefix"] = ("STRING", {**mux["required"]["filename_prefix"][1],
                                                  "default": "TalkingHead/liveportrait"})
        optional = dict(render["optional"])
        optional["paste_back"] = ("BOOLEAN", {"default": True, "tooltip": "Paste the faces back into the full "
                                                                          "portrait (off: a video of the face crops)."})
        for name in ("audio", "crf", "preset", "save_output"):
            optional[name] = mux["optional"][name]
        return {"required": required, "optional": optional, "hidden": dict(mux["hidden"])}

    def run(self, portrait, motion, relative, region, stitching, multiplier, batch_size, precision, fps,
            filename_prefix, expression_friendly=False, normalize_lip=False, paste_back=True, device="auto",
            keep_model_loaded=True, auto_download=True, model="human", audio=None, crf=19, preset="medium",
            save_output=True, prompt=None, extra_pnginfo=None):
        models = lp.get_liveportrait(model, device=device, download=auto_download)
        try:
            source = lp.portrait_source(models, portrait, device=device, precision=precision)
            x_d = lp.motion_keypoints(models, source, motion, relative=relative, region=region, stitching=stitching,
                                      multiplier=multiplier, expression_friendly=expression_friendly,
                                      normalize_lip=normalize_lip)
            if paste_back:
                h, w = (int(v) for v in portrait.full.shape[1:3])
            else:
                h = w = int(models.config.get("output_size", 512))
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
                                   batch_size=batch_size, device=device, precision=precision,
                                   progress=progress("LivePortraitRenderVideo"))
        finally:
            if not keep_model_loaded:
                CACHE.unload("liveportrait")
        return {"ui": video_preview(filename, subfolder, kind), "result": (str(path),)}


@register("SaveMotion", "SaveMotion")
class SaveMotion:
    DESCRIPTION = ("Save a motion (from a driving video, MotionDiT or procedural motion) as a .safetensors file in "
                   "the output folder, to render it again later with LoadMotion.")
    CATEGORY = f"{CATEGORY}/liveportrait"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("Full path of the saved motion file.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "motion": (MOTION_TYPE, {"tooltip": "The motion to save."}),
            "filename_prefix": ("STRING", {"default": "TalkingHead/motion",
                                           "tooltip": "Name in the output folder; a counter is appended."}),
        }}

    def run(self, motion, filename_prefix):
        path, subfolder, filename, kind = save_path(filename_prefix, "safetensors")
        tmp = path.with_name("." + filename + ".partial")
        try:
            motion.save(tmp)
            tmp.replace(path)
        except Exception as exc:  # safetensors' I/O errors are not OSErrors; nothing half-written may stay
            from ..core.video import VideoWriteError, write_hint

            if tmp.is_file():
                tmp.unlink()
            raise VideoWriteError(f"cannot write {filename} into {path.parent}: {exc} "
                                  f"({write_hint(exc, path)})") from exc
        return {"ui": {"text": [f"saved {len(motion)} frames of motion to {subfolder + '/' if subfolder else ''}"
                                f"{filename}"]}, "result": (str(path),)}


@register("LoadMotion", "LoadMotion")
class LoadMotion:
    DESCRIPTION = "Load a motion saved by SaveMotion (a .safetensors file in the input folder)."
    CATEGORY = f"{CATEGORY}/liveportrait"
    FUNCTION = "run"
    RETURN_TYPES = (MOTION_TYPE, "FLOAT")
    RETURN_NAMES = ("motion", "fps")
    OUTPUT_TOOLTIPS = ("The motion.", "Its frame rate.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"motion_file": (list_input_files((".safetensors",)) or [""], {
            "tooltip": "A motion file in ComfyUI's input folder (SaveMotion writes them to the output folder)."})}}

    @classmethod
    def VALIDATE_INPUTS(cls, motion_file):
        return validate_input_file(motion_file, "motion file")

    def run(self, motion_file):
        path = resolve_input_file(motion_file, "motion file")
        motion = lp.Motion.load(path)
        checks.require_finite("motion", motion, f"motion file '{path.name}'")
        return (motion, float(motion.fps))
