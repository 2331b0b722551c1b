"""The classic pipeline's nodes: SDABase and FOMAnimate.

Both hand on their frames as a frame stream (made batch by batch when the next node pulls it: ResizePad256,
FOMAnimate, JoinSegments, MuxVideo) and as an IMAGE batch only when something is connected to that output. A
stream is pulled after its node ran, so it loads its model itself (through the cache) and, with
keep_model_loaded off, frees it when the pull ends.
"""
from __future__ import annotations

from typing import Callable, Optional

from ..core import audio as core_audio
from ..core import checks
from ..core import fom as core_fom
from ..core import sda as core_sda
from ..core import weights
from ..core.errors import InputError
from ..core.frames import FrameStream
from . import specs
from .base import FRAMES_TYPE, image_output, linked_outputs, progress, register, using


def _checked(stream: FrameStream, where: str) -> FrameStream:
    """``stream`` with every batch refused when it has NaN/inf (the model overflowed), naming ``where``."""
    def check(batch):
        checks.require_finite_output("image", batch, where)
        return batch
    return stream.map(check, stream.height, stream.width)


def _alternative(node: str, also: str) -> str:
    return f"connect {node}'s frame_stream output to MuxVideo's frames input (or {also}) instead"


def _stream_tooltip(what: str, also: str) -> str:
    return (f"{what} as a frame stream: made batch by batch when the next node pulls it (MuxVideo's frames, "
            f"{also}), so memory stays the same whatever the length.")


@register("FOMAnimate", category="classic")
class FOMAnimate:
    """Animate a portrait with a driving video using the First Order Motion Model (vox-256). The portrait is encoded
    once; driving frames run in batches on the GPU. Relative mode transfers the driving face's motion, not its
    shape. The driving video comes as a frame stream (driving_frames) or an IMAGE batch (driving); the result is a
    frame stream, and an IMAGE batch when something is connected to frames."""
    OUTPUTS = (
        ("frames", "IMAGE", "The animated portrait, 256x256, one frame per driving frame, as one IMAGE batch (made "
                            "only when connected; for long videos use frame_stream)."),
        ("frame_stream", FRAMES_TYPE, _stream_tooltip("The animated portrait", "JoinSegments' frames_1..4")),
    )
    CHECK_OUTPUTS = True  # the networks run in fp16 on a GPU
    INPUTS = {
        "required": {
            "portrait": ("IMAGE", {"tooltip": "The face to animate (first image of the batch); any size, "
                                              "resized to 256x256. A square face crop (LoadPortrait) works best."}),
            "checkpoint": specs.dynamic(lambda: (weights.choices(core_fom.FILE_ID), {
                "tooltip": "FOM checkpoint in models/fom: the official vox-cpk.pth.tar or a .safetensors copy."})),
            "relative": ("BOOLEAN", {"default": True, "tooltip": "Apply the driving motion relative to its first "
                                                                 "(or best) frame: keeps the portrait's face shape."}),
            "adapt_movement_scale": ("BOOLEAN", {"default": True, "tooltip": "Scale the motion by the ratio of the "
                                                                             "two faces' sizes (relative mode)."}),
            "find_best_frame": ("BOOLEAN", {"default": False, "tooltip": (
                "Use the driving frame whose face pose best matches the portrait as the reference (needs the "
                "face-alignment S3FD and 2D-FAN weights). With driving_frames the stream is pulled twice: once "
                "for the face landmarks, then again to animate.")}),
            "batch_size": specs.batch_size(8, 128, "Driving frames per forward pass (higher = faster on a GPU, "
                                                     "more memory)."),
            "precision": specs.precision("auto = fp16 on a GPU; on the CPU, bf16 where the CPU has native bf16 "
                                         "(AMX or AVX-512 BF16: about 3x faster, within the README's bound of "
                                         "fp32), else fp32."),
        },
        "optional": {
            "driving_frames": specs.frames("The driving video as a frame stream (e.g. SDABase -> ResizePad256's "
                                           "frame_stream), pulled batch by batch. Connect this or driving. Frames "
                                           "of another size are resized to 256x256."),
            "driving": ("IMAGE", {"tooltip": "The driving video as one IMAGE batch, 256x256 frames (e.g. "
                                             "ResizePad256's images); other sizes are resized to 256x256. Connect "
                                             "this or driving_frames."}),
            "device": specs.device(),
            "keep_model_loaded": specs.keep_loaded(),
            "auto_download": specs.auto_download("missing face-detection weights (find_best_frame)"),
        },
        "hidden": dict(specs.GRAPH_HIDDEN),
    }

    def run(self, portrait, driving=None, checkpoint="vox-cpk.pth.tar", relative=True, adapt_movement_scale=True,
            find_best_frame=False, batch_size=8, precision="auto", device="auto", keep_model_loaded=True,
            auto_download=True, driving_frames=None, prompt=None, unique_id=None):
        if (driving_frames is None) == (driving is None):
            raise InputError("FOMAnimate needs its driving video from one input: connect either driving_frames (a "
                             "frame stream) or driving (an IMAGE batch)"
                             + (", not both" if driving is not None else ""))
        linked = linked_outputs(prompt, unique_id)
        stream_later = linked is not None and 1 in linked
        load = lambda: core_fom.get_fom(checkpoint, device)  # noqa: E731
        # the model loads now (a missing checkpoint fails here, and its input size is known); with the stream
        # connected it stays cached until the stream's pull ends, which frees it itself (keep_model_loaded off)
        with using("fom", keep_model_loaded or stream_later, load) as model:
            resolution = model.input_size
            source = driving_frames if driving_frames is not None else \
                FrameStream.from_images(driving, batch_size=batch_size, label="FOMAnimate's driving input")
            initial = None
            if find_best_frame and relative:
                if driving is not None:
                    index = core_fom.best_frame_index(portrait[:1], driving, device, auto_download,
                                                      progress=progress("FOMAnimate: landmarks"))
                    initial = driving[index:index + 1]
                else:
                    _, initial = core_fom.best_frame_in_stream(portrait[:1], driving_frames, device, auto_download,
                                                               progress=progress("FOMAnimate: landmarks"))

            def stream(bar: Optional[Callable]) -> FrameStream:
                return core_fom.frame_stream(lambda: using("fom", keep_model_loaded, load), portrait[:1], source,
                                             relative=relative, adapt_movement_scale=adapt_movement_scale,
                                             initial=initial, batch_size=batch_size, device=device,
                                             precision=precision, resolution=resolution, progress=bar,
                                             label="FOMAnimate's frames")

            frames = image_output(stream(progress("FOMAnimate")), 0, linked, "FOMAnimate's frames output",
                                  _alternative("FOMAnimate", "JoinSegments' frames_1..4"))
        return (frames, _checked(stream(None), "FOMAnimate's frame stream"))


ALIGN_CHOICES = ["align (face landmarks)", "already aligned"]


@register("SDABase", category="classic")
class SDABase:
    """Speech-driven animation (GRID model): a 128x96 talking face at 25 fps made from a face image and speech. The
    face is aligned to the model's mean face with 68 face landmarks, as the original code does. GRID was trained on
    a few speakers: a frontal, evenly lit face works best. Feed the result to ResizePad256 -> FOMAnimate to move
    your own portrait with it: frame_stream makes the frames chunk by chunk as the next node pulls them; frames is
    one IMAGE batch, made only when connected."""
    OUTPUTS = (
        ("frames", "IMAGE", "The talking face, one frame per 40 ms of speech (128x96 for GRID), as one IMAGE batch "
                            "(made only when connected; for long speech use frame_stream)."),
        ("audio", "AUDIO", "The speech as the model heard it (mono, at the model's sample rate)."),
        ("fps", "FLOAT", "The frame rate (25 for GRID)."),
        ("frame_stream", FRAMES_TYPE, _stream_tooltip("The talking face", "ResizePad256's frames")),
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
                                     "tooltip": "Frames generated per pass (memory stays bounded for long audio); "
                                                "the frame stream's batch size."}),
            "device": specs.device(),
            "keep_model_loaded": specs.keep_loaded(),
            "auto_download": specs.auto_download("missing face-landmark weights"),
        },
        "hidden": dict(specs.GRAPH_HIDDEN),
    }

    def run(self, face, audio, face_alignment=ALIGN_CHOICES[0], seed=0, checkpoint="grid.dat",
            chunk_frames=core_sda.DEFAULT_CHUNK_FRAMES, device="auto", keep_model_loaded=True, auto_download=True,
            prompt=None, unique_id=None):
        linked = linked_outputs(prompt, unique_id)
        stream_later = linked is not None and 3 in linked
        load = lambda: core_sda.get_sda(checkpoint, device, download=auto_download)  # noqa: E731
        # the face is aligned, the speech framed and the noise drawn now; the networks run when the stream is
        # pulled (here for the IMAGE output, else by the next node), loading the model through the cache
        with using("sda", keep_model_loaded or stream_later, load) as model:
            core_audio.require_one_frame(audio, model.fps, "SDABase's audio input")
            aligned = face_alignment == ALIGN_CHOICES[1]
            landmark_fn = None if aligned else core_sda.face_alignment_landmarks(device, auto_download)
            inputs = core_sda.prepare(model, face[:1], audio, seed=seed, aligned=aligned, landmark_fn=landmark_fn)
            clip = core_sda.SDAStream(model, inputs, chunk_frames)  # checks chunk_frames; the audio and the rate
            config = model.config

            def stream(bar: Optional[Callable]) -> FrameStream:
                return core_sda.frame_stream(lambda: using("sda", keep_model_loaded, load), inputs, chunk_frames,
                                             config=config, progress=bar, label="SDABase's frames")

            frames = image_output(stream(progress("SDABase")), 0, linked, "SDABase's frames output",
                                  _alternative("SDABase", "ResizePad256's frames"))
            audio_out, fps = core_audio.to_comfy(clip.audio), float(clip.fps)
        return (frames, audio_out, fps, _checked(stream(None), "SDABase's frame stream"))
