"""Exception types shared by the whole pack.

Every error a user can cause derives from :class:`TalkingHeadError`, so the headless
runner and the nodes can show its message as is (no traceback needed to understand it).
"""


class TalkingHeadError(Exception):
    """Base class for errors with a message meant for the user."""


class InputError(TalkingHeadError, ValueError):
    """Bad user input: missing or unreadable file, unsafe name, empty audio, no face..."""


class NonFiniteAudioError(InputError):
    """A decoded file holds NaN/inf samples (its own type, so that a caller which treats an unusable
    audio track as "no audio", like the headless LoadVideo, still refuses this one)."""


class WeightsMissingError(TalkingHeadError, FileNotFoundError):
    """A model file is not on disk and could not (or may not) be downloaded."""


class CheckpointError(TalkingHeadError):
    """A model file exists but is corrupt, unsafe, or does not match the model."""


class NonFiniteOutputError(TalkingHeadError):
    """A model produced NaN/inf from finite inputs (an overflow, usually in fp16)."""


class Cancelled(TalkingHeadError):
    """The user cancelled the run (Ctrl-C headless, the cancel button in ComfyUI)."""


class MissingDependencyError(TalkingHeadError):
    """An optional package a chosen setting needs is not installed."""


class FramesTooLargeError(TalkingHeadError):
    """A whole video asked for as one IMAGE batch would not fit in the free memory."""


# The pack is imported under its install folder's name, so the classes' real module is something like
# "/home/me/ComfyUI/custom_nodes/ComfyUI-Talking Head.core.errors", and ComfyUI shows an error's type as
# "<module>.<class>". A short fixed name reads as what it is, wherever the pack is installed.
for _cls in (TalkingHeadError, InputError, NonFiniteAudioError, WeightsMissingError, CheckpointError,
             NonFiniteOutputError, Cancelled, MissingDependencyError, FramesTooLargeError):
    _cls.__module__ = "TalkingHead"
del _cls
