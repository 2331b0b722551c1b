"""Many renders from one JSON-lines file: one after another in this process, or on a Ray cluster (:mod:`.cluster`).

``python run.py batch JOBS.jsonl`` reads one job per line (blank lines and lines starting with ``#`` are skipped)::

    {"workflow": "workflows/api/liveportrait_ditto.api.json", "set": {"portrait.image": "anna.jpg"}, "output": "anna.mp4"}
    {"workflow": "workflows/liveportrait_ditto.json", "set": ["audio.audio=talks/en.wav", "motion.seed=3"], "output": "en/anna.mp4"}

``workflow``: a workflow file (UI or API format, as ``run.py run`` reads it); ``set``: its overrides, in ``--set``'s
syntax (a list of ``NODE.INPUT=VALUE``, or an object ``{"NODE.INPUT": value}``); ``output``: where the job's result
goes, relative to the output folder. A workflow that saves one file gets exactly that name (its extension must
match); one that saves several gets a folder of that name holding them. Relative paths are read from the current
folder, as ``run.py run`` reads them.

Every job is checked before any runs (the file's JSON, the workflow, its overrides, the graph, the output name:
inside the output folder, one job per name); a job that fails the check is reported and the others run.

Rules that hold however the jobs are spread:

* **Skipped when done**: a job whose output exists is not run again, so rerunning a batch after a crash or a
  failure runs only what is missing.
* **Nothing half-written**: each attempt renders into its own hidden folder
  (``<output>/.talkinghead-batch/<run>/<line>-<attempt>/``); the finished file is then hard-linked to its final name,
  which fails if the name exists: the output appears whole or not at all, and when two attempts of one job both
  finish (a worker that was given up on came back), the first one's file stays and the second is dropped.
* **Retries**: a job whose attempt fails (an error, or a worker that died or was killed) is tried again, on any
  worker, up to ``retries`` more times (default 1: two tries); then it is reported failed with its last error, and
  the rest of the batch goes on.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..core.errors import Cancelled, InputError, TalkingHeadError
from ..core.files import relative_parts
from ..core.host import ENV_OFFLINE, HOST
from .executor import execute, saved_files
from .overrides import absolutize, apply_overrides, override_dirs
from .segments import MUX, SEGMENT_NODE, join, segment_class, segment_prompt, split_node
from .ui_format import load_workflow
from .validation import plan

__all__ = ["Job", "Outcome", "LocalPool", "WORK_FOLDER", "read_jobs", "run_batch", "run_job", "summary"]

#: the hidden folder under the output folder where attempts render before their result is published
WORK_FOLDER = ".talkinghead-batch"
KEYS = {"workflow", "set", "output", "segments"}


@dataclass
class Job:
    """One line of a jobs file, checked: ``prompt`` the API-format prompt with the overrides applied, ``path`` the
    final output, ``input_dirs`` the folders its file names are read from; ``problem`` says why it cannot run."""
    line: int
    output: str
    path: Optional[Path] = None
    prompt: Optional[dict] = None
    input_dirs: List[str] = field(default_factory=list)
    problem: Optional[str] = None
    #: parts the render is split into (:mod:`.segments`), and the id of the MuxVideo it cuts
    segments: int = 1
    split_node: Optional[str] = None

    @property
    def name(self) -> str:
        return f"line {self.line} ({self.output or 'no output'})"

    @property
    def pending(self) -> bool:
        """Whether the job is to run: it passed the checks and its output is not there yet."""
        return self.problem is None and not self.path.exists()


@dataclass
class Outcome:
    """What became of a job: ``status`` ``done`` / ``skipped`` (its output existed) / ``failed``; ``attempts`` the
    most tries any of its tasks took, ``seconds`` the workers' time on it (all tries, all parts), ``worker`` the
    workers (``host:pid``) whose tasks succeeded."""
    job: Job
    status: str
    error: Optional[str] = None
    attempts: int = 0
    seconds: float = 0.0
    worker: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return {"line": self.job.line, "output": self.job.output, "path": str(self.job.path) if self.job.path else None,
                "status": self.status, "error": self.error, "attempts": self.attempts,
                "seconds": round(self.seconds, 3), "worker": self.worker}


# ----------------------------------------------------------------------------- host settings for one job
@contextlib.contextmanager
def host_settings(**hooks) -> Iterator[None]:
    """``HOST.configure(**hooks)`` for the duration of the block, the previous values put back afterwards."""
    saved = {name: getattr(HOST, name) for name in hooks}
    HOST.configure(**hooks)
    try:
        yield
    finally:
        HOST.configure(**saved)


@contextlib.contextmanager
def offline(flag: bool) -> Iterator[None]:
    """``TALKINGHEAD_OFFLINE=1`` for the block when ``flag`` (never downloading weights)."""
    before = os.environ.get(ENV_OFFLINE)
    if flag:
        os.environ[ENV_OFFLINE] = "1"
    try:
        yield
    finally:
        if flag:
            if before is None:
                os.environ.pop(ENV_OFFLINE, None)
            else:
                os.environ[ENV_OFFLINE] = before


# ----------------------------------------------------------------------------- reading the jobs file
def output_target(output_dir: Path, name: Any) -> Path:
    """The final path of a job's ``output`` name: relative, inside ``output_dir`` (the checks MuxVideo's
    ``filename_prefix`` gets, :func:`core.files.relative_parts`), not in the work folder, not too long."""
    if not isinstance(name, str):
        raise InputError("'output' must be a file name, relative to the output folder")
    parts = relative_parts(output_dir, name, "output", "a name like 'anna.mp4' or 'talks/anna.mp4'")
    if parts[0] == WORK_FOLDER:
        raise InputError(f"output {name!r} is inside {WORK_FOLDER}/, the batch's own work folder")
    long = [p for p in parts if len(p.encode("utf-8", "surrogatepass")) > 255 - 40]
    if long:   # file systems allow 255 bytes a name; a try's files add a prefix and a suffix to it
        raise InputError(f"output {name!r}: the name {long[0][:40]}... is too long ({len(long[0])} characters); "
                         f"keep each part of it under 200")
    return output_dir.joinpath(*parts)


def _overrides(value: Any) -> List[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{key}={item if isinstance(item, str) else json.dumps(item)}" for key, item in value.items()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise InputError("'set' must be a list of \"NODE.INPUT=VALUE\" strings or an object {\"NODE.INPUT\": value}")


def read_jobs(path, registry, output_dir, input_dirs: Sequence[Path] = (), upgrader=None,
              segments: int = 1) -> List[Job]:
    """The jobs of a JSON-lines file, each checked (see the module's notes); a job that cannot run carries its
    ``problem``. ``input_dirs``: the folders file names are read from (default: ``./input``, then ``.``), plus, per
    job, the folders of the files its overrides name by path. ``segments``: the parts a job's render is split into
    unless its line says (``"segments": N``). Raises only when the file itself cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")     # a byte-order mark (some editors add one) is not a job
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the jobs file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    output_dir = Path(output_dir).resolve()
    roots = [Path(d).resolve() for d in input_dirs] or [Path.cwd() / "input", Path.cwd()]
    workflows: Dict[str, dict] = {}
    taken: Dict[Path, int] = {}
    jobs: List[Job] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        job = Job(line=number, output="")
        jobs.append(job)
        try:
            try:
                entry = json.loads(line)
            except ValueError as exc:
                raise InputError(f"not valid JSON: {exc}") from exc
            if not isinstance(entry, dict):
                raise InputError("a job is a JSON object {\"workflow\": ..., \"set\": ..., \"output\": ...}")
            unknown = sorted(set(entry) - KEYS)
            if unknown:
                raise InputError(f"unknown key(s) {', '.join(map(repr, unknown))}; a job has "
                                 f"{', '.join(sorted(KEYS))}")
            job.output = entry.get("output") if isinstance(entry.get("output"), str) else ""
            job.path = output_target(output_dir, entry.get("output"))
            if job.path in taken:
                raise InputError(f"output {job.output!r} is also line {taken[job.path]}'s; each job needs its own")
            taken[job.path] = number
            workflow = entry.get("workflow")
            if not isinstance(workflow, str) or not workflow:
                raise InputError("'workflow' must name a workflow file")
            overrides = _overrides(entry.get("set"))
            if workflow not in workflows:
                workflows[workflow] = load_workflow(Path(workflow).expanduser(), registry, upgrader=upgrader)
            dirs = roots + [d for d in override_dirs(overrides) if d not in roots]
            job.input_dirs = [str(d) for d in dirs]
            job.prompt = apply_overrides(workflows[workflow], absolutize(overrides), registry=registry)
            with host_settings(input_dirs=lambda: [Path(d) for d in job.input_dirs]):
                plan(job.prompt, registry)
            job.segments = entry.get("segments", segments)
            if not isinstance(job.segments, int) or isinstance(job.segments, bool) or job.segments < 1:
                raise InputError(f"'segments' must be a whole number of parts, 1 or more, got {job.segments!r}")
            if job.segments > 1:
                job.split_node = split_node(job.prompt, registry)
        except TalkingHeadError as exc:
            job.problem = str(exc)
    return jobs


# ----------------------------------------------------------------------------- one job, on a worker
def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _publish(files: List[Path], out: Path, final: Path) -> Tuple[bool, Optional[str]]:
    """Put an attempt's result at ``final`` unless something is there: ``(published, error)``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if len(files) == 1:
        src = files[0]
        if src.suffix.lower() != final.suffix.lower():
            return False, (f"the workflow saved a {src.suffix or 'extensionless'} file ({src.name}) but the job's "
                           f"output is {final.name}; name the output with {src.suffix or 'no extension'}")
        try:
            os.link(src, final)              # atomic, and refuses an existing name
        except FileExistsError:
            return False, None
        except OSError:                      # a file system without hard links
            if final.exists():
                return False, None
            os.replace(src, final)
        return True, None
    if final.exists():
        return False, None
    os.rename(out, final)                    # several files: the attempt's folder becomes the output folder
    return True, None


def _publish_part(out: Path, parts: Path, index: int) -> bool:
    """Move a part's files (``k.mp4``, ``audio.wav`` from part 0, then ``k.json``, which says the part is
    complete) into the job's parts folder, none replacing a file an earlier attempt put there."""
    parts.mkdir(parents=True, exist_ok=True)
    if (parts / f"{index}.json").exists():
        return False
    for name in (f"{index}.mp4", "audio.wav", f"{index}.json"):
        if (out / name).is_file():
            try:
                os.link(out / name, parts / name)
            except FileExistsError:
                pass
    return True


def run_job(spec: Dict[str, Any], registry) -> Dict[str, Any]:
    """Run one attempt of a job in this process and publish its result; returns a plain dict (it crosses process
    boundaries): ``ok``, ``published`` (False when another attempt had already published), ``error``, ``seconds``,
    ``worker`` (``host:pid``).

    ``spec``: ``prompt``, ``output`` (the final path), ``work`` (this attempt's own folder, made here; removed when
    done), ``input_dirs``, ``models_dir`` (or None), ``offline``; for one part of a split render also ``segment``
    (``node``, ``index``, ``count``), and ``output`` is then the job's parts folder. The attempt's folder holds
    ``worker.json`` (host, pid) while it runs."""
    start = time.perf_counter()
    work = Path(spec["work"])
    out, temp = work / "out", work / "temp"
    result = {"ok": False, "published": False, "error": None, "worker": _worker_name()}
    try:
        out.mkdir(parents=True)
        (work / "worker.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        hooks = {"output_dir": lambda: out, "temp_dir": lambda: temp, "progress_factory": None,
                 "input_dirs": lambda: [Path(d) for d in spec["input_dirs"]]}
        if spec.get("models_dir"):
            hooks["models_dir"] = Path(spec["models_dir"])
        prompt, part = spec["prompt"], spec.get("segment")
        if part is not None:
            prompt = segment_prompt(prompt, part["node"], part["index"], part["count"])
            registry = {**registry, SEGMENT_NODE: segment_class(registry[MUX])}
        with host_settings(**hooks), offline(bool(spec.get("offline"))):
            done = execute(prompt, registry)
            files = [f for f in saved_files(done["outputs"]) if out in f.resolve().parents]
        if part is not None:
            result["published"] = _publish_part(out, Path(spec["output"]), part["index"])
            result["ok"] = True
        elif not files:
            result["error"] = ("the workflow saved no file: it needs a node that saves one (MuxVideo, SaveVideo, "
                               "LivePortraitRenderVideo...)")
        else:
            result["published"], result["error"] = _publish(files, out, Path(spec["output"]))
            result["ok"] = result["error"] is None
    except (Cancelled, KeyboardInterrupt):
        raise
    except TalkingHeadError as exc:
        result["error"] = str(exc)
    except OSError as exc:    # the output folder: full, read-only, a name too long, a file where a folder goes
        from ..core.video import write_hint

        where = exc.filename or spec["output"]
        result["error"] = f"cannot write {where}: {exc.strerror or exc} ({write_hint(exc, where)})"
    except Exception as exc:  # a bug: say where, the batch goes on
        result["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    finally:
        result["seconds"] = time.perf_counter() - start
        shutil.rmtree(work, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- the schedule
class LocalPool:
    """Runs attempts one at a time in this process (no Ray): the models stay loaded between jobs."""

    def __init__(self, registry) -> None:
        self.registry = registry
        self._queued: List[Tuple[dict, Any]] = []

    def free(self) -> int:
        return 0 if self._queued else 1

    def busy(self) -> bool:
        return bool(self._queued)

    def submit(self, spec: dict, tag: Any) -> None:
        self._queued.append((spec, tag))

    def wait(self) -> List[Tuple[Any, dict]]:
        spec, tag = self._queued.pop()
        return [(tag, run_job(spec, self.registry))]

    def cancel(self) -> None:
        self._queued.clear()

    def close(self) -> None:
        pass


Event = Callable[[str, Job, Dict[str, Any]], None]


def run_batch(jobs: Sequence[Job], pool, output_dir, *, retries: int = 1, models_dir: Optional[Path] = None,
              offline_weights: bool = False, progress: Optional[Callable[[int, int], None]] = None,
              on_event: Optional[Event] = None) -> List[Outcome]:
    """Run the jobs on ``pool`` (:class:`LocalPool` or :class:`.cluster.RayPool`), as the module's notes say;
    returns one :class:`Outcome` per job, in the file's order. A job split into parts (:mod:`.segments`) runs as
    that many tasks, spread over the workers like jobs, and is joined here when its last part is in.
    ``progress(finished, total)`` after each job; ``on_event(kind, job, info)`` with kind ``start`` (info:
    ``attempt``, ``part``, ``work``), ``retry``, ``done``, ``failed``, ``skipped``. Ctrl-C (or :class:`Cancelled`)
    stops the pool's workers and removes the attempts' folders; the outputs already published stay."""
    output_dir = Path(output_dir).resolve()
    events = on_event or (lambda kind, job, info: None)
    outcomes: Dict[int, Outcome] = {}
    queue: deque = deque()
    for job in jobs:
        if job.problem is not None:
            outcomes[job.line] = Outcome(job, "failed", error=job.problem)
            events("failed", job, {"error": job.problem, "attempts": 0})
        elif not job.pending:
            outcomes[job.line] = Outcome(job, "skipped")
            events("skipped", job, {})
        else:
            parts = [None] if job.segments <= 1 else list(range(job.segments))
            queue.extend((job, 1, part) for part in parts)
    total = len(jobs)
    if progress is not None:
        progress(len(outcomes), total)
    run_dir = output_dir / WORK_FOLDER / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    spent: Dict[int, float] = {}
    tries: Dict[int, int] = {}
    workers: Dict[int, set] = {}
    waiting: Dict[int, set] = {job.line: set(range(job.segments)) for job in jobs if job.segments > 1}

    def finish(job: Job, status: str, info: Dict[str, Any]) -> None:
        who = ", ".join(sorted(workers.get(job.line) or {info.get("worker") or "?"}))
        outcomes[job.line] = Outcome(job, status, error=info.get("error"), attempts=tries.get(job.line, 0),
                                     seconds=spent.get(job.line, 0.0), worker=who)
        events(status, job, info)
        if progress is not None:
            progress(len(outcomes), total)

    try:
        while queue or pool.busy():
            while queue and pool.free():
                job, attempt, part = queue.popleft()
                if job.line in outcomes:                 # another part of it failed for good
                    continue
                tag = f"{job.line}-{attempt}" if part is None else f"{job.line}-s{part}-{attempt}"
                work = run_dir / tag
                spec = {"prompt": job.prompt, "output": str(job.path), "work": str(work), "input_dirs": job.input_dirs,
                        "models_dir": str(models_dir) if models_dir else None, "offline": offline_weights}
                if part is not None:
                    spec["output"] = str(run_dir / f"{job.line}.parts")
                    spec["segment"] = {"node": job.split_node, "index": part, "count": job.segments}
                pool.submit(spec, (job, attempt, part, work))
                events("start", job, {"attempt": attempt, "part": part, "work": str(work)})
            for (job, attempt, part, work), result in pool.wait():
                shutil.rmtree(work, ignore_errors=True)   # a worker that died leaves its attempt behind
                spent[job.line] = spent.get(job.line, 0.0) + float(result.get("seconds") or 0.0)
                tries[job.line] = max(tries.get(job.line, 0), attempt)
                info = {**result, "attempt": attempt, "part": part}
                if job.line in outcomes:
                    continue
                if not result["ok"]:
                    if attempt <= retries:
                        queue.append((job, attempt + 1, part))
                        events("retry", job, info)
                    else:
                        finish(job, "failed", info)
                    continue
                workers.setdefault(job.line, set()).add(result.get("worker") or "?")
                if part is not None:
                    waiting[job.line].discard(part)
                    if waiting[job.line]:
                        continue
                    info = {**info, **_join(job, run_dir)}
                info["seconds"] = spent[job.line]
                finish(job, "done" if info.get("error") is None else "failed", info)
    except (KeyboardInterrupt, Cancelled):
        pool.cancel()
        raise Cancelled("batch cancelled; the outputs finished so far stay, a rerun does the rest")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()                    # only when no other batch is using it
    return [outcomes[job.line] for job in jobs]


def _join(job: Job, run_dir: Path) -> Dict[str, Any]:
    """Join a split job's parts into its output (here, on the batch's own machine): ``{"error": ...}``."""
    start = time.perf_counter()
    parts = run_dir / f"{job.line}.parts"
    joined = parts / f"joined{job.path.suffix or '.mp4'}"
    try:
        frames = join(parts, job.segments, joined, job.prompt)
        published, error = _publish([joined], parts, job.path)
    except TalkingHeadError as exc:
        return {"error": f"joining the {job.segments} parts failed: {exc}"}
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return {"error": error, "frames": frames, "published": published, "join_seconds": time.perf_counter() - start}


def summary(outcomes: Sequence[Outcome]) -> str:
    """A few lines for the terminal: the counts, then each failure with its error."""
    count = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    lines = [f"batch: {len(outcomes)} job(s): {count['done']} done, {count['skipped']} skipped (output exists), "
             f"{count['failed']} failed"]
    retried = [o for o in outcomes if o.status == "done" and o.attempts > 1]
    if retried:
        lines.append("retried and done: " + ", ".join(o.job.name for o in retried))
    for o in outcomes:
        if o.status == "failed":
            tries = f" after {o.attempts} tries" if o.attempts > 1 else ""
            first = (o.error or "unknown error").strip()
            lines.append(f"  FAILED {o.job.name}{tries}: {first}")
    return "\n".join(lines)


def write_report(path, outcomes: Sequence[Outcome]) -> None:
    """The outcomes as JSON (one object per job), written whole or not at all."""
    from ..core.files import atomic_write

    with atomic_write(Path(path), suffix=".partial.json") as tmp:
        Path(tmp).write_text(json.dumps([o.as_dict() for o in outcomes], indent=1) + "\n", encoding="utf-8")


def log(text: str) -> None:
    """A line on stderr that does not break a progress bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
