"""Running processes as Linux's /proc lists them, for the checks that a run left no ffmpeg behind."""
from pathlib import Path
from typing import List, NamedTuple


class Process(NamedTuple):
    pid: int
    ppid: int
    name: str
    cmdline: str


def running_processes() -> List[Process]:
    """Every running process (none where there is no /proc); one that ends while it is read is skipped."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        # "pid (name) state ppid ...": the name may hold spaces and brackets, so split around the last ")"
        fields = stat[stat.rfind(")") + 2:].split()
        found.append(Process(int(entry.name), int(fields[1]), stat[stat.find("(") + 1:stat.rfind(")")], cmdline))
    return found
