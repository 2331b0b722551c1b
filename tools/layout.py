"""API format -> UI format: laying a workflow out for the editor (:func:`api_to_ui`).

Authoring work, for ``run.py convert`` and ``tools/make_workflows.py``, which make the shipped
``workflows/NAME.json`` files; running a workflow needs only the other direction
(``headless/ui_format.py``). Nodes go in columns by dependency depth; the groups, notes and explicit
positions of the workflow's ``NAME.meta.json`` (:mod:`.workflow_meta`) are placed with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..headless.problems import BadValue, GraphError, Problem
from ..headless.specs import (MISSING, ClassError, InputSpec, Prompt, Registry, input_specs, node_title,
                              return_types, type_name)
from ..headless.validation import cycle_problem, links_of, parse_link, topo_order, unwrap
from .workflow_meta import (NODE_WIDTH, NOTE_MIN_HEIGHT, NOTE_PLACES, GroupMeta, Meta, check_meta,
                            note_height)

__all__ = ["api_to_ui", "NOTE_COLOR", "NOTE_BGCOLOR"]

# Layout units are litegraph canvas units. A node's ``pos`` is the top-left corner of its body;
# the editor draws its title bar above that, so a node occupies
# ``[x, y - _TITLE_HEIGHT, width, height + _TITLE_HEIGHT]``.
_ORIGIN = 50
_COLUMN_WIDTH = 420        # column pitch: node width + room for the links
_ROW_GAP = 40              # between a node's bottom and the next node's title bar
_TITLE_HEIGHT = 30         # LiteGraph.NODE_TITLE_HEIGHT
_SLOT_HEIGHT = 24
_GROUP_PADDING = 20        # around a group's members (the editor's "fit group to nodes" uses 10)
_GROUP_GAP = 50            # between two stacked groups
_NOTE_GAP = 60             # between those notes and the graph
#: extra body height for the previews that upload widgets add (image/video preview, audio player)
_PREVIEW_HEIGHT = {"image": 220, "video": 220, "audio": 60}
#: the values ComfyUI's frontend (1.35) saves for the widgets an upload option adds, by upload kind
_UPLOAD_WIDGETS = {"image": ["image"], "video": ["image"], "audio": [None, None]}
#: the colours the editor gives Note nodes (LGraphCanvas.node_colors.yellow)
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"


def api_to_ui(prompt: Prompt, registry: Registry, meta: Optional[dict] = None,
              sizes: Optional[Dict[str, Sequence[float]]] = None) -> dict:
    """Build a UI-format workflow from an API-format prompt (inverse of
    :func:`headless.ui_format.ui_to_api`).

    Nodes are laid out left to right in columns by dependency depth, stacked within a column.
    Socket inputs get ``inputs`` entries (linked widgets too, with ``widget``), widgets get
    positional ``widgets_values`` (with "fixed" after seed-like INTs and the upload value after
    upload combos; linked or missing widgets get a placeholder: the default, else a combo's
    first choice, else 0/0.0/False/""). Node ids must be numeric; literals for socket inputs,
    undeclared inputs, bad links, unknown types and cycles raise :class:`GraphError`.
    ``ui_to_api(api_to_ui(p)) == p`` holds when every node of ``p`` has a ``_meta.title`` and
    gives every widget input (a missing widget comes back with its placeholder value).

    ``meta`` is the optional presentation of the workflow (see :func:`.workflow_meta.check_meta`;
    shipped workflows keep it in a ``NAME.meta.json`` sidecar, see :func:`.workflow_meta.meta_path`):
    groups, which are laid out as blocks (a group's members share a band of rows across the group's
    columns) and framed with padding, Note nodes (above, below, beside the graph or inside a group)
    and explicit node positions. Groups and notes do not change the prompt: ``ui_to_api`` ignores
    them. ``sizes`` (node id -> (width, height)) are the node sizes the frontend
    computes (``tools/make_workflows.py`` measures them); a node is laid out at least that large.
    """
    problems: List[Problem] = []
    specs: Dict[str, List[InputSpec]] = {}
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        if not str(node_id).isdigit():
            problems.append(Problem("the UI format needs numeric node ids", str(node_id), class_type))
        elif class_type not in registry:
            problems.append(Problem(f"unknown node type '{class_type}'", str(node_id), class_type))
        else:
            try:
                specs[str(node_id)] = input_specs(registry[class_type])
            except ClassError as exc:
                problems.append(Problem(str(exc), str(node_id), class_type))
    if problems:
        raise GraphError.from_problems(problems)
    prompt = {str(k): v for k, v in prompt.items()}
    layout_meta = check_meta(meta, prompt) if meta is not None else Meta()
    order, cycle = topo_order({n: [src for src, _ in links_of(node)] for n, node in prompt.items()})
    if cycle:
        raise GraphError.from_problems([cycle_problem(cycle)])
    builder = _UiBuilder(prompt, registry)
    for node_id in order:
        builder.add(node_id, specs[node_id])
    if builder.problems:
        raise GraphError.from_problems(builder.problems)
    for node_id, size in (sizes or {}).items():  # sizes measured in the frontend, where known
        node = builder.nodes.get(str(node_id))
        if node is not None:
            node["size"] = [max(node["size"][0], math.ceil(size[0])), max(node["size"][1], math.ceil(size[1]))]
    notes, groups = _Layout(builder, layout_meta).run()
    nodes = list(builder.nodes.values()) + notes
    return {
        "last_node_id": max(n["id"] for n in nodes),
        "last_link_id": len(builder.links),
        "nodes": sorted(nodes, key=lambda n: n["id"]),
        "links": builder.links,
        "groups": groups,
        "config": {},
        "extra": {},
        "version": 0.4,
    }


class _UiBuilder:
    """Accumulates UI nodes and the link table; nodes must be added sources first.

    Nodes get their size and their sources here; :class:`_Layout` places them."""

    def __init__(self, prompt: Prompt, registry: Registry) -> None:
        self.prompt = prompt
        self.registry = registry
        self.nodes: Dict[str, dict] = {}
        self.links: List[list] = []
        self.problems: List[Problem] = []
        self.sources: Dict[str, List[str]] = {}

    def add(self, node_id: str, specs: List[InputSpec]) -> None:
        node = self.prompt[node_id]
        class_type = node["class_type"]
        cls = self.registry[class_type]
        title = node_title(node, cls, class_type)
        given = dict(node.get("inputs") or {})
        inputs, widgets, sources, preview, uploads = [], [], [], 0, []
        for spec in specs:
            value = given.pop(spec.name, MISSING)
            if isinstance(value, list):
                link_id, source = self._link(node_id, len(inputs), value, class_type, title, spec)
                if source is not None:
                    sources.append(source)
                entry = {"name": spec.name, "type": spec.type_name, "link": link_id}
                if spec.is_widget:
                    entry["widget"] = {"name": spec.name}
                inputs.append(entry)
                value = MISSING
            elif not spec.is_widget:
                if value is not MISSING:
                    self.problems.append(Problem(f"input '{spec.name}' ({spec.type_name}) has a literal value, "
                                                 "which the UI format cannot hold", node_id, class_type, title))
                inputs.append({"name": spec.name, "type": spec.type_name, "link": None})
            if spec.is_widget:
                widgets.append(spec.placeholder() if value is MISSING else unwrap(value))
                if spec.has_control:
                    widgets.append("fixed")
                elif spec.upload_value:
                    uploads.extend(_UPLOAD_WIDGETS[spec.upload_value])
                    preview = max(preview, _PREVIEW_HEIGHT.get(spec.upload_value, 0))
        widgets.extend(uploads)  # the frontend adds these after every declared widget
        for name, value in given.items():  # literals the class does not declare are ignored, as ComfyUI does
            if isinstance(value, list):      # (the frontend adds its preview widgets' values: audioUI, ...)
                self.problems.append(Problem(f"input '{name}' is not declared by the class", node_id,
                                             class_type, title))
        outputs = [{"name": self._output_name(cls, i, rtype), "type": type_name(rtype), "links": [], "slot_index": i}
                   for i, rtype in enumerate(return_types(cls))]
        self.sources[node_id] = list(dict.fromkeys(sources))
        # generous next to the editor's own computeSize (20 per slot row, 24 per widget), which
        # grows a node that is saved smaller than that when the workflow is loaded
        height = 46 + _SLOT_HEIGHT * (max(len(inputs), len(outputs)) + len(widgets)) + preview
        self.nodes[node_id] = {
            "id": int(node_id), "type": class_type, "pos": [_ORIGIN, _ORIGIN],
            "size": [NODE_WIDTH, height], "flags": {}, "order": len(self.nodes), "mode": 0,
            "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": class_type},
            "widgets_values": widgets, "title": title,
        }

    @staticmethod
    def _output_name(cls: type, index: int, rtype: Any) -> str:
        names = getattr(cls, "RETURN_NAMES", None) or ()
        return names[index] if index < len(names) else type_name(rtype)

    def _link(self, node_id: str, slot: int, value: list, class_type: str, title: str,
              spec: InputSpec) -> Tuple[Optional[int], Optional[str]]:
        """Add a link row for ``value``; return ``(link id, source id)`` or ``(None, None)`` if bad."""
        try:
            source, index = parse_link(value)
            if source not in self.nodes:
                raise BadValue(f"input '{spec.name}' is linked to node {source}, which is not in the workflow")
            outputs = self.nodes[source]["outputs"]
            if not 0 <= index < len(outputs):
                raise BadValue(f"input '{spec.name}' is linked to output {index} of node {source}, "
                                f"which has {len(outputs)} output(s)")
        except BadValue as exc:
            self.problems.append(Problem(str(exc), node_id, class_type, title))
            return None, None
        link_id = len(self.links) + 1
        outputs[index]["links"].append(link_id)
        self.links.append([link_id, int(source), index, int(node_id), slot, outputs[index]["type"]])
        return link_id, source


@dataclass
class _Item:
    """Something the layout places: a prompt node or a note (``key`` "n:ID" / "note:ID")."""

    key: str
    width: float
    height: float          # body height; the title bar adds _TITLE_HEIGHT above
    column: int = 0
    rank: int = 0          # prompt or meta order, for ties
    x: float = 0.0
    top: float = 0.0       # top of the title bar

    @property
    def outer(self) -> float:
        return self.height + _TITLE_HEIGHT

    def box(self) -> Tuple[float, float, float, float]:
        return self.x, self.top, self.x + self.width, self.top + self.outer


class _Layout:
    """Places the nodes of a :class:`_UiBuilder`, builds the notes and the groups.

    Columns are dependency depths. Groups are placed in order, each as one block: it starts
    below whatever is already in any column it spans, its members stack in their columns, and
    those columns continue below it. Members of a column are ordered by where their sources
    are (fewer crossing links). Ungrouped nodes stack after the groups. Notes with a place
    beside the graph then go around it, everything is moved so the top-left is at _ORIGIN,
    explicit positions are applied, and each group frames its members."""

    def __init__(self, builder: _UiBuilder, meta: Meta) -> None:
        self.builder = builder
        self.meta = meta
        self.items: Dict[str, _Item] = {}
        rank = {node_id: i for i, node_id in enumerate(builder.prompt)}
        column: Dict[str, int] = {}
        for node_id, node in builder.nodes.items():  # sources first
            column[node_id] = max([meta.columns.get(node_id, 0)] +
                                  [column[s] + 1 for s in builder.sources[node_id]])
            self.items[node_id] = _Item(node_id, node["size"][0], node["size"][1], column[node_id],
                                        rank[node_id])
        self.note_items: Dict[int, _Item] = {}
        for rank, note in enumerate(meta.notes):
            height = max(NOTE_MIN_HEIGHT, note.height) if note.height is not None \
                else note_height(note.text, note.width)
            self.note_items[note.id] = _Item(f"note:{note.id}", note.width, height, 0, rank)
        self.members: Dict[str, List[_Item]] = {g.title: [self.items[n] for n in g.nodes] for g in meta.groups}
        for note in meta.notes:
            if note.place == "group":
                self.members[note.group].append(self.note_items[note.id])

    # ----------------------------------------------------------------- placement

    def run(self) -> Tuple[List[dict], List[dict]]:
        fixed = {self.items[n].key for n in self.meta.positions} | {
            f"note:{n.id}" for n in self.meta.notes if n.pos is not None}
        bottom: Dict[int, float] = {}
        placed: set = set()
        for group in self.meta.groups:
            members = [m for m in self.members[group.title] if m.key not in fixed]
            for note in self.meta.notes:
                if note.place == "group" and note.group == group.title:
                    nodes = [m for m in members if not m.key.startswith("note:")]
                    first = min((m.column for m in nodes), default=0)
                    self.note_items[note.id].column = first + note.column
            if not members:
                continue
            low = min(m.column for m in members)
            high = max(m.column for m in members)
            top = max(bottom.get(c, 0.0) for c in range(low, high + 1))
            first = top + _title_band(group.font_size) + _GROUP_PADDING
            end = self._stack(members, {m.column: first for m in members}, placed)
            for c in range(low, high + 1):
                bottom[c] = end + _GROUP_PADDING + _GROUP_GAP
        loose = [item for key, item in self.items.items()
                 if item.key not in placed and item.key not in fixed]
        self._stack(loose, {i.column: bottom.get(i.column, 0.0) for i in loose}, placed)
        self._place_side_notes(fixed)
        self._normalise(fixed)
        for node_id, (x, y) in self.meta.positions.items():
            self.items[node_id].x, self.items[node_id].top = x, y - _TITLE_HEIGHT
        for note in self.meta.notes:
            if note.pos is not None:
                self.note_items[note.id].x, self.note_items[note.id].top = note.pos[0], note.pos[1] - _TITLE_HEIGHT
        for node_id, item in self.items.items():
            self.builder.nodes[node_id]["pos"] = [_num(item.x), _num(item.top + _TITLE_HEIGHT)]
        return self._notes(), self._groups()

    def _column_order(self, items: List[_Item], placed: set) -> List[_Item]:
        """The items of one column, top to bottom: by the mean height of their already placed
        sources (fewer crossing links), then those without any in prompt order, notes last."""
        def key(item: _Item):
            if item.key.startswith("note:"):
                return 2, 0.0, item.rank
            centres = [self.items[s].top + self.items[s].outer / 2
                       for s in self.builder.sources.get(item.key, ()) if s in placed]
            if centres:
                return 0, sum(centres) / len(centres), item.rank
            return 1, 0.0, item.rank
        return sorted(items, key=key)

    def _stack(self, items: List[_Item], start: Dict[int, float], placed: set) -> float:
        """Stack ``items`` in their columns, column by column from the left, each column from
        ``start[column]``; return the lowest bottom (``start`` is updated)."""
        end = max(start.values(), default=0.0)
        for column in sorted({i.column for i in items}):
            for item in self._column_order([i for i in items if i.column == column], placed):
                item.x = column * _COLUMN_WIDTH
                item.top = start[column]
                start[column] = item.top + item.outer + _ROW_GAP
                end = max(end, item.top + item.outer)
                placed.add(item.key)
        return end

    def _core_box(self, fixed: set) -> Tuple[float, float, float, float]:
        boxes = [i.box() for i in self.items.values() if i.key not in fixed]
        boxes += [self.note_items[n.id].box() for n in self.meta.notes if n.place == "group" and n.pos is None]
        boxes += [b for b in (self._group_box(g, fixed) for g in self.meta.groups) if b is not None]
        if not boxes:
            return 0.0, 0.0, 0.0, 0.0
        return (min(b[0] for b in boxes), min(b[1] for b in boxes),
                max(b[2] for b in boxes), max(b[3] for b in boxes))

    def _place_side_notes(self, fixed: set) -> None:
        left, top, right, bottom = self._core_box(fixed)
        for place in NOTE_PLACES:
            notes = [self.note_items[n.id] for n in self.meta.notes if n.place == place and n.pos is None]
            if not notes:
                continue
            if place in ("top", "bottom"):
                y = top - _NOTE_GAP - max(n.outer for n in notes) if place == "top" else bottom + _NOTE_GAP
                x = left
                for note in notes:
                    note.x, note.top = x, y
                    x += note.width + _ROW_GAP
            else:
                x = left - _NOTE_GAP - max(n.width for n in notes) if place == "left" else right + _NOTE_GAP
                y = top
                for note in notes:
                    note.x, note.top = x, y
                    y += note.outer + _ROW_GAP

    def _normalise(self, fixed: set) -> None:
        moving = [i for i in list(self.items.values()) + list(self.note_items.values()) if i.key not in fixed]
        if not moving:
            return
        boxes = [i.box() for i in moving]
        boxes += [b for b in (self._group_box(g, fixed) for g in self.meta.groups) if b is not None]
        dx = _ORIGIN - min(b[0] for b in boxes)
        dy = _ORIGIN - min(b[1] for b in boxes)
        for item in moving:
            item.x += dx
            item.top += dy

    # ----------------------------------------------------------------- output

    def _group_box(self, group: GroupMeta, exclude: set = frozenset()) -> Optional[Tuple[float, float, float, float]]:
        members = [m for m in self.members[group.title] if m.key not in exclude]
        if not members:
            return None
        boxes = [m.box() for m in members]
        return (min(b[0] for b in boxes) - _GROUP_PADDING,
                min(b[1] for b in boxes) - _GROUP_PADDING - _title_band(group.font_size),
                max(b[2] for b in boxes) + _GROUP_PADDING,
                max(b[3] for b in boxes) + _GROUP_PADDING)

    def _groups(self) -> List[dict]:
        groups = []
        for index, group in enumerate(self.meta.groups):
            box = self._group_box(group)
            if box is None:
                continue
            groups.append({
                "id": index + 1, "title": group.title,
                "bounding": [_num(box[0]), _num(box[1]), _num(box[2] - box[0]), _num(box[3] - box[1])],
                "color": group.color, "font_size": group.font_size, "flags": {},
            })
        return groups

    def _notes(self) -> List[dict]:
        order = len(self.builder.nodes)
        notes = []
        for note in self.meta.notes:
            item = self.note_items[note.id]
            notes.append({
                "id": note.id, "type": "Note", "pos": [_num(item.x), _num(item.top + _TITLE_HEIGHT)],
                "size": [_num(item.width), _num(item.height)], "flags": {}, "order": order, "mode": 0,
                "inputs": [], "outputs": [], "title": note.title, "properties": {"text": ""},
                "widgets_values": [note.text], "color": NOTE_COLOR, "bgcolor": NOTE_BGCOLOR,
            })
            order += 1
        return notes


def _title_band(font_size: int) -> int:
    """The height of a group's title bar (litegraph: font size x 1.4), rounded up."""
    return -(-font_size * 14 // 10)


def _num(value: float) -> Union[int, float]:
    """Whole numbers as ints, so the JSON stays tidy."""
    return int(value) if float(value).is_integer() else round(float(value), 1)

