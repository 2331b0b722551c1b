#!/usr/bin/env python3
"""Headless entry point: ``python run.py WORKFLOW.json [--set NODE.INPUT=VALUE ...]``.

Loads this folder as a package the way ComfyUI does (so the folder may have any name) and hands
its nodes, plus stand-ins for the ComfyUI core nodes our workflows use (``headless/builtins.py``),
to ``headless/cli.py``. ``python run.py --help`` lists the other commands (weights, probe, nodes,
convert).
"""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "talkinghead_pack"


def load_pack(name: str = PACKAGE):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def registry():
    pack = load_pack()
    builtins = importlib.import_module(f"{pack.__name__}.headless.builtins")
    return {**builtins.BUILTIN_NODES, **pack.NODE_CLASS_MAPPINGS}


def upgrader():
    """The pack's reader of workflows saved by its older versions (``nodes/legacy.py``)."""
    return importlib.import_module(f"{load_pack().__name__}.nodes.legacy")


if __name__ == "__main__":
    cli = importlib.import_module(f"{load_pack().__name__}.headless.cli")
    sys.exit(cli.main(sys.argv[1:], registry, upgrader()))
