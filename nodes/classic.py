"""The classic pipeline's nodes: SDABase and FOMAnimate."""
from __future__ import annotations

from ..core import audio as core_audio
from ..core import fom as core_fom
from ..core import sda as core_sda
from ..core import weights
from . import specs
from .base import progress, register, using


@register("FOMAnimate", category="classic")
class FOMAnimate:
    """Animate a portrait with a driving video using the First Order Motion Model (vox-256). The portrait is encoded
    once; driving frames run in batches on the GPU. Relative mode transfers the driving face's motion, not its
    shape."""
    OUTPUTS = (
        ("frames", "IMAGE", "The animated portrait, 256x256, one frame per driving frame."),
    )
    CHECK_OUTPUTS = True  # the networks run in fp16 on a GPU
    INPUTS = {
        "required": {
            "portrait": ("IMAGE", {"tooltip": "The face to animate (first image of the batch); any size, "
                                              "resized to 256x256. A square face crop (LoadPortrait) works best."}),
            "driving": ("IMAGE", {"tooltip": "The driving video, 256x256 frames (e.g. SDABase -> ResizePad256); "
                                             "other sizes are resized to 256x256."}),
            "checkpoint": specs.dynamic(lambda: (weights.choices(core_fom.FILE_ID), {
                "tooltip": "FOM checkpoint in models/fom: the official vox-cpk.pth.tar or a .safetensors copy."})),
            "relative": ("BOOLEAN", {"default": True, "tooltip": "Apply the driving motion relative to its first "
                                                                 "(or best) frame: keeps the portrait's face shape."}),
            "adapt_movement_scale": ("BOOLEAN", {"default": True, "tooltip": "Scale the motion by the ratio of the "
                                                                             "two faces' sizes (relative mode)."}),
            "find_best_frame": ("BOOLEAN", {"default": False, "tooltip": "Use the driving frame whose face pose best "
                                                                         "matches the portrait as the reference (needs "
                                                                         "the face-alignment S3FD and 2D-FAN weights)."}),
            "batch_size": specs.batch_size(8, 128, "Driving frames per forward pass (higher = faster on a GPU, "
                                                     "more memory)."),
            "precision": specs.precision(),
        },
        "optional": {
            "device": specs.device(),
            "keep_model_loaded": specs.keep_loaded(),
            "auto_download": specs.auto_download("missing face-detection weights (find_best_frame)"),
        },
    }

    def run(self, portrait, driving, checkpoint, relative, adapt_movement_scale, find_best_frame, batch_size,
            precision, device="auto", keep_model_loaded=True, auto_download=True):
        with using("fom", keep_model_loaded, lambda: core_fom.get_fom(checkpoint, device)) as model:
            initial = 0
            if find_best_frame and relative:
                initial = core_fom.best_frame_index(portrait[:1], driving, device, auto_download,
                                                    progress=progress("FOMAnimate: landmarks"))
            frames = core_fom.animate(model, portrait[:1], driving, relative=relative,
                                      adapt_movement_scale=adapt_movement_scale, initial_index=initial,
                                      batch_size=batch_size, device=device, precision=precision,
                                      progress=progress("FOMAnimate"))
        return (frames,)


ALIGN_CHOICES = ["align (face landmarks)", "already aligned"]


@register("SDABase", category="classic")
class SDABase:
    """Speech-driven animation (GRID model): a 128x96 talking face at 25 fps made from a face image and speech. The
    face is aligned to the model's mean face with 68 face landmarks, as the original code does. GRID was trained on
    a few speakers: a frontal, evenly lit face works best. Feed the result to ResizePad256 -> FOMAnimate to move
    your own portrait with it."""
    OUTPUTS = (
        ("frames", "IMAGE", "The talking face, one frame per 40 ms of speech (128x96 for GRID)."),
        ("audio", "AUDIO", "The speech as the model heard it (mono, at the model's sample rate)."),
        ("fps", "FLOAT", "The frame rate (25 for GRID)."),
    )
    CHECK_OUTPUTS = True  # a GAN generator (its own noise)
    INPUTS = {
        "required": {
            "face": ("IMAGE", {"tooltip": "The face SDA animates (first image): your portrait, aligned by the "
                                          "pack, or any frontal face (the original demo used a GRID speaker)."}),
            "audio": ("AUDIO", {"tooltip": "The speech (any sample rate; resampled as the original code does)."}),
            "face_alignment": (ALIGN_CHOICES, {"default": ALIGN_CHOICES[0], "tooltip": (
                "align: find 68 landmarks (face-alignment S3FD + 2D-FAN weights) and align the face to the "
                "model's mean face; already aligned: the image is only resized.")}),
            "seed": specs.seed("The model's noise (blinks, small motions); same seed, same video."),
            "checkpoint": specs.dynamic(lambda: (weights.choices(core_sda.FILE_ID), {
                "tooltip": "SDA checkpoint in models/sda: the official grid.dat or a .safetensors copy."})),
        },
        "optional": {
            "chunk_frames": ("INT", {"default": core_sda.DEFAULT_CHUNK_FRAMES, "min": 1, "max": 4096,
                                     "tooltip": "Frames generated per pass (memory stays bounded for long audio)."}),
            "device": specs.device(),
            "keep_model_loaded": specs.keep_loaded(),
            "auto_download": specs.auto_download("missing face-landmark weights"),
        },
    }

    def run(self, face, audio, face_alignment, seed, checkpoint, chunk_frames=core_sda.DEFAULT_CHUNK_FRAMES,
            device="auto", keep_model_loaded=True, auto_download=True):
        load = lambda: core_sda.get_sda(checkpoint, device, download=auto_download)  # noqa: E731
        with using("sda", keep_model_loaded, load) as model:
            core_audio.require_one_frame(audio, model.fps, "SDABase's audio input")
            aligned = face_alignment == ALIGN_CHOICES[1]
            landmark_fn = None if aligned else core_sda.face_alignment_landmarks(device, auto_download)
            result = core_sda.animate(model, face[:1], audio, seed=seed, aligned=aligned, landmark_fn=landmark_fn,
                                      chunk_frames=chunk_frames, progress=progress("SDABase"))
        return (result.frames, core_audio.to_comfy(result.audio), float(result.fps))
