"""The layers of the pack: ``core/`` is the model library, under everything else.

Nothing under core/ imports the layers above it (``nodes/`` the ComfyUI adapters, ``headless/`` the runner,
``tools/``, ``training/``) or ComfyUI itself (``comfy``, ``folder_paths``, ``server``), in any form: absolute,
relative (``from ..nodes import x``, ``from .. import headless``), inside a function, or through
``importlib.import_module("...")`` with a literal name. And no module under core/ grows past 600 lines unless
its docstring says why, on a line starting ``Long because:``.
"""
import ast
from pathlib import Path
from typing import List, Optional, Sequence

import pytest

from conftest import ROOT

CORE = ROOT / "core"
#: the pack's own layers above core/
ABOVE_CORE = ("headless", "nodes", "tools", "training")
#: ComfyUI's modules (its ``nodes`` module is covered by the name above)
COMFYUI = ("comfy", "folder_paths", "server")
FORBIDDEN = frozenset(ABOVE_CORE + COMFYUI)
MAX_LINES = 600


def _package_of(path: Path, root: Path) -> List[str]:
    """``core/motion/ditto/train.py`` -> ``["core", "motion", "ditto"]`` (``__init__.py`` is its folder's)."""
    return list(path.relative_to(root).parent.parts)


def _relative_targets(node: ast.ImportFrom, package: Sequence[str]) -> List[List[str]]:
    """The pack-relative dotted paths a relative import names (``from .. import a, b`` names two)."""
    up = node.level - 1
    if up > len(package):
        return [["<above the pack>"]]
    base = list(package[:len(package) - up])
    if node.module:
        return [base + node.module.split(".")]
    return [base + [alias.name] for alias in node.names]


def _literal_import_name(node: ast.Call) -> Optional[str]:
    """The module name of ``importlib.import_module("x")`` / ``__import__("x")`` with a literal absolute name."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
        return first.value
    return None


def forbidden_imports(path: Path, root: Path, forbidden: frozenset = FORBIDDEN) -> List[str]:
    """``"core/x.py:12 imports nodes.base"`` for every import in ``path`` that reaches a ``forbidden`` layer."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(path, root)
    found = []

    def check(line: int, dotted: List[str], pack_relative: bool) -> None:
        # absolute names: the first part is a top-level module; relative: the first part under the pack root
        top = dotted[0]
        if top in forbidden or top == "<above the pack>":
            where = "the pack's " if pack_relative else ""
            found.append((line, f"{path.relative_to(root).as_posix()}:{line} imports {where}{'.'.join(dotted)}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(node.lineno, alias.name.split("."), False)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                check(node.lineno, (node.module or "").split("."), False)
            else:
                for target in _relative_targets(node, package):
                    check(node.lineno, target, True)
        elif isinstance(node, ast.Call):
            name = _literal_import_name(node)
            if name is not None:
                check(node.lineno, name.split("."), False)
    return [text for _, text in sorted(found)]


def core_modules() -> List[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def test_core_imports_no_layer_above_it_and_no_comfyui():
    modules = core_modules()
    assert len(modules) > 20, "core/ not found where expected"
    found = [line for path in modules for line in forbidden_imports(path, ROOT)]
    assert not found, "core/ must stay the model library:\n" + "\n".join(found)


#: the layers beside core/ and what each may not import: the node adapters know nothing of the runner, the
#: authoring tools or training; the runner gets the nodes only as the registry it is handed (run.py), and the
#: tools only inside ``run.py convert``, which loads them lazily by a relative name
SIDE_LAYERS = {"nodes": frozenset({"headless", "tools", "training"}),
               "headless": frozenset({"nodes", "training"} | set(COMFYUI))}


@pytest.mark.parametrize("layer", sorted(SIDE_LAYERS))
def test_nodes_and_headless_keep_to_their_layer(layer):
    modules = sorted(p for p in (ROOT / layer).rglob("*.py") if "__pycache__" not in p.parts)
    assert modules, f"{layer}/ not found"
    found = [line for path in modules for line in forbidden_imports(path, ROOT, SIDE_LAYERS[layer])]
    assert not found, f"{layer}/ reaches a layer it must not:\n" + "\n".join(found)


def test_the_import_check_sees_every_form(tmp_path):
    """The checker itself, on a made-up pack: every forbidden form is caught, the allowed ones are not."""
    deep = tmp_path / "core" / "motion"
    deep.mkdir(parents=True)
    (deep / "bad.py").write_text(
        "import comfy.model_management\n"                 # 1
        "from folder_paths import get_input_directory\n"  # 2
        "import server, os\n"                             # 3
        "from ...nodes.base import ANY\n"                 # 4  core/motion -> the pack root -> nodes
        "from ... import headless\n"                      # 5
        "from ...tools import layout as lay\n"            # 6
        "def f():\n"
        "    from ...training import loop\n"              # 8  inside a function
        "    import importlib\n"
        "    return importlib.import_module('nodes.base')\n"  # 10
        "from .... import x\n")                           # 11 above the pack itself
    (deep / "good.py").write_text(
        "import os, json\n"
        "import torch.nn as nn\n"
        "from . import dit\n"                             # core.motion.dit
        "from .. import errors, host\n"                   # core.errors, core.host
        "from ..errors import InputError\n"
        "from ...core import weights\n"                   # the pack's core: allowed
        "import importlib\n"
        "importlib.import_module('.nodes', __package__)\n"  # relative, resolved at run time: not judged
        "nodes = 1\n")
    bad = forbidden_imports(deep / "bad.py", tmp_path)
    assert [int(line.split(":")[1].split()[0]) for line in bad] == [1, 2, 3, 4, 5, 6, 8, 10, 11], bad
    assert "core/motion/bad.py:4 imports the pack's nodes.base" in bad
    assert "core/motion/bad.py:5 imports the pack's headless" in bad
    assert forbidden_imports(deep / "good.py", tmp_path) == []


def _long_without_reason(path: Path, root: Path = ROOT) -> Optional[str]:
    text = path.read_text(encoding="utf-8")
    count = len(text.splitlines())
    if count <= MAX_LINES:
        return None
    doc = ast.get_docstring(ast.parse(text)) or ""
    if any(line.strip().startswith("Long because:") for line in doc.splitlines()):
        return None
    return f"{path.relative_to(root).as_posix()}: {count} lines"


def test_core_modules_stay_short_or_say_why():
    long = [entry for entry in map(_long_without_reason, core_modules()) if entry is not None]
    assert not long, (f"modules over {MAX_LINES} lines without a 'Long because:' line in their docstring "
                      "(split them, or say why not):\n" + "\n".join(long))


@pytest.mark.parametrize("docstring, accepted", [
    ('"""A module.\n\nLong because: one algorithm, split it reads worse.\n"""\n', True),
    ('"""A module.\n\n    Long because: indented is fine.\n"""\n', True),
    ('"""A module that is long because: no reason given at the start of a line."""\n', False),
    ('# Long because: a comment is not the docstring\n', False),
])
def test_the_length_check_reads_the_docstring(tmp_path, docstring, accepted):
    path = tmp_path / "core" / "big.py"
    path.parent.mkdir()
    path.write_text(docstring + "x = 1\n" * MAX_LINES)
    assert (_long_without_reason(path, tmp_path) is None) is accepted
    path.write_text(docstring + "x = 1\n" * 10)  # short: no reason needed
    assert _long_without_reason(path, tmp_path) is None
