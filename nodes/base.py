"""Shared helpers of the ComfyUI adapters: registration (declared inputs, the finite-input guard every node
gets), loading a model for the length of a node, file-name inputs, progress."""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable, Dict, Iterator, Optional, Set, TypeVar

from ..core import checks
from ..core.cache import CACHE
from ..core.host import HOST
from ..core.host_files import (IMAGE_EXTENSIONS, file_metadata, list_input_files,  # noqa: F401 (re-exported)
                               resolve_input_file, save_path, validate_input_file, video_preview)
from .specs import (EMBEDS_TYPE, FRAMES_TYPE, LIVEPORTRAIT_TYPE, MOTION_TYPE,  # noqa: F401 (re-exported)
                    PORTRAIT_TYPE, input_types)

PREFIX = "TalkingHead_"
CATEGORY = "TalkingHead"
T = TypeVar("T")
#: socket type -> the :mod:`core.checks` kind its values are checked as (finite or refused)
FINITE_CHECKS = {"AUDIO": "audio", "IMAGE": "image", "FLOAT": "number", PORTRAIT_TYPE: "portrait",
                 MOTION_TYPE: "motion", EMBEDS_TYPE: "embeddings"}


class AnyType(str):
    """A socket type that connects to every other one.

    ComfyUI's server first compares socket types with ``!=``, and this type is never unequal to
    anything. ComfyUI 0.8.0 also takes a plain ``"*"`` on either side as "any"; servers from before
    that rule only know this ``__ne__`` override, which is why the pack's wildcard sockets use it.
    """

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


ANY = AnyType("*")

NODE_CLASS_MAPPINGS: Dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: Dict[str, str] = {}


def register(name: str, display: Optional[str] = None, category: Optional[str] = None):
    """Class decorator: publish a node as ``<PREFIX><name>`` with a plain display name (``name`` unless
    given), in ``TalkingHead/<category>``, described by its docstring (one paragraph, shown as the node's
    description), its inputs read from its ``INPUTS`` declaration (see :mod:`nodes.specs`), its outputs
    from ``OUTPUTS`` (``(name, type, tooltip)`` each), its FUNCTION (``run`` unless it says otherwise)
    guarded by :func:`finite_guard`."""
    display = display or name

    def wrap(cls):
        if category is not None:
            cls.CATEGORY = f"{CATEGORY}/{category}"
        if "DESCRIPTION" not in cls.__dict__ and cls.__doc__:
            cls.DESCRIPTION = " ".join(cls.__doc__.split())
        if "INPUTS" in cls.__dict__ and "INPUT_TYPES" not in cls.__dict__:
            cls.INPUT_TYPES = classmethod(lambda c: input_types(c.INPUTS))
        if "OUTPUTS" in cls.__dict__:  # ((name, type, tooltip), ...) -> ComfyUI's three tuples
            cls.RETURN_NAMES = tuple(name for name, _, _ in cls.OUTPUTS)
            cls.RETURN_TYPES = tuple(kind for _, kind, _ in cls.OUTPUTS)
            cls.OUTPUT_TOOLTIPS = tuple(tip for _, _, tip in cls.OUTPUTS)
        if not hasattr(cls, "FUNCTION"):
            cls.FUNCTION = "run"
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
        # None: an output made only when connected, and nothing was (a stream's batches are checked by its
        # producer as they are made; FRAMES is not among FINITE_CHECKS)
        if kind is not None and value is not None:
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


def linked_outputs(prompt, unique_id) -> Optional[Set[int]]:
    """The indices of this node's outputs that some node of the graph takes as an input, read from the hidden
    PROMPT (the API-format graph) and UNIQUE_ID inputs (:data:`nodes.specs.GRAPH_HIDDEN`); None when that is
    unknown (a direct call without them, a node id the graph does not have), so the caller makes every output."""
    if not isinstance(prompt, dict) or unique_id is None or str(unique_id) not in {str(k) for k in prompt}:
        return None
    me = str(unique_id)
    found: Set[int] = set()
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for value in (inputs or {}).values():
            # a link is [source node id, output index]
            if isinstance(value, (list, tuple)) and len(value) == 2 and str(value[0]) == me \
                    and isinstance(value[1], int) and not isinstance(value[1], bool):
                found.add(value[1])
    return found


def image_output(stream, slot: int, linked: Optional[Set[int]], what: str, alternative: str):
    """The IMAGE output ``slot`` made from ``stream`` (a :class:`core.frames.FrameStream`) when something is
    connected to it (or when ``linked`` is None: unknown), else None. Refused before any work
    (:class:`core.errors.FramesTooLargeError`, naming ``what``, the size and ``alternative``) when the whole video
    would not fit in the free memory."""
    if linked is not None and slot not in linked:
        return None
    return stream.materialize(what, alternative)


#: the key :func:`mark_linked_outputs` adds to the inputs of a node whose IMAGE outputs are made only when linked
LINKS_KEY = "talkinghead_linked_outputs"


def _uses_links(cls) -> bool:
    """Whether a node class reads its linked outputs (it asks for the hidden PROMPT and UNIQUE_ID)."""
    found = cls.__dict__.get("_USES_LINKS")
    if found is None:
        hidden = set(cls.INPUT_TYPES().get("hidden", {}).values())
        found = cls._USES_LINKS = {"PROMPT", "UNIQUE_ID"} <= hidden
    return found


def mark_linked_outputs(prompt) -> None:
    """Write into ``prompt`` (API format, in place), for each of this pack's nodes that makes IMAGE outputs only
    when they are connected, which of its outputs are: ``inputs[LINKS_KEY] = "0,2"``.

    ComfyUI caches a node's outputs under a key made of its inputs, not of which of its outputs are
    connected: without this, a graph run first with only the frame stream connected, then again with the
    IMAGE output connected too, would hand the cached ``None`` on. The key is not a declared input, so
    ComfyUI's validation and the node's call ignore it; only the cache key sees it. Installed as a
    ``PromptServer`` on-prompt handler (:mod:`nodes.web_routes`), so it runs on every queued prompt."""
    if not isinstance(prompt, dict):
        return
    for node_id, node in prompt.items():
        cls = NODE_CLASS_MAPPINGS.get(node.get("class_type")) if isinstance(node, dict) else None
        if cls is None or not _uses_links(cls) or not isinstance(node.get("inputs"), dict):
            continue
        linked = linked_outputs(prompt, node_id) or set()
        node["inputs"][LINKS_KEY] = ",".join(str(i) for i in sorted(linked))


@contextlib.contextmanager
def using(family: str, keep_loaded: bool, load: Optional[Callable[[], T]] = None) -> Iterator[Optional[T]]:
    """Load a model for the length of a node: ``with using("fom", keep, lambda: get_fom(...)) as model``
    (without ``load``, for a core call that loads the family itself). Unless ``keep_loaded``, the family is
    unloaded from the cache when the block ends, also on an error or a cancel (a failed load has nothing
    to unload)."""
    model = load() if load is not None else None
    try:
        yield model
    finally:
        if not keep_loaded:
            CACHE.unload(family)


def progress(label: str = ""):
    """The host's progress callback for one loop of a node (a ComfyUI bar, a terminal bar or None)."""
    return HOST.progress(label)
