"""The headless runner: ComfyUI workflows run in this process, without a ComfyUI install.

``run.py`` at the pack root loads the pack and hands :mod:`.cli` a registry of node classes (the
pack's nodes plus :mod:`.builtins`, stand-ins for the ComfyUI core nodes our workflows use). Like
``nodes/``, this package sits on top of ``core/`` and is never imported by it; it reaches the pack's
nodes only through the registry it is handed.

* :mod:`.validation` checks an API-format prompt by ComfyUI 0.8.0's rules (``validate``);
* :mod:`.executor` runs it (``execute``);
* :mod:`.overrides` applies ``--set NODE.INPUT=VALUE``;
* :mod:`.ui_format` reads UI-format (editor) workflows and workflow files;
* :mod:`.problems` and :mod:`.specs`: the error type and the reading of node classes they share;
* :mod:`.cli`: the command line; :mod:`.builtins`: the stand-in nodes.

Laying a workflow out for the editor (API -> UI format) is authoring work: ``tools/layout.py``.
"""
from .executor import execute
from .overrides import apply_overrides
from .problems import GraphError, Problem, describe_node
from .specs import InputSpec, input_specs
from .ui_format import as_api, declared_inputs, load_workflow, ui_to_api
from .validation import link_accepted, validate

__all__ = ["execute", "validate", "link_accepted", "apply_overrides", "GraphError", "Problem", "describe_node",
           "InputSpec", "input_specs", "ui_to_api", "as_api", "load_workflow", "declared_inputs"]
