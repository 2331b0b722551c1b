"""Audio -> LivePortrait motion nodes: ProceduralMotion (no motion model needed), AudioToEmbedding and
MotionDiT (Ditto LMDM / JoyVASA)."""
from __future__ import annotations

from ..core import audio as core_audio
from ..core import audio_features as af
from ..core.motion import dit, procedural
from ..core.motion.ditto.conditions import EMOTIONS
from . import specs
from .base import EMBEDS_TYPE, MOTION_TYPE, progress, register, using

#: AudioToEmbedding's choices -> (encoder, chunking) of core.audio_features
ENCODER_CHOICES = {
    "HuBERT-large (Ditto)": ("hubert-large-ls960-ft", "ditto-offline"),
    "HuBERT ONNX (Ditto, needs onnxruntime)": ("ditto-onnx", "ditto-offline"),
    "JoyVASA (its own HuBERT)": ("joyvasa", "joyvasa"),
}
#: the LivePortrait input of the motion producers: they read the portrait's own pose and expression with it
LIVEPORTRAIT_INPUT = specs.liveportrait("The LivePortrait model set, from LoadLivePortrait: the motion starts from "
                                        "the portrait's own pose and expression, read with it. Connect the same "
                                        "set as the renderer's.")


@register("ProceduralMotion", category="motion")
class ProceduralMotion:
    """A talking head without any motion model: the mouth opens with the loudness of the speech, the eyes blink
    naturally and the head moves a little. Needs only the LivePortrait weights. Connect the motion to
    LivePortraitRender, which drives the mouth and eyes through LivePortrait's retargeting networks."""
    OUTPUTS = (
        ("motion", MOTION_TYPE, "Per-frame motion for this portrait (one frame per video frame of the audio)."),
        ("fps", "FLOAT", "The frame rate (connect it to MuxVideo)."),
    )
    CHECK_OUTPUTS = True  # the portrait's own motion comes from a network (fp16 on a GPU)
    INPUTS = {
        "required": {
            "liveportrait": LIVEPORTRAIT_INPUT,
            "portrait": specs.portrait("From LoadPortrait (its own pose is the starting point)."),
            "audio": ("AUDIO", {"tooltip": "The speech."}),
            "fps": specs.fps("Frames per second of the video.", maximum=120.0),
            "seed": specs.seed("Blinks and head motion; the same seed gives the same motion."),
            "lip_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.5, "step": 0.05,
                                       "tooltip": "How wide the mouth opens on loud speech."}),
            "head_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                        "tooltip": "Amount of head motion (0 = still)."}),
            "blinks": ("BOOLEAN", {"default": True, "tooltip": "Natural blinks every 2.5 to 6 seconds."}),
        },
    }

    def run(self, liveportrait, portrait, audio, fps, seed, lip_strength, head_strength, blinks):
        core_audio.require_one_frame(audio, fps, "ProceduralMotion's audio input")
        source = liveportrait.source(portrait)
        motion = procedural.procedural_motion(
            audio, source.motion, seed=seed, lip_strength=lip_strength, head_strength=head_strength, fps=fps,
            blink_interval=procedural.DEFAULT_BLINK_INTERVAL if blinks else None)
        return (motion, float(fps))


@register("AudioToEmbedding", category="motion")
class AudioToEmbedding:
    """Speech features for MotionDiT: the audio is made mono, resampled to 16 kHz and encoded with HuBERT, cut into
    chunks exactly as the chosen motion model was trained (25 features per second). Also measures the loudness per
    frame."""
    OUTPUTS = (
        ("embeddings", EMBEDS_TYPE, "Audio features at 25 fps with a record of how they were made (MotionDiT "
                                    "checks it)."),
    )
    CHECK_OUTPUTS = True  # HuBERT runs in fp16 on a GPU
    INPUTS = {
        "required": {
            "audio": ("AUDIO", {"tooltip": "The speech (any sample rate, mono or stereo)."}),
            "encoder": (list(ENCODER_CHOICES), {
                "default": next(iter(ENCODER_CHOICES)),
                "tooltip": "Match the MotionDiT checkpoint: Ditto uses facebook/hubert-large-ls960-ft "
                           "(models/audio_encoders) or its ONNX file; JoyVASA uses the HuBERT inside its "
                           "own checkpoint."}),
        },
        "optional": {
            "joyvasa_checkpoint": specs.dynamic(lambda: (dit.checkpoint_choices(), {
                "default": dit.checkpoint_choices()[-1],
                "tooltip": "For the JoyVASA encoder: the JoyVASA checkpoint whose HuBERT is used."})),
            "precision": specs.precision(),
            "device": specs.device("Where the encoder runs."),
            "auto_download": specs.auto_download("a missing encoder"),
        },
    }

    def run(self, audio, encoder, joyvasa_checkpoint="", precision="auto", device="auto", auto_download=True):
        name, chunking = ENCODER_CHOICES[encoder]
        core_audio.require_one_frame(audio, af.chunking_info(chunking).fps, "AudioToEmbedding's audio input")
        kwargs = {}
        if name == "joyvasa":
            kwargs["model_path"] = dit.resolve_checkpoint(joyvasa_checkpoint, auto_download)[1]
        emb = af.compute_embeddings(audio, encoder=name, chunking=chunking, device=device, precision=precision,
                                    progress=progress("AudioToEmbedding"), download=auto_download, **kwargs)
        return (emb,)


@register("MotionDiT", category="motion")
class MotionDiT:
    """Audio-driven LivePortrait motion from a diffusion model: Ditto's LMDM (streamed in 80-frame windows with
    cross-fades) or JoyVASA (4-second windows). The motion is made for this portrait (its own pose and face shape)
    and goes to LivePortraitRender."""
    OUTPUTS = (
        ("motion", MOTION_TYPE, "Per-frame motion for this portrait."),
        ("fps", "FLOAT", "The frame rate (25; connect it to MuxVideo)."),
    )
    CHECK_OUTPUTS = True  # a diffusion model: large guidance or fp16 can overflow
    INPUTS = {
        "required": {
            "liveportrait": LIVEPORTRAIT_INPUT,
            "embeddings": (EMBEDS_TYPE, {"tooltip": "From AudioToEmbedding (with the encoder matching the "
                                                     "checkpoint)."}),
            "portrait": specs.portrait(),
            "checkpoint": specs.dynamic(lambda: (dit.checkpoint_choices(), {
                "default": dit.checkpoint_choices()[0],
                "tooltip": "ditto/… = Ditto LMDM (Apache-2.0); joyvasa/… = JoyVASA (MIT code)."})),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "Ditto: DDIM steps (10 is 5x faster, "
                                                                                "a little rougher). JoyVASA always "
                                                                                "uses its 50."}),
            "guidance_scale": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.1,
                                         "tooltip": "How strongly the motion follows the audio (both models "
                                                    "were shown with 2)."}),
            "seed": specs.seed("The same seed gives the same motion."),
            "pose_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                        "tooltip": "Scale of the head motion (0 = the portrait's pose)."}),
            "expression_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                              "tooltip": "Scale of the expression (mouth, eyes) motion."}),
            "lip_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "Scale of the mouth motion (1 = as generated)."}),
            "emotion": (list(EMOTIONS), {"default": "Neutral", "tooltip": "Ditto only: the emotion to show."}),
        },
        "optional": {
            "eye_open": ("FLOAT", {"default": dit.DEFAULT_EYE_OPEN, "min": 0.0, "max": 2.0, "step": 0.05,
                                   "tooltip": "Ditto only: how open the portrait's eyes are, in Ditto's measure "
                                              "(three lid distances over the eye width; ~0.8 open)."}),
            "device": specs.device("Where the motion model runs."),
            "keep_model_loaded": specs.keep_loaded("the motion model"),
            "auto_download": specs.auto_download("missing motion-model weights"),
        },
    }

    def run(self, liveportrait, embeddings, portrait, checkpoint, steps, guidance_scale, seed, pose_strength,
            expression_strength, lip_strength, emotion, eye_open=dit.DEFAULT_EYE_OPEN, device="auto",
            keep_model_loaded=True, auto_download=True):
        source = liveportrait.source(portrait)
        with using(dit.CACHE_FAMILY, keep_model_loaded):
            motion = dit.generate_motion(embeddings, source, checkpoint, steps=steps, guidance=guidance_scale,
                                         seed=seed, pose_strength=pose_strength,
                                         expression_strength=expression_strength, lip_strength=lip_strength,
                                         emotion=emotion, eye_open=eye_open,
                                         device=device, download=auto_download, progress=progress("MotionDiT"))
        return (motion, float(motion.fps))


__all__ = ["AudioToEmbedding", "MotionDiT", "ProceduralMotion"]
