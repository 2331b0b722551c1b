"""Shared helpers of the ComfyUI adapters: registration (with the finite-input guard every node gets), file-name
inputs, progress."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from ..core import checks
from ..core.errors import InputError
from ..core.host import HOST
from ..core.image import safe_join

PREFIX = "TalkingHead_"
CATEGORY = "TalkingHead"

#: the pack's own socket types (LoadPortrait's output, the motion producers', AudioToEmbedding's)
PORTRAIT_TYPE = "TALKINGHEAD_PORTRAIT"
MOTION_TYPE = "TALKINGHEAD_MOTION"
EMBEDS_TYPE = "TALKINGHEAD_AUDIO_EMBEDS"
#: socket type -> the :mod:`core.checks` kind its values are checked as (finite or refused)
FINITE_CHECKS = {"AUDIO": "audio", "IMAGE": "image", "FLOAT": "number", PORTRAIT_TYPE: "portrait",
                 MOTION_TYPE: "motion", EMBEDS_TYPE: "embeddings"}


class AnyType(str):
    """A socket type that connects to every other one.

    ComfyUI's server compares socket types with ``!=`` (a plain ``"*"`` is only a wildcard in the
    editor and fails validation on the server); this type is never unequal to anything.
    """

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


ANY = AnyType("*")

NODE_CLASS_MAPPINGS: Dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: Dict[str, str] = {}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".aac", ".mp4", ".webm", ".mkv", ".mov")


def register(name: str, display: str):
    """Class decorator: publish a node as ``<PREFIX><name>`` with a plain display name, its
    FUNCTION guarded by :func:`finite_guard`."""
    def wrap(cls):
        node_id = PREFIX + name
        cls.NODE_ID = node_id
        cls.DISPLAY_NAME = display
        finite_guard(cls)
        NODE_CLASS_MAPPINGS[node_id] = cls
        NODE_DISPLAY_NAME_MAPPINGS[node_id] = display
        return cls
    return wrap


def _checked_inputs(cls) -> Dict[str, str]:
    """``{input name: check kind}`` for the inputs whose socket type is in :data:`FINITE_CHECKS`.
    Read from INPUT_TYPES once per class (the types never change, only the combo choices)."""
    found = cls.__dict__.get("_FINITE_INPUTS")
    if found is None:
        spec = cls.INPUT_TYPES()
        found = {name: FINITE_CHECKS[decl[0]] for section in ("required", "optional")
                 for name, decl in spec.get(section, {}).items()
                 if isinstance(decl[0], str) and decl[0] in FINITE_CHECKS}
        cls._FINITE_INPUTS = found
    return found


def _arguments(signature: inspect.Signature, args, kwargs) -> Dict[str, object]:
    """The call's arguments by input name (``**optional`` spread out); {} when they do not bind
    (the call itself then fails with Python's own message)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return {}
    values = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            values.update(value)
        else:
            values[name] = value
    return values


def check_outputs(cls, result) -> None:
    """Refuse non-finite values among a node's outputs (by RETURN_TYPES), naming the node and output."""
    values = result.get("result", ()) if isinstance(result, dict) else result
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    for rtype, name, value in zip(cls.RETURN_TYPES, names, values or ()):
        kind = FINITE_CHECKS.get(rtype) if isinstance(rtype, str) else None
        if kind is not None:
            checks.require_finite_output(kind, value, f"{cls.DISPLAY_NAME}'s {name.lower()} output")


def finite_guard(cls):
    """Wrap the node's FUNCTION so that every AUDIO, IMAGE, FLOAT, portrait, motion and embeddings
    input is checked once as it enters (NaN/inf refused with a message naming the node and input),
    and, for nodes with ``CHECK_OUTPUTS = True`` (those whose models can overflow on finite input),
    the outputs as they leave. Done here rather than in each ``run`` so that no node can forget it;
    inside ComfyUI the values often come from other packs' nodes, which check nothing."""
    function = getattr(cls, cls.FUNCTION)
    if getattr(function, "_finite_guard", False):
        return cls
    signature = inspect.signature(function)

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        kinds = _checked_inputs(cls)
        for name, value in _arguments(signature, args, kwargs).items():
            if name in kinds:
                checks.require_finite(kinds[name], value, f"{cls.DISPLAY_NAME}'s {name} input")
        result = function(*args, **kwargs)
        if getattr(cls, "CHECK_OUTPUTS", False):
            check_outputs(cls, result)
        return result

    guarded._finite_guard = True
    setattr(cls, cls.FUNCTION, guarded)
    return cls


def list_input_files(extensions: Iterable[str]) -> List[str]:
    """Files directly in the input folders, for combo widgets (like ComfyUI's LoadImage; a name
    with a sub-folder, ``sub/face.png``, is still accepted when typed or sent through the API)."""
    exts = tuple(e.lower() for e in extensions)
    names = set()
    for root in HOST.input_dirs():
        root = Path(root)
        if root.is_dir():
            names.update(p.name for p in root.iterdir()
                         if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))
    return sorted(names)


def _strip_annotation(name: str) -> Tuple[str, str]:
    """ComfyUI's ``"face.png [output]"`` annotations -> (name, folder type)."""
    for kind in ("input", "output", "temp"):
        tag = f" [{kind}]"
        if name.endswith(tag):
            return name[: -len(tag)], kind
    return name, "input"


def resolve_input_file(name: str, what: str = "file") -> Path:
    """A user-given file name -> an existing file inside the input folders (never outside)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"no {what} was chosen")
    name, kind = _strip_annotation(name.strip())
    roots = {"input": list(HOST.input_dirs()), "output": [HOST.output_dir()], "temp": [HOST.temp_dir()]}[kind]
    if Path(name).is_absolute():  # allowed only when it lies inside one of the folders
        target = Path(name).resolve()
        for root in roots:
            root = Path(root).resolve()
            if root in target.parents:
                name = target.relative_to(root).as_posix()
                roots = [root]
                break
    for root in roots:
        path = safe_join(root, name)  # raises on absolute paths, '..' and escapes
        if path.is_file():
            return path
    raise InputError(f"{what} '{name}' was not found in the {kind} folder ({', '.join(str(r) for r in roots)})")


def validate_input_file(name: str, what: str = "file"):
    """For VALIDATE_INPUTS: True, or the error message ComfyUI shows before running."""
    try:
        resolve_input_file(name, what)
    except InputError as exc:
        return str(exc)
    return True


def progress(label: str = ""):
    """The host's progress callback for one loop of a node (a ComfyUI bar, a terminal bar or None)."""
    return HOST.progress(label)


def video_preview(filename: str, subfolder: str, kind: str) -> dict:
    """The ``ui`` entry with which ComfyUI shows a written video (as its own SaveVideo does)."""
    return {"images": [{"filename": filename, "subfolder": subfolder, "type": kind}], "animated": (True,)}


def save_path(prefix: str, ext: str, temp: bool = False, width: int = 0, height: int = 0):
    """Next output file ``(path, subfolder, filename, type)`` in ComfyUI's naming scheme."""
    from ..core.video import output_path

    folder = HOST.temp_dir() if temp else HOST.output_dir()
    if "\x00" in str(prefix):  # before the host's own naming, which would fail on it with a bare ValueError
        raise InputError(f"filename_prefix {prefix!r} contains a NUL byte and is refused")
    if HOST.save_path is not None:
        path, sub, name = HOST.save_path(folder, prefix, ext, width, height)
    else:
        path, sub, name = output_path(folder, prefix, ext)
    return path, sub, name, "temp" if temp else "output"


def file_metadata(prompt, extra_pnginfo) -> Dict[str, str]:
    """The graph and UI workflow embedded in saved files, like ComfyUI's own save nodes."""
    import json

    meta: Dict[str, str] = {}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        meta[key] = json.dumps(value)
    return meta
