"""The training command line (:mod:`.cli`): ``python -m training ...`` from the pack's folder, or
``python /path/to/the/pack/training ...`` from anywhere.

Run that way, this folder is a top-level package (or none), while its modules import the pack's
``core`` as their sibling (``from ..core ...``). So the pack is loaded first, the way ``run.py``
loads it, and the command line is taken from ``<pack>.training.cli``.
"""
import importlib
import importlib.util
import sys
from pathlib import Path


def _load_cli():
    if __package__ and "." in __package__:          # already a sub-package of a loaded pack
        return importlib.import_module(".cli", __package__)
    here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        # `python .../training` put this folder first on sys.path: its module names (cli, common,
        # dataset, ...) would hide any other module of the same name
        del sys.path[0]
    spec = importlib.util.spec_from_file_location("_talkinghead_run", here.parent / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return importlib.import_module(f"{run.load_pack().__name__}.training.cli")


if __name__ == "__main__":
    sys.exit(_load_cli().main())
