"""Headless, in-process executor for ComfyUI workflows, plus UI <-> API format conversion.

This lets the command line (and the tests) run the pack's nodes exactly as they are
wired in a ComfyUI workflow, without a ComfyUI install. Node classes follow the
classic V1 node API (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``, ``OUTPUT_NODE``,
optional ``VALIDATE_INPUTS``); the caller passes a *registry* mapping each
``class_type`` to its class.

Public API:

* :func:`validate` checks an API-format prompt the way ComfyUI's ``/prompt`` does and
  raises one :class:`GraphError` listing every problem.
* :func:`execute` validates, then runs the nodes upstream of the output nodes.
* :func:`apply_overrides` edits node inputs from ``KEY.INPUT=VALUE`` strings.
* :func:`ui_to_api` / :func:`api_to_ui` convert between the UI (litegraph) format
  saved by the editor and the API format; :func:`load_workflow` reads either.
  :func:`api_to_ui` lays the graph out and takes optional presentation metadata (groups,
  Note nodes, positions: :func:`check_meta`), which shipped workflows keep in a
  ``NAME.meta.json`` sidecar (:func:`meta_path`, :func:`load_meta`) because every top-level
  key of an API-format prompt is a node id to ComfyUI.

Differences from ComfyUI, on purpose:

* A missing *required widget* input (INT, FLOAT, STRING, BOOLEAN, combo) is filled
  with its ``default`` option (a combo without one gets its first choice) instead of
  failing, so hand-written and older workflows keep working when a node gains a widget.
  Missing optional inputs are simply not passed.
* Literal ``"true"``/``"false"`` are read as booleans (ComfyUI's ``bool("false")`` is
  True), numeric strings are accepted for INT/FLOAT, and a literal given to a socket
  input (IMAGE, AUDIO, ...) is an error instead of being passed through.
* List execution (``INPUT_IS_LIST``/``OUTPUT_IS_LIST``), lazy inputs and node
  expansion are not supported; such nodes fail validation with a clear message.

Like ComfyUI, only the nodes upstream of an output node are checked and run, every
node runs once, and node functions run under :func:`torch.inference_mode`.
"""
from __future__ import annotations

import copy
import heapq
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .errors import Cancelled, InputError, TalkingHeadError

__all__ = [
    "GraphError", "Problem", "InputSpec", "input_specs", "describe_node",
    "validate", "execute", "apply_overrides", "ui_to_api", "api_to_ui",
    "as_api", "load_workflow", "check_meta", "load_meta", "meta_path", "note_height", "declared_inputs",
    "GROUP_COLORS", "NOTE_PLACES",
]

Registry = Dict[str, type]
Prompt = Dict[str, dict]

#: literal widget types; combos (a list of choices) are widgets too
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN"})
#: INT inputs with these names get a "control after generate" widget in the editor
SEED_NAMES = frozenset({"seed", "noise_seed"})
#: values of that extra widget, as saved in ``widgets_values``
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
#: combo option -> value of the upload widget the editor adds after the combo
UPLOAD_OPTIONS = (("image_upload", "image"), ("audio_upload", "audio"), ("video_upload", "video"))
#: litegraph node modes with a meaning for conversion
MODE_MUTED = 2
MODE_BYPASS = 4
_NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
_MISSING = object()


# --------------------------------------------------------------------------- errors


def describe_node(node_id: Any, class_type: Optional[str] = None, title: Optional[str] = None) -> str:
    """``node 3 (TalkingHead_MuxVideo "Save")``; the title is left out when it is the class name."""
    if class_type is None:
        return f"node {node_id}"
    if title and title != class_type:
        return f'node {node_id} ({class_type} "{title}")'
    return f"node {node_id} ({class_type})"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow, optionally tied to a node."""

    message: str
    node_id: Optional[str] = None
    class_type: Optional[str] = None
    title: Optional[str] = None

    def __str__(self) -> str:
        if self.node_id is None:
            return self.message
        return f"{describe_node(self.node_id, self.class_type, self.title)}: {self.message}"


class GraphError(TalkingHeadError):
    """A workflow could not be validated, converted or run.

    ``node_id``/``class_type``/``title`` name the failing node (None when the error is
    about the whole graph or lists several nodes); ``detail`` is the message without
    the node prefix and ``problems`` lists every :class:`Problem` found.
    """

    def __init__(self, message: str, *, node_id: Any = None, class_type: Optional[str] = None,
                 title: Optional[str] = None, problems: Optional[Sequence[Problem]] = None) -> None:
        self.node_id = None if node_id is None else str(node_id)
        self.class_type = class_type
        self.title = title
        self.detail = message
        first = Problem(message, self.node_id, class_type, title)
        self.problems: List[Problem] = list(problems) if problems else [first]
        super().__init__(str(first))

    @classmethod
    def from_problems(cls, problems: Sequence[Problem]) -> "GraphError":
        """One error for one problem (with its node), else a list of all of them."""
        if len(problems) == 1:
            p = problems[0]
            return cls(p.message, node_id=p.node_id, class_type=p.class_type, title=p.title)
        lines = "\n".join(f"  - {p}" for p in problems)
        return cls(f"the workflow has {len(problems)} problems:\n{lines}", problems=problems)


class _BadValue(Exception):
    """Internal: a literal or link is invalid; the message is meant for the user."""


# --------------------------------------------------------------------------- node classes


@dataclass(frozen=True)
class InputSpec:
    """One declared input of a node class (an entry of ``INPUT_TYPES()``)."""

    name: str
    type: Any  # a type name ("IMAGE", "INT", "*", "COMBO"...) or the list of combo choices
    options: Dict[str, Any] = field(default_factory=dict)
    required: bool = True

    @property
    def choices(self) -> Optional[list]:
        """The allowed values of a combo input, None for other inputs."""
        if isinstance(self.type, (list, tuple)):
            return list(self.type)
        if self.type == "COMBO":
            return list(self.options.get("options") or [])
        return None

    @property
    def type_name(self) -> str:
        """The socket type as the editor shows it (``COMBO`` for choice lists)."""
        return "COMBO" if self.choices is not None else str(self.type)

    @property
    def is_widget(self) -> bool:
        """True for inputs edited in place (they take a ``widgets_values`` slot)."""
        if self.options.get("forceInput"):
            return False
        return self.choices is not None or self.type in WIDGET_TYPES

    @property
    def has_control(self) -> bool:
        """True for seed-like INT widgets, followed by a "control after generate" value."""
        return self.type == "INT" and bool(
            self.options.get("control_after_generate", self.name in SEED_NAMES))

    @property
    def upload_value(self) -> Optional[str]:
        """The trailing upload widget value ("image", "audio", "video") of upload combos."""
        if self.choices is not None:
            for option, value in UPLOAD_OPTIONS:
                if self.options.get(option):
                    return value
        return None

    def default(self) -> Any:
        """The value used when a widget is missing: ``default``, a combo's first choice, or _MISSING."""
        if not self.is_widget:
            return _MISSING
        if "default" in self.options:
            return self.options["default"]
        choices = self.choices
        return choices[0] if choices else _MISSING

    def placeholder(self) -> Any:
        """A widget value for the UI format when the prompt gives none (e.g. the input is linked)."""
        value = self.default()
        if value is not _MISSING:
            return value
        return {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False}.get(self.type, "")


class _ClassError(Exception):
    """Internal: a registry class does not follow the node API."""


def input_specs(cls: type) -> List[InputSpec]:
    """The required then optional inputs declared by ``cls.INPUT_TYPES()``, in order."""
    try:
        declared = cls.INPUT_TYPES()
    except Exception as exc:  # a broken class must not crash validation of the rest
        raise _ClassError(f"INPUT_TYPES() failed: {type(exc).__name__}: {exc}") from exc
    specs = []
    for section, required in (("required", True), ("optional", False)):
        for name, entry in (declared.get(section) or {}).items():
            if not isinstance(entry, (list, tuple)) or not entry:
                raise _ClassError(f"INPUT_TYPES() declares input {name!r} as {entry!r}, not (type, options)")
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            specs.append(InputSpec(name, entry[0], options, required))
    return specs


def _hidden_inputs(cls: type) -> Dict[str, str]:
    """Hidden input name -> kind ("UNIQUE_ID", "PROMPT", ...)."""
    hidden = cls.INPUT_TYPES().get("hidden") or {}
    return {name: kind[0] if isinstance(kind, (list, tuple)) else kind for name, kind in hidden.items()}


def _return_types(cls: type) -> tuple:
    return tuple(getattr(cls, "RETURN_TYPES", ()) or ())


def _type_name(declared: Any) -> str:
    return "COMBO" if isinstance(declared, (list, tuple)) else str(declared)


def _display_name(cls: Optional[type], class_type: str) -> str:
    return getattr(cls, "DISPLAY_NAME", None) or class_type


def _types_match(output_type: Any, spec: InputSpec) -> bool:
    """Whether an output of ``output_type`` may feed ``spec``: ComfyUI's server rule, so a graph
    that validates here validates there. Equal types (by ``!=``, which wildcard types override
    to match anything: a plain ``"*"`` is *not* a wildcard on the server), or ``"A,B"`` unions
    that overlap. A combo (a list of choices) only takes a link whose type equals that list."""
    wanted = spec.type
    if not output_type != wanted:
        return True
    if not isinstance(output_type, str) or not isinstance(wanted, str):
        return False
    given = {t.strip() for t in output_type.split(",")}
    return bool(given & {t.strip() for t in wanted.split(",")})


# --------------------------------------------------------------------------- literals and links


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            value = float(text)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    return float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError


_CONVERTERS: Dict[str, Tuple[Callable[[Any], Any], str]] = {
    "INT": (_to_int, "an integer (INT)"),
    "FLOAT": (_to_float, "a number (FLOAT)"),
    "BOOLEAN": (_to_bool, "true or false (BOOLEAN)"),
    "STRING": (_to_str, "a string (STRING)"),
}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _coerce_literal(spec: InputSpec, value: Any, check_limits: bool = True) -> Any:
    """Convert a literal to the input's type and check it; raises :class:`_BadValue`.

    ``check_limits=False`` skips the min/max and combo checks (inputs that the class's
    ``VALIDATE_INPUTS`` checks itself, as in ComfyUI).
    """
    choices = spec.choices
    if choices is not None:
        if check_limits and value not in choices:
            shown = ", ".join(_short(c, 40) for c in choices[:20]) + (", ..." if len(choices) > 20 else "")
            raise _BadValue(f"input '{spec.name}' = {_short(value)} is not one of the allowed values: {shown}")
        return value
    if spec.type == "*":
        return value
    if spec.type not in _CONVERTERS:
        raise _BadValue(f"input '{spec.name}' ({spec.type}) must be linked to another node's output, "
                        f"got the literal {_short(value)}")
    convert, expected = _CONVERTERS[spec.type]
    try:
        value = convert(value)
    except (ValueError, TypeError, OverflowError):
        raise _BadValue(f"input '{spec.name}' expects {expected}, got {_short(value)}") from None
    if check_limits and spec.type in ("INT", "FLOAT"):
        low, high = spec.options.get("min"), spec.options.get("max")
        if low is not None and value < low:
            raise _BadValue(f"input '{spec.name}' = {value} is below the minimum {low}")
        if high is not None and value > high:
            raise _BadValue(f"input '{spec.name}' = {value} is above the maximum {high}")
    return value


def _unwrap(value: Any) -> Any:
    """Literal lists travel as ``{"__value__": [...]}`` because bare lists are links."""
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"]
    return value


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def _parse_link(value: list) -> Tuple[str, int]:
    """``[source id, output index]`` -> ``(str id, index)``; raises :class:`_BadValue` if malformed."""
    if (len(value) == 2 and isinstance(value[0], (str, int)) and not isinstance(value[0], bool)
            and isinstance(value[1], int) and not isinstance(value[1], bool)):
        return str(value[0]), value[1]
    raise _BadValue(f"{_short(value)} is not a link [node_id, output_index]; "
                    'wrap literal lists as {"__value__": [...]}')


def _links_of(node: dict) -> List[Tuple[str, int]]:
    """The well-formed links among a prompt node's inputs."""
    inputs = node.get("inputs")
    links = []
    for value in (inputs.values() if isinstance(inputs, dict) else ()):
        if isinstance(value, list):
            try:
                links.append(_parse_link(value))
            except _BadValue:
                continue
    return links


def _topo_order(deps: Dict[str, List[str]]) -> Tuple[List[str], List[str]]:
    """Dependency order of ``deps`` (node -> sources), ties broken by dict order.

    Returns ``(order, cycle)``; ``cycle`` lists the nodes on or between dependency
    cycles (empty when the graph is acyclic). Sources not in ``deps`` are ignored.
    """
    position = {node: i for i, node in enumerate(deps)}
    pending = {node: 0 for node in deps}
    users: Dict[str, List[str]] = {node: [] for node in deps}
    for node, sources in deps.items():
        for source in dict.fromkeys(sources):
            if source in deps:
                pending[node] += 1
                users[source].append(node)
    ready = [(position[n], n) for n, count in pending.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for user in users[node]:
            pending[user] -= 1
            if pending[user] == 0:
                heapq.heappush(ready, (position[user], user))
    stuck = {n for n, count in pending.items() if count > 0}
    changed = True
    while changed:  # drop nodes that are merely downstream of a cycle
        sinks = {n for n in stuck if not any(u in stuck for u in users[n])}
        stuck -= sinks
        changed = bool(sinks)
    return order, sorted(stuck, key=position.__getitem__)


def _cycle_problem(cycle: List[str]) -> Problem:
    return Problem("dependency cycle: nodes " + ", ".join(cycle) + " need each other's outputs")


# --------------------------------------------------------------------------- validation


@dataclass
class _Step:
    """A node ready to run: its class, coerced literal inputs and incoming links."""

    node_id: str
    class_type: str
    title: str
    cls: type
    literals: Dict[str, Any] = field(default_factory=dict)
    links: Dict[str, Tuple[str, int]] = field(default_factory=dict)

    def problem(self, message: str) -> Problem:
        return Problem(message, self.node_id, self.class_type, self.title)

    def error(self, message: str) -> GraphError:
        return GraphError(message, node_id=self.node_id, class_type=self.class_type, title=self.title)


def _node_title(node: dict, cls: Optional[type], class_type: str) -> str:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    return title or _display_name(cls, class_type)


def _validator_parameters(cls: type) -> Optional[Dict[str, inspect.Parameter]]:
    """The parameters of ``cls.VALIDATE_INPUTS``, None when the class has none."""
    validator = getattr(cls, "VALIDATE_INPUTS", None)
    if validator is None:
        return None
    return dict(inspect.signature(validator).parameters)


def _run_validator(cls: type, params: Dict[str, inspect.Parameter], literals: Dict[str, Any],
                   received: Dict[str, Any]) -> Optional[str]:
    """Call ``VALIDATE_INPUTS`` like ComfyUI; return its complaint, or None if it returned True.

    It gets the literal inputs it names (all of them if it takes ``**kwargs``),
    ``input_types`` (input name -> linked output type) if it asks for it, and None for
    parameters without a default whose input is linked or absent.
    """
    kwargs: Dict[str, Any] = {}
    for name, param in params.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            kwargs.update({k: v for k, v in literals.items() if k not in params})
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        elif name == "input_types":
            kwargs[name] = dict(received)
        elif name in literals:
            kwargs[name] = literals[name]
        elif param.default is inspect.Parameter.empty:
            kwargs[name] = None
    try:
        verdict = cls.VALIDATE_INPUTS(**kwargs)
    except Exception as exc:
        return f"VALIDATE_INPUTS failed: {type(exc).__name__}: {exc}"
    return None if verdict is True else str(verdict)


def _check_node(node_id: str, node: dict, cls: type, prompt: Prompt, classes: Registry,
                problems: List[Problem]) -> _Step:
    """Check one node's inputs against its class; append problems, return its :class:`_Step`."""
    class_type = node["class_type"]
    step = _Step(node_id, class_type, _node_title(node, cls, class_type), cls)
    found: List[Problem] = []
    try:
        specs = input_specs(cls)
        params = _validator_parameters(cls)
    except (_ClassError, TypeError, ValueError) as exc:
        problems.append(step.problem(str(exc)))
        return step
    output_is_list = getattr(cls, "OUTPUT_IS_LIST", None)
    if isinstance(output_is_list, (list, tuple)):
        output_is_list = any(output_is_list)
    if getattr(cls, "INPUT_IS_LIST", False) or output_is_list:
        found.append(step.problem("uses list execution (INPUT_IS_LIST/OUTPUT_IS_LIST), "
                                  "which the headless runner does not support"))
    function = getattr(cls, "FUNCTION", None)
    if not isinstance(function, str) or not callable(getattr(cls, function, None)):
        found.append(step.problem(f"class has no method FUNCTION = {function!r}"))
    custom = set(params or ()) - {"input_types"}
    inputs = node.get("inputs")
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict):
        found.append(step.problem(f"'inputs' must be an object, got {_short(inputs)}"))
        inputs = {}
    received: Dict[str, Any] = {}
    for spec in specs:
        if spec.name in inputs:
            value = inputs[spec.name]
        elif spec.required and spec.default() is not _MISSING:
            step.literals[spec.name] = spec.default()
            continue
        elif spec.required:
            found.append(step.problem(f"required input '{spec.name}' ({spec.type_name}) is missing"))
            continue
        else:
            continue
        try:
            if isinstance(value, list):
                step.links[spec.name] = _check_link(spec, value, prompt, classes, params)
                source, index = step.links[spec.name]
                received[spec.name] = _return_types(classes[source])[index]
            else:
                step.literals[spec.name] = _coerce_literal(spec, _unwrap(value), spec.name not in custom)
        except _BadValue as exc:
            found.append(step.problem(str(exc)))
    if params is not None and not found:
        complaint = _run_validator(cls, params, step.literals, received)
        if complaint is not None:
            found.append(step.problem(complaint))
    problems.extend(found)
    return step


def _check_link(spec: InputSpec, value: list, prompt: Prompt, classes: Registry,
                params: Optional[Dict[str, inspect.Parameter]]) -> Tuple[str, int]:
    """Check a link feeding ``spec``; return ``(source id, output index)`` or raise :class:`_BadValue`."""
    source, index = _parse_link(value)
    if source not in prompt:
        raise _BadValue(f"input '{spec.name}' is linked to node {source}, which is not in the workflow")
    source_cls = classes.get(source)
    if source_cls is None:  # unknown type: reported on that node
        raise _BadValue(f"input '{spec.name}' is linked to node {source}, whose type is unknown")
    outputs = _return_types(source_cls)
    source_name = describe_node(source, prompt[source]["class_type"])
    if not 0 <= index < len(outputs):
        raise _BadValue(f"input '{spec.name}' is linked to output {index} of {source_name}, "
                        f"which has {len(outputs)} output(s)")
    checks_types = params is not None and "input_types" in params
    if not checks_types and not _types_match(outputs[index], spec):
        raise _BadValue(f"input '{spec.name}' expects {spec.type_name} but is linked to output {index} "
                        f"({_type_name(outputs[index])}) of {source_name}")
    return source, index


@dataclass
class _Plan:
    steps: Dict[str, _Step]
    order: List[str]


def _plan(prompt: Prompt, registry: Registry) -> _Plan:
    """Validate ``prompt``; return the nodes to run in order, or raise one :class:`GraphError`."""
    if not isinstance(prompt, dict) or not prompt:
        raise GraphError("the workflow is empty or not an API-format object {node_id: {class_type, inputs}}")
    problems: List[Problem] = []
    classes: Registry = {}
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(class_type, str):
            problems.append(Problem("is not a node object with a 'class_type'", str(node_id)))
        elif class_type not in registry:
            problems.append(Problem(f"unknown node type '{class_type}' (maybe the custom node pack "
                                    "that provides it is missing or failed to load)", str(node_id), class_type))
        else:
            classes[str(node_id)] = registry[class_type]
    prompt = {str(k): v for k, v in prompt.items()}
    outputs = [n for n, cls in classes.items() if getattr(cls, "OUTPUT_NODE", False)]
    if not outputs:
        problems.append(Problem("the workflow has no output node, so nothing would run "
                                "(prompt_no_outputs): add a node that saves or previews a result"))
    needed = set()
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in needed:
            continue
        needed.add(node_id)
        stack.extend(src for src, _ in _links_of(prompt[node_id]) if src in classes)
    steps = {n: _check_node(n, prompt[n], classes[n], prompt, classes, problems)
             for n in prompt if n in needed}
    order, cycle = _topo_order({n: [src for src, _ in s.links.values()] for n, s in steps.items()})
    if cycle:
        problems.append(_cycle_problem(cycle))
    if problems:
        raise GraphError.from_problems(problems)
    return _Plan(steps, order)


def validate(prompt: Prompt, registry: Registry) -> None:
    """Check an API-format prompt; raise one :class:`GraphError` listing every problem.

    Checked: node types exist; links point at existing nodes and outputs with a
    compatible type; required inputs are present (missing widgets get their default,
    see the module docstring); literals have the right type, lie within min/max and
    are allowed combo values; ``VALIDATE_INPUTS`` accepts them; there is an output
    node and no dependency cycle. Only nodes upstream of output nodes are checked.
    """
    _plan(prompt, registry)


# --------------------------------------------------------------------------- execution


def _hidden_value(kind: str, node_id: str, prompt: Prompt, extra_pnginfo: Optional[dict]) -> Any:
    if kind == "UNIQUE_ID":
        return node_id
    if kind == "PROMPT":
        return prompt
    if kind == "EXTRA_PNGINFO":
        return extra_pnginfo if extra_pnginfo is not None else {}
    return None  # DYNPROMPT and host-only values (API keys...) do not exist headless


def _gather_inputs(step: _Step, results: Dict[str, tuple], prompt: Prompt,
                   extra_pnginfo: Optional[dict]) -> Dict[str, Any]:
    kwargs = dict(step.literals)
    for name, (source, index) in step.links.items():
        produced = results[source]
        if index >= len(produced):
            raise step.error(f"input '{name}' needs output {index} of node {source}, "
                             f"which returned only {len(produced)} value(s)")
        kwargs[name] = produced[index]
    for name, kind in _hidden_inputs(step.cls).items():
        kwargs[name] = _hidden_value(kind, step.node_id, prompt, extra_pnginfo)
    return kwargs


def _split_result(step: _Step, raw: Any) -> Tuple[tuple, Optional[dict]]:
    """A node's return value -> ``(outputs tuple, ui dict or None)``."""
    ui = None
    declared = len(_return_types(step.cls))
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


def _run_step(step: _Step, kwargs: Dict[str, Any]) -> Any:
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
    and :class:`~.errors.Cancelled` on Ctrl-C or when a node or callback cancels.
    """
    plan = _plan(prompt, registry)
    results: Dict[str, tuple] = {}
    outputs: Dict[str, dict] = {}
    count = len(plan.order)
    step = None
    try:
        for index, node_id in enumerate(plan.order, start=1):
            step = plan.steps[node_id]
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
    return {"outputs": outputs, "results": results, "order": list(plan.order)}


# --------------------------------------------------------------------------- overrides


def _find_node(prompt: Prompt, key: str) -> str:
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
        except _ClassError:
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
    :class:`~.errors.InputError`.
    """
    result = copy.deepcopy(prompt)
    for text in overrides:
        target, sep, raw_value = text.partition("=")
        key, dot, name = target.strip().rpartition(".")
        if not sep or not dot or not key or not name:
            raise InputError(f"override {text!r} is not of the form NODE.INPUT=VALUE "
                             "(NODE: node id, title or class_type)")
        node_id = _find_node(result, key)
        node = result[node_id]
        inputs = node.setdefault("inputs", {})
        if name not in inputs:
            declared = _declared_names(registry, node)
            if name not in declared:
                raise InputError(f"override {text!r}: {describe_node(node_id, node.get('class_type'))} "
                                 f"has no input '{name}' (inputs: {', '.join(declared) or 'none'})")
        inputs[name] = _wrap(_parse_value(raw_value))
    return result


# --------------------------------------------------------------------------- UI format -> API format


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
        elif mode == MODE_MUTED or kind in _NOTE_TYPES:
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
        if class_type in ("Reroute", "PrimitiveNode") or class_type in _NOTE_TYPES \
                or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS):
            continue
        cls = registry.get(class_type)
        if cls is None:
            problems.append(Problem(f"unknown node type '{class_type}' (maybe the custom node pack "
                                    "that provides it is missing or failed to load)", node_id, class_type))
            continue
        try:
            specs = input_specs(cls)
        except _ClassError as exc:
            problems.append(Problem(str(exc), node_id, class_type))
            continue
        inputs = {name: _wrap(value) for name, value in _ui_widget_values(node, specs).items()}
        declared = {s.name for s in specs}
        for entry in node.get("inputs") or []:
            name = (entry.get("widget") or {}).get("name") or entry.get("name")
            source = _resolve_ui_link(entry.get("link"), nodes, links) if name in declared else None
            if source is not None:
                inputs[name] = [source[1], source[2]] if source[0] == "link" else _wrap(source[1])
        prompt[node_id] = {
            "class_type": class_type,
            "inputs": {s.name: inputs[s.name] for s in specs if s.name in inputs},
            "_meta": {"title": node.get("title") or _display_name(cls, class_type)},
        }
    if problems:
        raise GraphError.from_problems(problems)
    return prompt


# --------------------------------------------------------------------------- API format -> UI format

# Layout units are litegraph canvas units. A node's ``pos`` is the top-left corner of its body;
# the editor draws its title bar above that, so a node occupies
# ``[x, y - _TITLE_HEIGHT, width, height + _TITLE_HEIGHT]``.
_ORIGIN = 50
_NODE_WIDTH = 320
_COLUMN_WIDTH = 420        # column pitch: node width + room for the links
_ROW_GAP = 40              # between a node's bottom and the next node's title bar
_TITLE_HEIGHT = 30         # LiteGraph.NODE_TITLE_HEIGHT
_SLOT_HEIGHT = 24
_GROUP_FONT_SIZE = 24      # LiteGraph.DEFAULT_GROUP_FONT
_GROUP_PADDING = 20        # around a group's members (the editor's "fit group to nodes" uses 10)
_GROUP_GAP = 50            # between two stacked groups
_NOTE_WIDTH = 420          # notes above, below or beside the graph
_NOTE_GAP = 60             # between those notes and the graph
#: extra body height for the previews that upload widgets add (image/video preview, audio player)
_PREVIEW_HEIGHT = {"image": 220, "video": 220, "audio": 60}
#: the values ComfyUI's frontend (1.35) saves for the widgets an upload option adds, by upload kind
_UPLOAD_WIDGETS = {"image": ["image"], "video": ["image"], "audio": [None, None]}
#: litegraph's group colours (LGraphCanvas.node_colors[*].groupcolor), by name
GROUP_COLORS = {
    "red": "#A88", "brown": "#b06634", "green": "#8A8", "blue": "#88A", "pale_blue": "#3f789e",
    "cyan": "#8AA", "purple": "#a1309b", "yellow": "#b58b2a", "black": "#444",
}
#: the colours the editor gives Note nodes (LGraphCanvas.node_colors.yellow)
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"
NOTE_PLACES = ("top", "bottom", "left", "right")
#: the frontend grows a Note node to at least this body height when it loads it
NOTE_MIN_HEIGHT = 88
_META_KEYS = frozenset({"groups", "notes", "columns", "positions"})
_GROUP_KEYS = frozenset({"title", "nodes", "color", "font_size"})
_NOTE_KEYS = frozenset({"text", "title", "position", "column", "width", "height", "pos", "id"})


def api_to_ui(prompt: Prompt, registry: Registry, meta: Optional[dict] = None,
              sizes: Optional[Dict[str, Sequence[float]]] = None) -> dict:
    """Build a UI-format workflow from an API-format prompt (inverse of :func:`ui_to_api`).

    Nodes are laid out left to right in columns by dependency depth, stacked within a column.
    Socket inputs get ``inputs`` entries (linked widgets too, with ``widget``), widgets get
    positional ``widgets_values`` (with "fixed" after seed-like INTs and the upload value after
    upload combos; linked or missing widgets get a placeholder: the default, else a combo's
    first choice, else 0/0.0/False/""). Node ids must be numeric; literals for socket inputs,
    undeclared inputs, bad links, unknown types and cycles raise :class:`GraphError`.
    ``ui_to_api(api_to_ui(p)) == p`` holds when every node of ``p`` has a ``_meta.title`` and
    gives every widget input (a missing widget comes back with its placeholder value).

    ``meta`` is the optional presentation of the workflow (see :func:`check_meta`; shipped
    workflows keep it in a ``NAME.meta.json`` sidecar, see :func:`meta_path`): groups, which
    are laid out as blocks (a group's members share a band of rows across the group's columns)
    and framed with padding, Note nodes (above, below, beside the graph or inside a group) and
    explicit node positions. Groups and notes do not change the prompt: :func:`ui_to_api`
    ignores them. ``sizes`` (node id -> (width, height)) are the node sizes the frontend
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
            except _ClassError as exc:
                problems.append(Problem(str(exc), str(node_id), class_type))
    if problems:
        raise GraphError.from_problems(problems)
    prompt = {str(k): v for k, v in prompt.items()}
    layout_meta = check_meta(meta, prompt) if meta is not None else _Meta()
    order, cycle = _topo_order({n: [src for src, _ in _links_of(node)] for n, node in prompt.items()})
    if cycle:
        raise GraphError.from_problems([_cycle_problem(cycle)])
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
        title = _node_title(node, cls, class_type)
        given = dict(node.get("inputs") or {})
        inputs, widgets, sources, preview, uploads = [], [], [], 0, []
        for spec in specs:
            value = given.pop(spec.name, _MISSING)
            if isinstance(value, list):
                link_id, source = self._link(node_id, len(inputs), value, class_type, title, spec)
                if source is not None:
                    sources.append(source)
                entry = {"name": spec.name, "type": spec.type_name, "link": link_id}
                if spec.is_widget:
                    entry["widget"] = {"name": spec.name}
                inputs.append(entry)
                value = _MISSING
            elif not spec.is_widget:
                if value is not _MISSING:
                    self.problems.append(Problem(f"input '{spec.name}' ({spec.type_name}) has a literal value, "
                                                 "which the UI format cannot hold", node_id, class_type, title))
                inputs.append({"name": spec.name, "type": spec.type_name, "link": None})
            if spec.is_widget:
                widgets.append(spec.placeholder() if value is _MISSING else _unwrap(value))
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
        outputs = [{"name": self._output_name(cls, i, rtype), "type": _type_name(rtype), "links": [], "slot_index": i}
                   for i, rtype in enumerate(_return_types(cls))]
        self.sources[node_id] = list(dict.fromkeys(sources))
        # generous next to the editor's own computeSize (20 per slot row, 24 per widget), which
        # grows a node that is saved smaller than that when the workflow is loaded
        height = 46 + _SLOT_HEIGHT * (max(len(inputs), len(outputs)) + len(widgets)) + preview
        self.nodes[node_id] = {
            "id": int(node_id), "type": class_type, "pos": [_ORIGIN, _ORIGIN],
            "size": [_NODE_WIDTH, height], "flags": {}, "order": len(self.nodes), "mode": 0,
            "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": class_type},
            "widgets_values": widgets, "title": title,
        }

    @staticmethod
    def _output_name(cls: type, index: int, rtype: Any) -> str:
        names = getattr(cls, "RETURN_NAMES", None) or ()
        return names[index] if index < len(names) else _type_name(rtype)

    def _link(self, node_id: str, slot: int, value: list, class_type: str, title: str,
              spec: InputSpec) -> Tuple[Optional[int], Optional[str]]:
        """Add a link row for ``value``; return ``(link id, source id)`` or ``(None, None)`` if bad."""
        try:
            source, index = _parse_link(value)
            if source not in self.nodes:
                raise _BadValue(f"input '{spec.name}' is linked to node {source}, which is not in the workflow")
            outputs = self.nodes[source]["outputs"]
            if not 0 <= index < len(outputs):
                raise _BadValue(f"input '{spec.name}' is linked to output {index} of node {source}, "
                                f"which has {len(outputs)} output(s)")
        except _BadValue as exc:
            self.problems.append(Problem(str(exc), node_id, class_type, title))
            return None, None
        link_id = len(self.links) + 1
        outputs[index]["links"].append(link_id)
        self.links.append([link_id, int(source), index, int(node_id), slot, outputs[index]["type"]])
        return link_id, source


# --------------------------------------------------------------------------- workflow metadata (groups, notes)


@dataclass
class _GroupMeta:
    title: str
    nodes: List[str]
    color: str
    font_size: int


@dataclass
class _NoteMeta:
    id: int
    text: str
    title: str
    place: str                     # one of NOTE_PLACES, or "group"
    group: Optional[str] = None    # the group title when place == "group"
    column: int = 0                # column offset inside the group
    width: int = _NOTE_WIDTH
    height: Optional[int] = None
    pos: Optional[Tuple[float, float]] = None


@dataclass
class _Meta:
    groups: List[_GroupMeta] = field(default_factory=list)
    notes: List[_NoteMeta] = field(default_factory=list)
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


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} is not valid JSON: {exc}") from exc


def load_meta(path: Union[str, Path]) -> dict:
    """Read a workflow metadata file (JSON object); see :func:`check_meta` for its keys."""
    path = Path(path)
    data = _read_json(path, "workflow metadata")
    if not isinstance(data, dict):
        raise InputError(f"workflow metadata {path} must be a JSON object")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _point(value: Any) -> Optional[Tuple[float, float]]:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        return value[0], value[1]
    return None


def check_meta(meta: Any, prompt: Prompt) -> _Meta:
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
    result = _Meta()
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
        font_size = group.get("font_size", _GROUP_FONT_SIZE)
        if not _is_number(font_size) or not 8 <= font_size <= 96:
            bad(f"group '{title}': font_size must be a number from 8 to 96")
            font_size = _GROUP_FONT_SIZE
        result.groups.append(_GroupMeta(title, members, GROUP_COLORS.get(color, color), int(font_size)))
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
        width = note.get("width", _NODE_WIDTH if place == "group" else _NOTE_WIDTH)
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
        result.notes.append(_NoteMeta(note_id, note["text"], title, place, group, int(column), int(width),
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

    def __init__(self, builder: _UiBuilder, meta: _Meta) -> None:
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

    def _group_box(self, group: _GroupMeta, exclude: set = frozenset()) -> Optional[Tuple[float, float, float, float]]:
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


def declared_inputs(prompt: Prompt, registry: Registry) -> Prompt:
    """``prompt`` with only the inputs each node's class declares: without the values ComfyUI's frontend
    exports for its own preview widgets (``audioUI``, ``video-preview``), which the server and this
    runner ignore."""
    out = {}
    for node_id, node in prompt.items():
        names = {s.name for s in input_specs(registry[node["class_type"]])}
        out[node_id] = {**node, "inputs": {k: v for k, v in (node.get("inputs") or {}).items() if k in names}}
    return out


# --------------------------------------------------------------------------- loading


def as_api(data: Any, registry: Registry, source: str = "workflow") -> Prompt:
    """Any workflow JSON value -> API format: UI format (has a "nodes" list) is converted,
    a ``{"prompt": {...}}`` request body is unwrapped, API format is returned as is."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return ui_to_api(data, registry)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        data = data["prompt"]
    if not isinstance(data, dict) or not data or not all(
            isinstance(node, dict) and "class_type" in node for node in data.values()):
        raise InputError(f"{source} is not a ComfyUI workflow (neither the UI format with a \"nodes\" "
                         "list nor the API format {node_id: {\"class_type\": ..., \"inputs\": ...}})")
    return data


def load_workflow(path: Union[str, Path], registry: Registry) -> Prompt:
    """Read a workflow file (UI format, API format or a ``{"prompt": ...}`` body) as API format."""
    path = Path(path)
    data = _read_json(path, "workflow file")
    return as_api(data, registry, source=f"workflow file {path}")
