"""What a node class declares, read the way ComfyUI reads it: the inputs of ``INPUT_TYPES()``
(:class:`InputSpec`), the hidden inputs, ``RETURN_TYPES``, the title a node is shown with.

Node classes follow the classic V1 node API (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``,
``OUTPUT_NODE``, optional ``VALIDATE_INPUTS``); a *registry* maps each ``class_type`` to its class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = ["Registry", "Prompt", "InputSpec", "ClassError", "input_specs", "hidden_inputs", "return_types",
           "type_name", "display_name", "node_title", "MISSING", "WIDGET_TYPES", "CONTROL_VALUES"]

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


class _Missing:
    """The marker for "no value" (None is a value a widget may hold)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


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
        """The value used when a widget is missing: ``default``, a combo's first choice, or MISSING."""
        if not self.is_widget:
            return MISSING
        if "default" in self.options:
            return self.options["default"]
        choices = self.choices
        return choices[0] if choices else MISSING

    def placeholder(self) -> Any:
        """A widget value for the UI format when the prompt gives none (e.g. the input is linked)."""
        value = self.default()
        if value is not MISSING:
            return value
        return {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False}.get(self.type, "")


class ClassError(Exception):
    """A registry class does not follow the node API (the message names what is wrong)."""


def input_specs(cls: type) -> List[InputSpec]:
    """The required then optional inputs declared by ``cls.INPUT_TYPES()``, in order."""
    try:
        declared = cls.INPUT_TYPES()
    except Exception as exc:  # a broken class must not crash validation of the rest
        raise ClassError(f"INPUT_TYPES() failed: {type(exc).__name__}: {exc}") from exc
    specs = []
    for section, required in (("required", True), ("optional", False)):
        for name, entry in (declared.get(section) or {}).items():
            if not isinstance(entry, (list, tuple)) or not entry:
                raise ClassError(f"INPUT_TYPES() declares input {name!r} as {entry!r}, not (type, options)")
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            specs.append(InputSpec(name, entry[0], options, required))
    return specs


def hidden_inputs(cls: type) -> Dict[str, str]:
    """Hidden input name -> kind ("UNIQUE_ID", "PROMPT", ...)."""
    hidden = cls.INPUT_TYPES().get("hidden") or {}
    return {name: kind[0] if isinstance(kind, (list, tuple)) else kind for name, kind in hidden.items()}


def return_types(cls: type) -> tuple:
    return tuple(getattr(cls, "RETURN_TYPES", ()) or ())


def type_name(declared: Any) -> str:
    """A declared socket type as messages and the editor show it (``COMBO`` for choice lists)."""
    return "COMBO" if isinstance(declared, (list, tuple)) else str(declared)


def display_name(cls: Optional[type], class_type: str) -> str:
    return getattr(cls, "DISPLAY_NAME", None) or class_type


def node_title(node: dict, cls: Optional[type], class_type: str) -> str:
    """A prompt node's ``_meta.title``, else its class's display name, else its type."""
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    return title or display_name(cls, class_type)
