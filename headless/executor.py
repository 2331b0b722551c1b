"""Running a validated API-format prompt in this process, as ComfyUI's executor does.

Like ComfyUI, only the nodes upstream of an output node run, every node runs once, in dependency
order, and node functions run under :func:`torch.inference_mode`. Validation is
:mod:`.validation`'s (ComfyUI 0.8.0's rules, with the differences listed there).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..core.errors import Cancelled, TalkingHeadError
from ..core.host import HOST
from .problems import describe_node
from .specs import Prompt, Registry, hidden_inputs, return_types
from .validation import Step, plan

__all__ = ["execute", "saved_files"]


def _hidden_value(kind: str, node_id: str, prompt: Prompt, extra_pnginfo: Optional[dict]) -> Any:
    if kind == "UNIQUE_ID":
        return node_id
    if kind == "PROMPT":
        return prompt
    if kind == "EXTRA_PNGINFO":
        return extra_pnginfo if extra_pnginfo is not None else {}
    return None  # DYNPROMPT and host-only values (API keys...) do not exist headless


def _gather_inputs(step: Step, results: Dict[str, tuple], prompt: Prompt,
                   extra_pnginfo: Optional[dict]) -> Dict[str, Any]:
    kwargs = dict(step.literals)
    for name, (source, index) in step.links.items():
        produced = results[source]
        if index >= len(produced):
            raise step.error(f"input '{name}' needs output {index} of node {source}, "
                             f"which returned only {len(produced)} value(s)")
        kwargs[name] = produced[index]
    for name, kind in hidden_inputs(step.cls).items():
        kwargs[name] = _hidden_value(kind, step.node_id, prompt, extra_pnginfo)
    return kwargs


def _split_result(step: Step, raw: Any) -> Tuple[tuple, Optional[dict]]:
    """A node's return value -> ``(outputs tuple, ui dict or None)``."""
    ui = None
    declared = len(return_types(step.cls))
    if isinstance(raw, dict):
        if "expand" in raw:
            raise step.error("returned a node expansion, which the headless runner does not support")
        ui = raw.get("ui")
        if "result" not in raw:
            return (), ui
        raw = raw["result"]
    elif raw is None:
        return (), None
    if not isinstance(raw, (tuple, list)):
        raise step.error(f"returned {type(raw).__name__}, expected a tuple matching RETURN_TYPES")
    if len(raw) != declared:
        raise step.error(f"returned {len(raw)} value(s) but RETURN_TYPES declares {declared}")
    return tuple(raw), ui


def _run_step(step: Step, kwargs: Dict[str, Any]) -> Any:
    """Instantiate the class and call its FUNCTION; wrap failures in :class:`GraphError`."""
    try:
        with torch.inference_mode():
            return getattr(step.cls(), step.cls.FUNCTION)(**kwargs)
    except Cancelled:
        raise
    except TalkingHeadError as exc:
        raise step.error(str(exc)) from exc
    except Exception as exc:
        raise step.error(f"{type(exc).__name__}: {exc}") from exc


def execute(prompt: Prompt, registry: Registry, *, progress: Optional[Callable[..., None]] = None,
            on_node: Optional[Callable[[str, str, str, int, int], None]] = None,
            extra_pnginfo: Optional[dict] = None) -> Dict[str, Any]:
    """Validate and run an API-format prompt in this process.

    Only nodes upstream of output nodes run, once each, in dependency order (ties in
    prompt order). ``on_node(node_id, class_type, title, index, count)`` is called
    before each node with ``index`` counting from 1; ``progress(done, count)`` after
    each. Hidden inputs: UNIQUE_ID -> the node id, PROMPT -> ``prompt``, EXTRA_PNGINFO
    -> ``extra_pnginfo`` (or ``{}``), anything else (DYNPROMPT...) -> None.

    Returns ``{"outputs": {node_id: ui dict}, "results": {node_id: tuple}, "order": [ids]}``
    (``outputs`` only has nodes that returned a ``"ui"``). Raises :class:`GraphError`
    for invalid graphs and failing nodes (the node's exception is the ``__cause__``)
    and :class:`~core.errors.Cancelled` on Ctrl-C or when a node or callback cancels.
    """
    steps = plan(prompt, registry)
    results: Dict[str, tuple] = {}
    outputs: Dict[str, dict] = {}
    count = len(steps.order)
    step = None
    try:
        for index, node_id in enumerate(steps.order, start=1):
            step = steps.steps[node_id]
            if on_node is not None:
                on_node(node_id, step.class_type, step.title, index, count)
            kwargs = _gather_inputs(step, results, prompt, extra_pnginfo)
            results[node_id], ui = _split_result(step, _run_step(step, kwargs))
            if ui is not None:
                outputs[node_id] = ui
            if progress is not None:
                progress(index, count)
    except KeyboardInterrupt as exc:
        where = f" while running {describe_node(step.node_id, step.class_type, step.title)}" if step else ""
        raise Cancelled(f"cancelled by the user{where}") from exc
    return {"outputs": outputs, "results": results, "order": list(steps.order)}


def saved_files(outputs: Dict[str, dict]) -> List[Path]:
    """The files an :func:`execute` result's output nodes saved (their ``ui`` ``images``/``gifs`` entries), where
    the host's folders put them: ``type: temp`` (previews) under ``HOST.temp_dir()``, the rest under
    ``HOST.output_dir()``."""
    files = []
    for ui in outputs.values():
        for item in (ui or {}).get("images", []) + (ui or {}).get("gifs", []):
            if isinstance(item, dict) and "filename" in item:
                base = HOST.temp_dir() if item.get("type") == "temp" else HOST.output_dir()
                files.append(base / item.get("subfolder", "") / item["filename"])
    return files
