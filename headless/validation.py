"""Checking an API-format prompt before anything runs, by ComfyUI 0.8.0's rules.

A graph that validates here validates on ComfyUI's server (``/prompt``), and the other way round,
except for these differences, on purpose:

* A missing *required widget* input (INT, FLOAT, STRING, BOOLEAN, combo) is filled with its
  ``default`` option (a combo without one gets its first choice) instead of failing, so hand-written
  and older workflows keep working when a node gains a widget. Missing optional inputs are simply not
  passed.
* Literals are read strictly: ``"true"``/``"false"`` are booleans (ComfyUI's ``bool("false")`` is
  True), numeric strings are accepted for INT/FLOAT but 2.5 is not an INT (ComfyUI truncates it), and
  a literal given to a socket input (IMAGE, AUDIO, ...) is an error instead of being passed through.
* Every problem of every node upstream of an output is reported, in one :class:`GraphError`, and any
  problem refuses the whole prompt (ComfyUI drops the outputs whose nodes fail and runs the others).
* ``VALIDATE_INPUTS`` is not called for a node that already has a problem (ComfyUI calls it with the
  unconverted values).
* List execution (``INPUT_IS_LIST``/``OUTPUT_IS_LIST``), lazy inputs and node expansion are not
  supported; such nodes fail validation with a clear message.

The link rule is :func:`link_accepted`; how ``VALIDATE_INPUTS`` takes part is :class:`Validator`.
"""
from __future__ import annotations

import heapq
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from .problems import BadValue, GraphError, Problem, describe_node, short
from .specs import (MISSING, ClassError, InputSpec, Prompt, Registry, hidden_inputs, input_specs, node_title,
                    return_types, type_name)

__all__ = ["validate", "plan", "Plan", "Step", "link_accepted", "Validator", "parse_link", "links_of",
           "topo_order", "cycle_problem", "unwrap", "wrap", "ANY_TYPE", "MATCH_TYPE", "COMBO_TYPE"]

#: ComfyUI's "any" socket type: a link from or to it is always accepted
ANY_TYPE = "*"
#: the type of V3 nodes' MatchType sockets, which the server leaves to the frontend to check
MATCH_TYPE = "COMFY_MATCHTYPE_V3"
#: the declared type of a combo in the newer form (``("COMBO", {"options": [...]})``)
COMBO_TYPE = "COMBO"


# --------------------------------------------------------------------------- the link rule


def link_accepted(output_type: Any, input_type: Any) -> bool:
    """Whether a link from an output declared ``output_type`` may feed an input declared ``input_type``.

    ComfyUI 0.8.0's rule (``validate_node_input``, not strict), in its order:

    1. the types are not unequal, asked with ``!=`` so that a wildcard type overriding ``__ne__``
       (``nodes/base.py``'s AnyType) matches anything on either side;
    2. either side is ``"*"``;
    3. either side is a V3 MatchType (checked by the frontend, not the server);
    4. the output's type is a list (a custom node returning its options as the type) and the input
       is declared ``"COMBO"``; an old-style combo (its choices list as the type) only takes the
       same list, by rule 1;
    5. both are strings of comma-separated types (``"STRING,INT"``) that have a ``"*"`` or at least
       one type in common.
    """
    if not output_type != input_type:
        return True
    if output_type == ANY_TYPE or input_type == ANY_TYPE:
        return True
    if output_type == MATCH_TYPE or input_type == MATCH_TYPE:
        return True
    if isinstance(output_type, list) and input_type == COMBO_TYPE:
        return True
    if not isinstance(output_type, str) or not isinstance(input_type, str):
        return False
    given = {t.strip() for t in output_type.split(",")}
    wanted = {t.strip() for t in input_type.split(",")}
    return ANY_TYPE in given or ANY_TYPE in wanted or bool(given & wanted)


# --------------------------------------------------------------------------- VALIDATE_INPUTS


#: hidden values VALIDATE_INPUTS gets (ComfyUI validates before there is a run: an empty prompt, no extras)
_VALIDATION_HIDDEN: Dict[str, Callable[[str], Any]] = {"UNIQUE_ID": lambda node_id: node_id,
                                                       "PROMPT": lambda node_id: {}}


@dataclass(frozen=True)
class Validator:
    """How a class's ``VALIDATE_INPUTS`` takes part, as ComfyUI decides it from the function's
    positional parameters (``inspect.getfullargspec(...).args``, ``cls`` included) and ``**kwargs``:

    * it is called when it has any such parameter or ``**kwargs``;
    * it gets the inputs it names (all of them with ``**kwargs``): the literal values, None for a
      linked input, the hidden values (UNIQUE_ID: the node id, PROMPT: ``{}``, others None); an
      input it names that the prompt does not give is not passed;
    * a named ``input_types`` gets {linked input: the linking output's type} and turns the link
      type check off for the whole node (the function checks the types itself);
    * the inputs it names (all with ``**kwargs``) skip the min/max and combo-choice checks; their
      literals are still converted to the declared type.
    """

    names: FrozenSet[str]
    takes_all: bool

    @classmethod
    def of(cls, node_class: type) -> Optional["Validator"]:
        """The class's validator, None when it has no ``VALIDATE_INPUTS``; raises :class:`ClassError`."""
        function = getattr(node_class, "VALIDATE_INPUTS", None)
        if function is None:
            return None
        try:
            spec = inspect.getfullargspec(function)
        except TypeError as exc:
            raise ClassError(f"VALIDATE_INPUTS cannot be inspected: {exc}") from exc
        return cls(frozenset(spec.args), spec.varkw is not None)

    @property
    def called(self) -> bool:
        return bool(self.names) or self.takes_all

    @property
    def checks_types(self) -> bool:
        return "input_types" in self.names

    def owns(self, name: str) -> bool:
        """Whether the input's limits and choices are left to the function."""
        return self.takes_all or name in self.names

    def run(self, step: "Step", received: Dict[str, Any]) -> Optional[str]:
        """Call ``VALIDATE_INPUTS`` for ``step``; its complaint, or None when it returned True."""
        if not self.called:
            return None
        values: Dict[str, Any] = dict(step.literals)
        values.update({name: None for name in step.links})
        for name, kind in hidden_inputs(step.cls).items():
            make = _VALIDATION_HIDDEN.get(kind)
            values[name] = make(step.node_id) if make is not None else None
        kwargs = {name: value for name, value in values.items() if self.owns(name)}
        if self.checks_types:
            kwargs["input_types"] = dict(received)
        try:
            verdict = step.cls.VALIDATE_INPUTS(**kwargs)
        except Exception as exc:
            return f"VALIDATE_INPUTS failed: {type(exc).__name__}: {exc}"
        if verdict is True:
            return None
        return "VALIDATE_INPUTS returned False" if verdict is False else str(verdict)


# --------------------------------------------------------------------------- literals


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


def coerce_literal(spec: InputSpec, value: Any, check_limits: bool = True) -> Any:
    """Convert a literal to the input's type and check it; raises :class:`BadValue`.

    ``check_limits=False`` skips the min/max and combo checks (inputs that the class's
    ``VALIDATE_INPUTS`` checks itself, as in ComfyUI).
    """
    choices = spec.choices
    if choices is not None:
        if check_limits and value not in choices:
            shown = ", ".join(short(c, 40) for c in choices[:20]) + (", ..." if len(choices) > 20 else "")
            raise BadValue(f"input '{spec.name}' = {short(value)} is not one of the allowed values: {shown}")
        return value
    if spec.type == ANY_TYPE:
        return value
    if spec.type not in _CONVERTERS:
        raise BadValue(f"input '{spec.name}' ({spec.type}) must be linked to another node's output, "
                       f"got the literal {short(value)}")
    convert, expected = _CONVERTERS[spec.type]
    try:
        value = convert(value)
    except (ValueError, TypeError, OverflowError):
        raise BadValue(f"input '{spec.name}' expects {expected}, got {short(value)}") from None
    if check_limits and spec.type in ("INT", "FLOAT"):
        low, high = spec.options.get("min"), spec.options.get("max")
        if low is not None and value < low:
            raise BadValue(f"input '{spec.name}' = {value} is below the minimum {low}")
        if high is not None and value > high:
            raise BadValue(f"input '{spec.name}' = {value} is above the maximum {high}")
    return value


def unwrap(value: Any) -> Any:
    """Literal lists travel as ``{"__value__": [...]}`` because bare lists are links."""
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"]
    return value


def wrap(value: Any) -> Any:
    """The inverse of :func:`unwrap`: a list literal as ``{"__value__": [...]}``."""
    return {"__value__": value} if isinstance(value, list) else value


# --------------------------------------------------------------------------- links and order


def parse_link(value: list) -> Tuple[str, int]:
    """``[source id, output index]`` -> ``(str id, index)``; raises :class:`BadValue` if malformed."""
    if (len(value) == 2 and isinstance(value[0], (str, int)) and not isinstance(value[0], bool)
            and isinstance(value[1], int) and not isinstance(value[1], bool)):
        return str(value[0]), value[1]
    raise BadValue(f"{short(value)} is not a link [node_id, output_index]; "
                   'wrap literal lists as {"__value__": [...]}')


def links_of(node: dict) -> List[Tuple[str, int]]:
    """The well-formed links among a prompt node's inputs."""
    inputs = node.get("inputs")
    links = []
    for value in (inputs.values() if isinstance(inputs, dict) else ()):
        if isinstance(value, list):
            try:
                links.append(parse_link(value))
            except BadValue:
                continue
    return links


def topo_order(deps: Dict[str, List[str]]) -> Tuple[List[str], List[str]]:
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


def cycle_problem(cycle: List[str]) -> Problem:
    return Problem("dependency cycle: nodes " + ", ".join(cycle) + " need each other's outputs")


# --------------------------------------------------------------------------- one node


@dataclass
class Step:
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


def _class_problems(step: Step) -> List[Problem]:
    """What the runner cannot do with the class at all."""
    found = []
    output_is_list = getattr(step.cls, "OUTPUT_IS_LIST", None)
    if isinstance(output_is_list, (list, tuple)):
        output_is_list = any(output_is_list)
    if getattr(step.cls, "INPUT_IS_LIST", False) or output_is_list:
        found.append(step.problem("uses list execution (INPUT_IS_LIST/OUTPUT_IS_LIST), "
                                  "which the headless runner does not support"))
    function = getattr(step.cls, "FUNCTION", None)
    if not isinstance(function, str) or not callable(getattr(step.cls, function, None)):
        found.append(step.problem(f"class has no method FUNCTION = {function!r}"))
    return found


def _check_node(node_id: str, node: dict, cls: type, prompt: Prompt, classes: Registry,
                problems: List[Problem]) -> Step:
    """Check one node's inputs against its class; append problems, return its :class:`Step`."""
    class_type = node["class_type"]
    step = Step(node_id, class_type, node_title(node, cls, class_type), cls)
    try:
        specs = input_specs(cls)
        validator = Validator.of(cls)
    except (ClassError, TypeError, ValueError) as exc:
        problems.append(step.problem(str(exc)))
        return step
    found = _class_problems(step)
    inputs = node.get("inputs")
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict):
        found.append(step.problem(f"'inputs' must be an object, got {short(inputs)}"))
        inputs = {}
    received: Dict[str, Any] = {}
    for spec in specs:
        if spec.name in inputs:
            value = inputs[spec.name]
        elif spec.required and spec.default() is not MISSING:
            step.literals[spec.name] = spec.default()
            continue
        elif spec.required:
            found.append(step.problem(f"required input '{spec.name}' ({spec.type_name}) is missing"))
            continue
        else:
            continue
        try:
            if isinstance(value, list):
                check_types = validator is None or not validator.checks_types
                source, index = step.links[spec.name] = _check_link(spec, value, prompt, classes, check_types)
                received[spec.name] = return_types(classes[source])[index]
            else:
                owned = validator is not None and validator.owns(spec.name)
                step.literals[spec.name] = coerce_literal(spec, unwrap(value), check_limits=not owned)
        except BadValue as exc:
            found.append(step.problem(str(exc)))
    if validator is not None and not found:
        complaint = validator.run(step, received)
        if complaint is not None:
            found.append(step.problem(complaint))
    problems.extend(found)
    return step


def _check_link(spec: InputSpec, value: list, prompt: Prompt, classes: Registry,
                check_types: bool) -> Tuple[str, int]:
    """Check a link feeding ``spec``; return ``(source id, output index)`` or raise :class:`BadValue`."""
    source, index = parse_link(value)
    if source not in prompt:
        raise BadValue(f"input '{spec.name}' is linked to node {source}, which is not in the workflow")
    source_cls = classes.get(source)
    if source_cls is None:  # unknown type: reported on that node
        raise BadValue(f"input '{spec.name}' is linked to node {source}, whose type is unknown")
    outputs = return_types(source_cls)
    source_name = describe_node(source, prompt[source]["class_type"])
    if not 0 <= index < len(outputs):
        raise BadValue(f"input '{spec.name}' is linked to output {index} of {source_name}, "
                       f"which has {len(outputs)} output(s)")
    if check_types and not link_accepted(outputs[index], spec.type):
        raise BadValue(f"input '{spec.name}' expects {spec.type_name} but is linked to output {index} "
                       f"({type_name(outputs[index])}) of {source_name}")
    return source, index


# --------------------------------------------------------------------------- the whole prompt


@dataclass
class Plan:
    """A validated prompt: the nodes to run and their order."""

    steps: Dict[str, Step]
    order: List[str]


def is_output_node(cls: type) -> bool:
    """ComfyUI runs from the classes whose ``OUTPUT_NODE`` is True (the value True, not any true value)."""
    return getattr(cls, "OUTPUT_NODE", False) is True


def plan(prompt: Prompt, registry: Registry) -> Plan:
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
    outputs = [n for n, cls in classes.items() if is_output_node(cls)]
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
        stack.extend(src for src, _ in links_of(prompt[node_id]) if src in classes)
    steps = {n: _check_node(n, prompt[n], classes[n], prompt, classes, problems)
             for n in prompt if n in needed}
    order, cycle = topo_order({n: [src for src, _ in s.links.values()] for n, s in steps.items()})
    if cycle:
        problems.append(cycle_problem(cycle))
    if problems:
        raise GraphError.from_problems(problems)
    return Plan(steps, order)


def validate(prompt: Prompt, registry: Registry) -> None:
    """Check an API-format prompt; raise one :class:`GraphError` listing every problem.

    Checked: node types exist; links point at existing nodes and outputs of a type the input
    accepts (:func:`link_accepted`); required inputs are present (missing widgets get their
    default, see the module docstring); literals have the right type, lie within min/max and
    are allowed combo values; ``VALIDATE_INPUTS`` accepts them (:class:`Validator`); there is
    an output node and no dependency cycle. Only nodes upstream of output nodes are checked.
    """
    plan(prompt, registry)
