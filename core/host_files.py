"""Files in the host's folders (:data:`.host.HOST`): file names users give resolved inside the input
folders and never outside them, the files a combo widget lists, the next output path in the host's
naming scheme, and what saved files record about the graph that made them.

Shared by the ComfyUI nodes (``nodes/``) and the headless runner's stand-ins for ComfyUI's own
loaders and savers (``headless/builtins.py``), so both read and write files by the same rules.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from .errors import InputError
from .host import HOST
from .image import safe_join

__all__ = ["IMAGE_EXTENSIONS", "list_input_files", "resolve_input_file", "validate_input_file", "save_path",
           "file_metadata", "video_preview"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


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


def save_path(prefix: str, ext: str, temp: bool = False, width: int = 0, height: int = 0):
    """Next output file ``(path, subfolder, filename, type)`` in ComfyUI's naming scheme."""
    from .video import output_path

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
    meta: Dict[str, str] = {}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        meta[key] = json.dumps(value)
    return meta


def video_preview(filename: str, subfolder: str, kind: str) -> dict:
    """The ``ui`` entry with which ComfyUI shows a written video (as its own SaveVideo does)."""
    return {"images": [{"filename": filename, "subfolder": subfolder, "type": kind}], "animated": (True,)}
