"""``--set KEY.INPUT=VALUE``: editing a prompt's inputs from the command line."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

from ..core.errors import InputError
from .problems import describe_node
from .specs import ClassError, Prompt, Registry, input_specs
from .validation import wrap

__all__ = ["absolutize", "apply_overrides", "find_node", "override_dirs"]


def find_node(prompt: Prompt, key: str) -> str:
    """Resolve an override key: a node id, else a unique title, else a unique class_type."""
    if key in prompt:
        return key
    for what, matches in (
        ("title", [n for n, node in prompt.items() if (node.get("_meta") or {}).get("title") == key]),
        ("class_type", [n for n, node in prompt.items() if node.get("class_type") == key]),
    ):
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InputError(f"{what} '{key}' is ambiguous: it matches nodes {', '.join(matches)}; "
                             "use the node id instead")
    known = ", ".join(describe_node(n, node.get("class_type"), (node.get("_meta") or {}).get("title"))
                      for n, node in list(prompt.items())[:30])
    raise InputError(f"no node has the id, title or class_type '{key}' (nodes: {known})")


def _declared_names(registry: Optional[Registry], node: dict) -> List[str]:
    """Inputs an override may set: those the class declares, else those the node has."""
    cls = (registry or {}).get(node.get("class_type"))
    if cls is not None:
        try:
            return [spec.name for spec in input_specs(cls)]
        except ClassError:
            pass
    return list(node.get("inputs") or {})


def _parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, null, "quoted"), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(prompt: Prompt, overrides: Sequence[str], *,
                    registry: Optional[Registry] = None) -> Prompt:
    """Return a deep copy of ``prompt`` with ``KEY.INPUT=VALUE`` overrides applied.

    KEY is a node id, a node title (``_meta.title``, exact) or a class_type unique in
    the graph; it may contain dots (the input name is after the last dot before the
    first ``=``). VALUE is parsed as JSON when possible, else kept as a string; lists
    are stored as ``{"__value__": [...]}`` so they stay literals. Overriding a linked
    input replaces the link. The input must already be in the node's inputs, or, when
    ``registry`` is given, be declared by the node's class. Errors raise
    :class:`~core.errors.InputError`.
    """
    result = copy.deepcopy(prompt)
    for text in overrides:
        target, sep, raw_value = text.partition("=")
        key, dot, name = target.strip().rpartition(".")
        if not sep or not dot or not key or not name:
            raise InputError(f"override {text!r} is not of the form NODE.INPUT=VALUE "
                             "(NODE: node id, title or class_type)")
        node_id = find_node(result, key)
        node = result[node_id]
        inputs = node.setdefault("inputs", {})
        if name not in inputs:
            declared = _declared_names(registry, node)
            if name not in declared:
                raise InputError(f"override {text!r}: {describe_node(node_id, node.get('class_type'))} "
                                 f"has no input '{name}' (inputs: {', '.join(declared) or 'none'})")
        inputs[name] = wrap(_parse_value(raw_value))
    return result


def _override_file(item: str) -> Optional[Path]:
    """The file an override ``KEY.INPUT=VALUE`` names by path (with a slash), if it exists."""
    _, eq, value = item.partition("=")
    value = value.strip().strip('"')
    if eq and value and ("/" in value or os.sep in value) and Path(value).expanduser().is_file():
        return Path(value).expanduser().resolve()
    return None


def override_dirs(overrides: List[str]) -> List[Path]:
    """Folders of files named on the command line: they become extra input roots, so
    ``--set portrait.image=/photos/me.jpg`` works while workflow files stay confined."""
    return [f.parent for f in map(_override_file, overrides) if f is not None]


def absolutize(overrides: List[str]) -> List[str]:
    """File paths in overrides made absolute (the input roots are absolute too)."""
    out = []
    for item in overrides:
        f = _override_file(item)
        out.append(f"{item.partition('=')[0]}={json.dumps(str(f))}" if f is not None else item)
    return out
