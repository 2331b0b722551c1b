"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""
import json
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so the scripts can `from core import ...`


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20


def report(results: dict, json_path=None) -> None:
    """Print the results as JSON and, if asked, write them to ``json_path``."""
    text = json.dumps(results, indent=1)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
