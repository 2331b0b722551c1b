"""Running a workflow saved by the editor: the UI (litegraph) format read as an API-format prompt
(:func:`ui_to_api`), and any workflow file or JSON value read as one (:func:`load_workflow`,
:func:`as_api`). The other direction, which lays a graph out for the editor, is authoring work and
lives in ``tools/layout.py``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Tuple, Union

from ..core.errors import InputError
from .problems import GraphError, Problem
from .specs import CONTROL_VALUES, ClassError, InputSpec, Prompt, Registry, display_name, input_specs
from .validation import wrap

__all__ = ["Upgrader", "ui_to_api", "as_api", "load_workflow", "declared_inputs", "read_json", "MODE_MUTED", "MODE_BYPASS"]

#: litegraph node modes with a meaning for conversion
MODE_MUTED = 2
MODE_BYPASS = 4
#: the editor's comment nodes, which are not part of the prompt
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})


def _ui_links(workflow: dict) -> Dict[Any, Tuple[str, int, Any]]:
    """link id -> (source node id, source slot, type); accepts list rows and object rows."""
    table = {}
    for row in workflow.get("links") or []:
        if isinstance(row, dict):
            table[row["id"]] = (str(row["origin_id"]), row["origin_slot"], row.get("type"))
        else:
            table[row[0]] = (str(row[1]), row[2], row[5] if len(row) > 5 else None)
    return table


def _bypass_link(node: dict, slot: int, link_type: Any) -> Any:
    """The link a bypassed node passes through for output ``slot``, or None.

    As in the editor: the input at the same slot when its type matches the output's,
    else the first linked input of that type.
    """
    outputs = node.get("outputs") or []
    wanted = outputs[slot].get("type") if slot < len(outputs) else link_type
    inputs = node.get("inputs") or []
    candidates = ([inputs[slot]] if slot < len(inputs) else []) + inputs
    for entry in candidates:
        if entry.get("type") == wanted and entry.get("link") is not None:
            return entry["link"]
    return None


def _resolve_ui_link(link_id: Any, nodes: Dict[str, dict], links: Dict[Any, tuple]) -> Optional[tuple]:
    """Follow a UI link through reroutes and bypassed nodes.

    Returns ``("link", node_id, slot)``, ``("value", literal)`` for a PrimitiveNode, or
    None when the link leads nowhere (muted or missing node, unmatched bypass).
    """
    seen = set()
    while link_id is not None and link_id in links and link_id not in seen:
        seen.add(link_id)
        source_id, slot, link_type = links[link_id]
        source = nodes.get(source_id)
        if source is None:
            return None
        kind, mode = source.get("type"), source.get("mode", 0)
        if kind == "PrimitiveNode":
            values = source.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if kind == "Reroute":
            link_id = ((source.get("inputs") or [{}])[0]).get("link")
        elif mode == MODE_BYPASS:
            link_id = _bypass_link(source, slot, link_type)
        elif mode == MODE_MUTED or kind in NOTE_TYPES:
            return None
        else:
            return ("link", source_id, slot)
    return None


def _ui_widget_values(node: dict, specs: List[InputSpec]) -> Dict[str, Any]:
    """Map a UI node's ``widgets_values`` (list or dict) onto its widget inputs.

    The frontend saves one value per widget in the order it created them: the declared widget
    inputs in ``INPUT_TYPES`` order, a seed-like INT followed by its "control after generate"
    value (skipped here), then the widgets an upload option adds (the upload button, the audio
    player), which come after every declared widget and are ignored.
    """
    widgets = [s for s in specs if s.is_widget]
    saved = node.get("widgets_values")
    if isinstance(saved, dict):
        return {s.name: saved[s.name] for s in widgets if s.name in saved}
    if not isinstance(saved, list):
        return {}
    values, pos = {}, 0
    for spec in widgets:
        if pos >= len(saved):
            break
        values[spec.name] = saved[pos]
        pos += 1
        if spec.has_control and pos < len(saved) and saved[pos] in CONTROL_VALUES:
            pos += 1
    return values


def ui_to_api(workflow: dict, registry: Registry) -> Prompt:
    """Convert a UI-format (litegraph) workflow to an API-format prompt.

    Muted nodes and notes are dropped; bypassed nodes are removed and their consumers
    fed from the bypassed node's matching input; Reroutes are followed to their source
    and PrimitiveNode values become literals. Widget values are read positionally
    (see :func:`_ui_widget_values`), and a linked input overrides its widget value.
    Node ids become strings; ``_meta.title`` is the node's title, else the class's
    ``DISPLAY_NAME``, else its type. Unknown node types raise :class:`GraphError`.
    """
    nodes = {str(n["id"]): n for n in workflow.get("nodes") or []}
    links = _ui_links(workflow)
    prompt: Prompt = {}
    problems: List[Problem] = []
    for node_id, node in nodes.items():
        class_type = node.get("type")
        if class_type in ("Reroute", "PrimitiveNode") or class_type in NOTE_TYPES \
                or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS):
            continue
        cls = registry.get(class_type)
        if cls is None:
            problems.append(Problem(f"unknown node type '{class_type}' (maybe the custom node pack "
                                    "that provides it is missing or failed to load)", node_id, class_type))
            continue
        try:
            specs = input_specs(cls)
        except ClassError as exc:
            problems.append(Problem(str(exc), node_id, class_type))
            continue
        inputs = {name: wrap(value) for name, value in _ui_widget_values(node, specs).items()}
        declared = {s.name for s in specs}
        for entry in node.get("inputs") or []:
            name = (entry.get("widget") or {}).get("name") or entry.get("name")
            source = _resolve_ui_link(entry.get("link"), nodes, links) if name in declared else None
            if source is not None:
                inputs[name] = [source[1], source[2]] if source[0] == "link" else wrap(source[1])
        prompt[node_id] = {
            "class_type": class_type,
            "inputs": {s.name: inputs[s.name] for s in specs if s.name in inputs},
            "_meta": {"title": node.get("title") or display_name(cls, class_type)},
        }
    if problems:
        raise GraphError.from_problems(problems)
    return prompt


def declared_inputs(prompt: Prompt, registry: Registry) -> Prompt:
    """``prompt`` with only the inputs each node's class declares: without the values ComfyUI's frontend
    exports for its own preview widgets (``audioUI``, ``video-preview``), which the server and this
    runner ignore."""
    out = {}
    for node_id, node in prompt.items():
        names = {s.name for s in input_specs(registry[node["class_type"]])}
        out[node_id] = {**node, "inputs": {k: v for k, v in (node.get("inputs") or {}).items() if k in names}}
    return out


def read_json(path: Path, what: str) -> Any:
    """A JSON file's value; an unreadable or invalid file raises :class:`~core.errors.InputError` naming ``what``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from exc


class Upgrader(Protocol):
    """What a node pack offers for workflows saved by its older versions (the pack's ``nodes/legacy.py``):
    the registry as it was, for UI files whose widget values are stored by position, and a rewrite of an
    API prompt into today's graph, with one line per change."""

    def is_legacy_ui(self, workflow: dict) -> bool: ...

    def legacy_registry(self, registry: Registry) -> Registry: ...

    def upgrade_api(self, prompt: Prompt) -> Tuple[Prompt, List[str]]: ...


def as_api(data: Any, registry: Registry, source: str = "workflow", upgrader: Optional[Upgrader] = None,
           notes: Optional[List[str]] = None) -> Prompt:
    """Any workflow JSON value -> API format: UI format (has a "nodes" list) is converted,
    a ``{"prompt": {...}}`` request body is unwrapped, API format is returned as is. With an
    ``upgrader``, a workflow saved by an older version of the pack is read as it was saved and
    rewritten to today's nodes; what changed is appended to ``notes``."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        legacy = upgrader is not None and upgrader.is_legacy_ui(data)
        prompt = ui_to_api(data, upgrader.legacy_registry(registry) if legacy else registry)
    else:
        if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
            data = data["prompt"]
        if not isinstance(data, dict) or not data or not all(
                isinstance(node, dict) and "class_type" in node for node in data.values()):
            raise InputError(f"{source} is not a ComfyUI workflow (neither the UI format with a \"nodes\" "
                             "list nor the API format {node_id: {\"class_type\": ..., \"inputs\": ...}})")
        prompt = data
    if upgrader is not None:
        prompt, changes = upgrader.upgrade_api(prompt)
        if notes is not None:
            notes.extend(changes)
    return prompt


def load_workflow(path: Union[str, Path], registry: Registry, upgrader: Optional[Upgrader] = None,
                  notes: Optional[List[str]] = None) -> Prompt:
    """Read a workflow file (UI format, API format or a ``{"prompt": ...}`` body) as API format
    (see :func:`as_api` for ``upgrader`` and ``notes``)."""
    path = Path(path)
    data = read_json(path, "workflow file")
    return as_api(data, registry, source=f"workflow file {path}", upgrader=upgrader, notes=notes)
