"""The presentation of a shipped workflow, kept beside its API file in ``NAME.meta.json`` (every
top-level key of an API-format prompt is a node id to ComfyUI, so groups and notes cannot live
there): :func:`meta_path`, :func:`load_meta`, :func:`check_meta` (the keys and their rules), and
:func:`note_height`. ``tools/layout.py`` lays a graph out with it.

Authoring only: ``run.py convert`` and ``tools/make_workflows.py`` use it, running a workflow does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..core.errors import InputError
from ..headless.problems import GraphError, Problem
from ..headless.specs import Prompt
from ..headless.ui_format import read_json

__all__ = ["Meta", "GroupMeta", "NoteMeta", "meta_path", "load_meta", "check_meta", "note_height",
           "GROUP_COLORS", "NOTE_PLACES", "NOTE_MIN_HEIGHT", "NODE_WIDTH", "NOTE_WIDTH", "GROUP_FONT_SIZE"]

NODE_WIDTH = 320           # a node's width, and a note's inside a group
NOTE_WIDTH = 420           # notes above, below or beside the graph
GROUP_FONT_SIZE = 24       # LiteGraph.DEFAULT_GROUP_FONT
#: litegraph's group colours (LGraphCanvas.node_colors[*].groupcolor), by name
GROUP_COLORS = {
    "red": "#A88", "brown": "#b06634", "green": "#8A8", "blue": "#88A", "pale_blue": "#3f789e",
    "cyan": "#8AA", "purple": "#a1309b", "yellow": "#b58b2a", "black": "#444",
}
NOTE_PLACES = ("top", "bottom", "left", "right")
#: the frontend grows a Note node to at least this body height when it loads it
NOTE_MIN_HEIGHT = 88
_META_KEYS = frozenset({"groups", "notes", "columns", "positions"})
_GROUP_KEYS = frozenset({"title", "nodes", "color", "font_size"})
_NOTE_KEYS = frozenset({"text", "title", "position", "column", "width", "height", "pos", "id"})


@dataclass
class GroupMeta:
    """A checked group: its title, member node ids (in order), colour (#hex) and title font size."""

    title: str
    nodes: List[str]
    color: str
    font_size: int


@dataclass
class NoteMeta:
    """A checked Note node and where it goes."""

    id: int
    text: str
    title: str
    place: str                     # one of NOTE_PLACES, or "group"
    group: Optional[str] = None    # the group title when place == "group"
    column: int = 0                # column offset inside the group
    width: int = NOTE_WIDTH
    height: Optional[int] = None
    pos: Optional[Tuple[float, float]] = None


@dataclass
class Meta:
    """A workflow's checked presentation (what :func:`check_meta` returns)."""

    groups: List[GroupMeta] = field(default_factory=list)
    notes: List[NoteMeta] = field(default_factory=list)
    positions: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    columns: Dict[str, int] = field(default_factory=dict)


def meta_path(workflow: Union[str, Path]) -> Path:
    """The metadata sidecar of a workflow file: ``NAME.api.json`` / ``NAME.json`` -> ``NAME.meta.json``."""
    workflow = Path(workflow)
    name = workflow.name
    for suffix in (".api.json", ".json"):
        if name.endswith(suffix):
            return workflow.with_name(name[:-len(suffix)] + ".meta.json")
    return workflow.with_name(name + ".meta.json")


def load_meta(path: Union[str, Path]) -> dict:
    """Read a workflow metadata file (JSON object); see :func:`check_meta` for its keys."""
    path = Path(path)
    data = read_json(path, "workflow metadata")
    if not isinstance(data, dict):
        raise InputError(f"workflow metadata {path} must be a JSON object")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _point(value: Any) -> Optional[Tuple[float, float]]:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        return value[0], value[1]
    return None


def check_meta(meta: Any, prompt: Prompt) -> Meta:
    """Check a workflow's presentation metadata against its prompt; raise one :class:`GraphError`.

    The metadata is a JSON object, every key optional (keys starting with ``_`` or ``$`` are
    comments)::

        {"groups": [{"title": "inputs", "nodes": [1, 2], "color": "pale_blue", "font_size": 24}],
         "notes": [{"title": "About", "text": "...", "position": "top", "width": 420},
                   {"text": "...", "position": "group:inputs", "column": 0}],
         "columns": {"2": 1}, "positions": {"3": [900, 50]}}

    * ``groups``: each node in at most one group; ``color`` is a litegraph colour name
      (:data:`GROUP_COLORS`) or ``#hex``. Groups are laid out in the order given.
    * ``notes``: ``position`` is ``top``, ``bottom``, ``left``, ``right`` (a row or column of
      notes beside the graph) or ``group:TITLE`` (inside that group, under its nodes in the
      group's column ``column``, counted from its first one). ``width``/``height`` set the
      size (the height is estimated from the text when left out), ``pos`` an explicit
      position, ``id`` the node id (default: after the prompt's largest id).
    * ``columns``: the least column of a node (0 = leftmost); the nodes it feeds move right
      with it. Columns are dependency depths otherwise (every node right of its sources).
    * ``positions``: explicit ``[x, y]`` for nodes, after the automatic layout.
    """
    problems: List[Problem] = []

    def bad(message: str) -> None:
        problems.append(Problem(f"workflow metadata: {message}"))

    if not isinstance(meta, dict):
        raise GraphError("workflow metadata must be a JSON object")
    for key in meta:
        if key not in _META_KEYS and not str(key).startswith(("_", "$")):
            bad(f"unknown key '{key}' (expected {', '.join(sorted(_META_KEYS))})")
    result = Meta()
    grouped: Dict[str, str] = {}
    raw_groups = meta.get("groups", [])
    if not isinstance(raw_groups, list):
        bad("'groups' must be a list")
        raw_groups = []
    for i, group in enumerate(raw_groups):
        if not isinstance(group, dict) or not isinstance(group.get("title"), str) or not group["title"]:
            bad(f"group {i + 1} needs a 'title' (text)")
            continue
        title = group["title"]
        for key in group:
            if key not in _GROUP_KEYS and not str(key).startswith(("_", "$")):
                bad(f"group '{title}': unknown key '{key}'")
        if any(g.title == title for g in result.groups):
            bad(f"two groups are titled '{title}'")
        members = []
        raw_nodes = group.get("nodes", [])
        for node_id in raw_nodes if isinstance(raw_nodes, list) else [raw_nodes]:
            key = str(node_id)
            if isinstance(node_id, bool) or key not in prompt:
                bad(f"group '{title}' lists node {node_id!r}, which is not in the workflow")
            elif key in grouped:
                bad(f"node {key} is in two groups ('{grouped[key]}' and '{title}')")
            else:
                grouped[key] = title
                members.append(key)
        color = group.get("color", "pale_blue")
        if not isinstance(color, str) or not (color in GROUP_COLORS or color.startswith("#")):
            bad(f"group '{title}': color {color!r} is neither #hex nor one of {', '.join(GROUP_COLORS)}")
            color = "pale_blue"
        font_size = group.get("font_size", GROUP_FONT_SIZE)
        if not _is_number(font_size) or not 8 <= font_size <= 96:
            bad(f"group '{title}': font_size must be a number from 8 to 96")
            font_size = GROUP_FONT_SIZE
        result.groups.append(GroupMeta(title, members, GROUP_COLORS.get(color, color), int(font_size)))
    titles = {g.title for g in result.groups}
    raw_notes = meta.get("notes", [])
    if not isinstance(raw_notes, list):
        bad("'notes' must be a list")
        raw_notes = []
    used_ids = {int(n) for n in prompt if n.isdigit()}
    next_id = max(used_ids, default=0) + 1
    for i, note in enumerate(raw_notes):
        label = f"note {i + 1}"
        if not isinstance(note, dict) or not isinstance(note.get("text"), str):
            bad(f"{label} needs a 'text' (text)")
            continue
        for key in note:
            if key not in _NOTE_KEYS and not str(key).startswith(("_", "$")):
                bad(f"{label}: unknown key '{key}'")
        title = note.get("title", "Note")
        if not isinstance(title, str):
            bad(f"{label}: 'title' must be text")
            title = "Note"
        place, group = note.get("position", "top"), None
        if isinstance(place, str) and place.startswith("group:"):
            place, group = "group", place[len("group:"):]
            if group not in titles:
                bad(f"{label}: position 'group:{group}' names no group (groups: {', '.join(titles) or 'none'})")
        elif place not in NOTE_PLACES:
            bad(f"{label}: position {place!r} is not one of {', '.join(NOTE_PLACES)}, group:TITLE")
            place = "top"
        width = note.get("width", NODE_WIDTH if place == "group" else NOTE_WIDTH)
        height = note.get("height")
        column = note.get("column", 0)
        for key, value in (("width", width), ("height", height), ("column", column)):
            if value is not None and (not _is_number(value) or value < 0):
                bad(f"{label}: '{key}' must be a number >= 0")
        pos = note.get("pos")
        if pos is not None and _point(pos) is None:
            bad(f"{label}: 'pos' must be [x, y]")
        note_id = note.get("id")
        if note_id is None:
            while next_id in used_ids:
                next_id += 1
            note_id = next_id
        elif isinstance(note_id, bool) or not isinstance(note_id, int) or note_id in used_ids or note_id <= 0:
            bad(f"{label}: id {note_id!r} must be a positive integer that no other node uses")
            continue
        used_ids.add(note_id)
        if problems:
            continue
        result.notes.append(NoteMeta(note_id, note["text"], title, place, group, int(column), int(width),
                                      None if height is None else int(height), _point(pos)))
    raw_positions = meta.get("positions", {})
    if not isinstance(raw_positions, dict):
        bad("'positions' must be an object {node id: [x, y]}")
        raw_positions = {}
    for node_id, pos in raw_positions.items():
        if str(node_id) not in prompt:
            bad(f"'positions' names node {node_id}, which is not in the workflow")
        elif _point(pos) is None:
            bad(f"'positions' of node {node_id} must be [x, y]")
        else:
            result.positions[str(node_id)] = _point(pos)
    raw_columns = meta.get("columns", {})
    if not isinstance(raw_columns, dict):
        bad("'columns' must be an object {node id: column}")
        raw_columns = {}
    for node_id, column in raw_columns.items():
        if str(node_id) not in prompt:
            bad(f"'columns' names node {node_id}, which is not in the workflow")
        elif isinstance(column, bool) or not isinstance(column, int) or not 0 <= column <= 100:
            bad(f"'columns' of node {node_id} must be a whole number from 0 to 100")
        else:
            result.columns[str(node_id)] = column
    if problems:
        raise GraphError.from_problems(problems)
    return result


def note_height(text: str, width: float) -> int:
    """A body height that shows ``text`` without scrolling in the editor's note textarea
    (10 px Arial by default: about 5.5 units a character, 13 a line), rounded up to 10."""
    per_line = max(10, int((width - 16) / 5.5))
    lines = 0
    for paragraph in text.split("\n"):
        lines += max(1, -(-len(paragraph) // per_line))
    return max(NOTE_MIN_HEIGHT, int(-(-(lines * 13 + 24) // 10) * 10))

