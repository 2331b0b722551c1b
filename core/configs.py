"""Shipped model configurations: ``configs/<name>.json`` beside a model family's code.

Every family keeps its presets in a ``configs`` folder next to its modules (LivePortrait's
``models.yaml`` sizes and the tiny parity fixture, FOM's ``vox-256``, JoyVASA's HuBERT config)
and reads them through :func:`load_preset`::

    load_preset(__file__, "vox-256")            # from core/fom/load.py: core/fom/configs/vox-256.json
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Union

PathLike = Union[str, "os.PathLike[str]"]


def config_dir(package_file_or_dir: PathLike) -> Path:
    """The ``configs`` folder of a family: beside ``package_file_or_dir`` when it is a file (a
    module's ``__file__``), inside it when it is a folder."""
    where = Path(package_file_or_dir).resolve()
    return (where if where.is_dir() else where.parent) / "configs"


def list_presets(package_file_or_dir: PathLike) -> List[str]:
    """The preset names (``configs/*.json`` without the extension), sorted."""
    folder = config_dir(package_file_or_dir)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_preset(package_file_or_dir: PathLike, name: str) -> dict:
    """The parsed ``configs/<name>.json`` of the family at ``package_file_or_dir`` (a fresh dict on
    every call, so callers may change it). An unknown name is a :class:`ValueError` that lists the
    shipped ones."""
    folder = config_dir(package_file_or_dir)
    path = folder / f"{name}.json"
    if not name or Path(name).name != name or not path.is_file():
        known = ", ".join(list_presets(folder.parent)) or "none"
        raise ValueError(f"no shipped config {name!r} in {folder} (known: {known})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"the shipped config {path} is not valid JSON: {exc}") from None


__all__ = ["config_dir", "list_presets", "load_preset"]
