"""The command line: run a workflow JSON headlessly, manage weights, inspect media, convert workflows.

Started through ``run.py`` at the pack root, which loads the pack (under any folder name) and
passes its node registry (the pack's nodes plus :mod:`.builtins`) here, so this module never
imports the node layer itself::

    python run.py workflows/api/portrait_still_video.api.json --set portrait.image=me.jpg --set audio.audio=hi.wav
    python run.py weights list | weights where ID | weights fetch ID | weights convert SRC [DST]
    python run.py probe output/TalkingHead/talk_00001_.mp4
    python run.py convert workflows/api/NAME.api.json NAME.json   # (or back)
    python run.py live --portrait me.jpg      # live mode: open the printed URL, talk
    python run.py batch JOBS.jsonl [--ray auto|ADDRESS]   # many jobs, one after another or on a Ray cluster
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..core import weights
from ..core.errors import Cancelled, TalkingHeadError
from ..core.host import ENV_OFFLINE, HOST
from ..core.progress import TerminalBar
from .executor import execute, saved_files
from .overrides import absolutize, apply_overrides, override_dirs
from .ui_format import as_api, load_workflow, ui_to_api

COMMANDS = ("run", "batch", "weights", "probe", "nodes", "convert", "live")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description="Talking Head Toolkit, headless.")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="execute a workflow (API or UI format JSON)")
    r.add_argument("workflow", help="workflow JSON file")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input; NODE is a node id, title or unique class type. Repeatable.")
    r.add_argument("--input-dir", action="append", default=[], help="folder(s) file names are read from "
                   "(default: ./input, then the current folder)")
    r.add_argument("--output-dir", default=None, help="where results go (default: ./output)")
    r.add_argument("--models-dir", default=None, help="models root, with one sub-folder per family (default: ./models)")
    r.add_argument("--offline", action="store_true", help="never download weights")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--debug", action="store_true", help="print full tracebacks")
    b = sub.add_parser("batch", help="run many jobs from a JSON-lines file (workflow, overrides, output name per "
                       "line), one after another, or on a Ray cluster with --ray")
    b.add_argument("jobs", help="JOBS.jsonl: one {\"workflow\": ..., \"set\": ..., \"output\": ...} per line")
    b.add_argument("--ray", default=None, metavar="auto|ADDRESS", help="run the jobs on Ray workers: 'auto' (the "
                   "cluster on this machine, or a new local one) or a cluster's address")
    b.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU, else one per "
                   "--cpus-per-worker cores)")
    b.add_argument("--cpus-per-worker", type=float, default=None)
    b.add_argument("--gpus-per-worker", type=float, default=None)
    b.add_argument("--segments", type=int, default=1, help="split each render into this many parts, rendered on "
                   "different workers and joined without re-encoding (a job's \"segments\" overrides it)")
    b.add_argument("--retries", type=int, default=1, help="more tries for a job that fails (default 1)")
    b.add_argument("--report", default=None, metavar="FILE", help="write every job's outcome as JSON")
    b.add_argument("--input-dir", action="append", default=[], help="folder(s) file names are read from "
                   "(default: ./input, then the current folder)")
    b.add_argument("--output-dir", default=None, help="where the outputs go (default: ./output)")
    b.add_argument("--models-dir", default=None)
    b.add_argument("--offline", action="store_true", help="never download weights")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--debug", action="store_true", help="print full tracebacks and the Ray workers' logs")
    w = sub.add_parser("weights", help="list, locate, download or convert model files")
    w.add_argument("action", choices=["list", "where", "fetch", "convert"])
    w.add_argument("args", nargs="*")
    w.add_argument("--models-dir", default=None)
    pr = sub.add_parser("probe", help="show the streams of a media file")
    pr.add_argument("file")
    sub.add_parser("nodes", help="list the node types the runner knows")
    cv = sub.add_parser("convert", help="convert a workflow between UI format and API format")
    cv.add_argument("source", help="workflow JSON (UI or API format)")
    cv.add_argument("target", help="where to write the other format")
    cv.add_argument("--meta", default=None, help="groups/notes/positions for API -> UI (default: "
                    "NAME.meta.json beside NAME.api.json, when present)")
    lv = sub.add_parser("live", help="serve live mode: a portrait that answers a microphone or a TTS stream "
                        "(a web page and a WebSocket, see the README)")
    lv.add_argument("--portrait", action="append", required=True, metavar="PHOTO",
                    help="a portrait to offer (repeatable; the first is the default)")
    lv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                    "only; any other needs a token)")
    lv.add_argument("--port", type=int, default=8189)
    lv.add_argument("--token", default=None, help="the token clients on other machines must give (default "
                    "$TALKINGHEAD_LIVE_TOKEN; one is made up and printed when the host is not loopback)")
    lv.add_argument("--checkpoint", default="ditto/lmdm_v0.4_hubert.pth", help="the Ditto LMDM (models/ditto)")
    lv.add_argument("--variant", default="human", help="the LivePortrait model set (human or animal)")
    lv.add_argument("--device", default="auto")
    lv.add_argument("--precision", default="auto", help="auto (bf16 on CPUs with native bf16, fp16 on GPUs), "
                    "fp32, fp16, bf16")
    lv.add_argument("--detector", default="face-alignment sfd", help="how the face is found in the portrait")
    lv.add_argument("--size", type=int, default=512, help="the longest side of the frames sent (default 512)")
    lv.add_argument("--steps", type=int, default=10, help="DDIM steps per motion window (fewer when behind)")
    lv.add_argument("--latency", type=float, default=None, help="seconds between speech and its frames on "
                    "screen (default 1.5 on a GPU, 3 on a CPU)")
    lv.add_argument("--max-sessions", type=int, default=4)
    lv.add_argument("--models-dir", default=None)
    lv.add_argument("--offline", action="store_true", help="never download weights")
    lv.add_argument("--debug", action="store_true", help="print full tracebacks")
    return p


def cmd_live(args) -> int:
    import ipaddress
    import secrets

    from ..core.device import resolve_device
    from ..core.live import LiveConfig, load_parts
    from ..live.server import LiveServer, Portraits, serve

    token = args.token or os.environ.get("TALKINGHEAD_LIVE_TOKEN") or None
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and token is None:
        token = secrets.token_urlsafe(16)
    portraits = Portraits([Path(p).expanduser().resolve() for p in args.portrait])
    download = not args.offline
    print("loading the models ...", file=sys.stderr)
    parts = load_parts(args.variant, args.checkpoint, device=args.device, precision=args.precision,
                       download=download)
    latency = args.latency if args.latency is not None else (3.0 if resolve_device(args.device).type == "cpu"
                                                             else 1.5)
    config = LiveConfig(steps=args.steps, min_steps=min(2, args.steps), latency=latency)
    server = LiveServer(parts, portraits, token=token, max_sessions=args.max_sessions, config=config,
                        detector=args.detector, max_side=args.size, download=download)
    print("preparing the portrait ...", file=sys.stderr)
    server.source(None)                           # no face, or an unreadable photo: said now, not in the page
    query = f"?token={token}" if token else ""
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    serve(server, args.host, args.port,
          lambda port: print(f"live mode: open http://{shown}:{port}/talkinghead/live{query}  (Ctrl-C stops)",
                             flush=True))
    return 0


def _configure(args) -> None:
    """Point the host at the folders and the progress display the command line asks for."""
    hooks = {}
    if getattr(args, "models_dir", None):
        hooks["models_dir"] = Path(args.models_dir).resolve()
    if getattr(args, "offline", False):
        os.environ[ENV_OFFLINE] = "1"
    if getattr(args, "command", None) == "run":
        inputs = [Path(d).resolve() for d in args.input_dir] or [Path.cwd() / "input", Path.cwd()]
        extra = override_dirs(args.overrides)
        hooks["input_dirs"] = lambda: inputs + [r for r in extra if r not in inputs]
        if args.output_dir:
            out = Path(args.output_dir).resolve()
            hooks["output_dir"] = lambda: out
        if not args.quiet:
            hooks["progress_factory"] = lambda label="": TerminalBar(f"  {label}" if label else "  progress")
    HOST.configure(**hooks)


def cmd_run(args, registry: Dict[str, type], upgrader=None) -> int:
    notes: List[str] = []
    prompt = load_workflow(args.workflow, registry, upgrader=upgrader, notes=notes)
    if notes:
        print(f"note: {args.workflow} was saved by an older version of the pack; it was read as today's "
              f"nodes:", file=sys.stderr)
        for line in notes:
            print(f"  - {line}", file=sys.stderr)
    prompt = apply_overrides(prompt, absolutize(args.overrides), registry=registry)

    def on_node(node_id, class_type, title, index, count):
        if not args.quiet:
            print(f"[{index}/{count}] node {node_id}: {title or class_type}", file=sys.stderr)

    result = execute(prompt, registry, on_node=on_node)
    files = saved_files(result["outputs"])
    for f in files:
        print(f)
    for ui in result["outputs"].values():
        for text in (ui or {}).get("text", []):
            print(text, file=sys.stderr)
    return 0


def cmd_batch(args, registry: Dict[str, type], upgrader=None) -> int:
    from . import batch

    out = Path(args.output_dir or Path.cwd() / "output").resolve()
    if args.segments < 1:
        raise TalkingHeadError("--segments must be 1 or more")
    jobs = batch.read_jobs(args.jobs, registry, out, args.input_dir, upgrader=upgrader, segments=args.segments)
    if not jobs:
        raise TalkingHeadError(f"{args.jobs} holds no jobs")
    if args.retries < 0:
        raise TalkingHeadError("--retries must be 0 or more")
    # stdout lists the outputs made; what Ray prints about its workers (a killed one, say) goes to stderr
    todo = any(job.pending for job in jobs)
    with contextlib.redirect_stdout(sys.stderr):
        if args.ray and todo:                     # a rerun with everything done starts no cluster
            from .cluster import RayPool

            pool = RayPool(args.ray, workers=args.workers, cpus=args.cpus_per_worker, gpus=args.gpus_per_worker,
                           debug=args.debug)
            batch.log(f"batch: {len(jobs)} job(s) on {pool.describe()}")
        else:
            pool = batch.LocalPool(registry)
        bar = None if args.quiet else TerminalBar("  batch", unit="job")

        def on_event(kind, job, info):
            if kind == "retry":
                error = (info.get("error") or "").strip()
                batch.log(f"{job.name}: attempt {info['attempt']} failed, trying again: "
                          f"{error.splitlines()[0] if error else 'no message'}")
            elif kind == "done" and not args.quiet:
                batch.log(f"{job.name}: done in {info.get('seconds', 0):.1f} s ({info.get('worker')})")

        try:
            outcomes = batch.run_batch(jobs, pool, out, retries=args.retries,
                                       models_dir=Path(args.models_dir).resolve() if args.models_dir else None,
                                       offline_weights=args.offline, progress=bar, on_event=on_event)
        finally:
            if bar is not None:
                bar.close()
            pool.close()
    for o in outcomes:
        if o.status == "done":
            print(o.job.path)
    print(batch.summary(outcomes), file=sys.stderr)
    if args.report:
        batch.write_report(args.report, outcomes)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cmd_weights(args) -> int:
    table = weights.manifest()
    if args.action == "list":
        for mf in table.values():
            found = weights.find(mf)
            state = str(found) if found else "missing"
            print(f"{mf.id:42s} {mf.filename:40s} {mf.license:40s} {state}")
        return 0
    if not args.args:
        raise TalkingHeadError(f"'weights {args.action}' needs an argument")
    if args.action == "where":
        mf = weights.model_file(args.args[0])
        print(weights.missing_message(mf) if weights.find(mf) is None else weights.find(mf))
        return 0
    if args.action == "fetch":
        for fid in args.args:
            print(weights.resolve(fid, progress=TerminalBar(f"  {fid}")))
        return 0
    dst = args.args[1] if len(args.args) > 1 else None
    print(weights.convert_to_safetensors(args.args[0], dst))
    return 0


def _layout_engine():
    """``(api_to_ui, load_meta, meta_path)`` from ``tools/``: authoring code, which only this command
    needs and only a git checkout has (the registry package leaves tools/ out)."""
    tools = __name__.rsplit(".", 2)[0] + ".tools"
    try:
        from ..tools.layout import api_to_ui
        from ..tools.workflow_meta import load_meta, meta_path
    except ModuleNotFoundError as exc:
        if exc.name not in (tools, tools + ".layout", tools + ".workflow_meta"):
            raise
        raise TalkingHeadError("converting API format to UI format needs the layout engine in the pack's tools/ "
                               "folder, which only a git checkout of the pack has (UI -> API works without "
                               "it)") from exc
    return api_to_ui, load_meta, meta_path


def cmd_convert(args, registry: Dict[str, type]) -> int:
    """UI format -> API format, or API format -> UI format (laid out left to right, with the
    groups and notes of the workflow's ``NAME.meta.json`` sidecar or ``--meta``)."""
    try:
        data = json.loads(Path(args.source).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TalkingHeadError(f"cannot read workflow {args.source}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        out = ui_to_api(data, registry)
    else:
        api_to_ui, load_meta, meta_path = _layout_engine()
        meta_file = Path(args.meta) if args.meta else meta_path(args.source)
        meta = load_meta(meta_file) if args.meta or meta_file.is_file() else None
        out = api_to_ui(as_api(data, registry), registry, meta)
    Path(args.target).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(args.target)
    return 0


class Terminated(BaseException):
    """Raised in the main thread when the process gets SIGTERM (``kill``, ``timeout``, a job scheduler or a
    container stopping), so that the run unwinds like a cancel: ffmpeg stopped, temporary files removed. A
    BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way turns it into an error."""


def _stop_on_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into :class:`Terminated` while the command runs; returns what puts the old handler back.
    (Python's default ends the process at once, leaving a running ffmpeg and a hidden ``.partial`` file.)"""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[List[str]] = None, registry_factory: Optional[Callable[[], Dict[str, type]]] = None,
         upgrader=None) -> int:
    """The command line. ``registry_factory()`` gives the node classes; ``upgrader`` (the pack's
    ``nodes.legacy``, see :class:`~.ui_format.Upgrader`) reads workflows saved by older versions."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")  # `run.py workflow.json ...` is `run.py run workflow.json ...`
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    debug = getattr(args, "debug", False)
    restore = _stop_on_sigterm()
    try:
        _configure(args)
        if args.command == "run":
            return cmd_run(args, registry_factory(), upgrader)
        if args.command == "batch":
            return cmd_batch(args, registry_factory(), upgrader)
        if args.command == "weights":
            return cmd_weights(args)
        if args.command == "convert":
            return cmd_convert(args, registry_factory())
        if args.command == "live":
            return cmd_live(args)
        if args.command == "probe":
            from ..core.video import probe_json

            print(probe_json(args.file))
            return 0
        for node_id, cls in sorted(registry_factory().items()):
            print(f"{node_id:40s} {getattr(cls, 'DISPLAY_NAME', node_id)}")
        return 0
    except Terminated:
        print("\nstopped (SIGTERM)", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    except (Cancelled, KeyboardInterrupt):
        print("\ncancelled", file=sys.stderr)
        return 130
    except TalkingHeadError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        restore()
