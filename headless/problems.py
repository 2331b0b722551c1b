"""What the runner reports when a workflow is wrong: :class:`Problem` (one thing, tied to a node) and
:class:`GraphError` (the exception, listing every problem found)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from ..core.errors import TalkingHeadError

__all__ = ["describe_node", "Problem", "GraphError", "BadValue", "short"]


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


class BadValue(Exception):
    """Inside the runner: a literal or link is invalid; the message is meant for the user and
    becomes a :class:`Problem` of the node."""


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
