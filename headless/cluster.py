"""A batch's jobs on a Ray cluster: :class:`RayPool`, the pool :func:`.batch.run_batch` uses with ``--ray``.

Each worker is a Ray actor: a process that loads the pack once and keeps its models loaded from job to job (the
pack's model cache), running one job at a time. On a cluster with GPUs each worker asks for one GPU (so there is one
per GPU); on CPUs only, for ``cpus`` cores, and torch uses that many threads. A worker that dies (killed, out of
memory, its machine gone) is replaced by a new one and its job goes back in the queue.

Ray is optional (``pip install -r requirements-ray.txt``); only this module imports it, and only when asked.

On a cluster of several machines, the pack, the model folder, the inputs and the output folder must be at the same
paths on every machine (a shared file system, or the same image on every node): the jobs carry absolute paths, and the
workers write their results straight into the output folder.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..core.errors import TalkingHeadError

__all__ = ["RayPool", "import_ray", "plan_workers"]

INSTALL = "pip install -r requirements-ray.txt (or: pip install 'ray>=2.44')"


def import_ray():
    """The ``ray`` module, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise TalkingHeadError(f"--ray needs Ray, which is not installed: {INSTALL}") from exc
    return ray


def _pack() -> Tuple[str, str]:
    """``(name, folder)`` of the pack this module belongs to (loaded under any name, as ComfyUI and run.py do)."""
    name = __name__.rsplit(".", 2)[0]
    return name, str(Path(sys.modules[name].__file__).resolve().parent)


def _worker_class():
    """The worker actor's class. Made here, inside a function, so that Ray sends it by value: a worker process
    cannot import the pack by its name (the pack is loaded from its folder under whatever name the driver gave it),
    so the class only uses the standard library until :meth:`setup` has loaded the pack from its folder."""

    class BatchWorker:
        def __init__(self, pack_name: str, pack_dir: str, threads: int) -> None:
            import importlib
            import importlib.util

            if pack_name not in sys.modules:
                if not os.path.isfile(os.path.join(pack_dir, "__init__.py")):
                    import socket

                    raise RuntimeError(f"the pack is not at {pack_dir} on {socket.gethostname()}: every machine of the "
                                       f"cluster needs it at the same path (shared storage, or the same image)")
                spec = importlib.util.spec_from_file_location(pack_name, os.path.join(pack_dir, "__init__.py"),
                                                              submodule_search_locations=[pack_dir])
                module = importlib.util.module_from_spec(spec)
                sys.modules[pack_name] = module
                spec.loader.exec_module(module)
            pack = sys.modules[pack_name]
            builtins = importlib.import_module(f"{pack_name}.headless.builtins")
            self.batch = importlib.import_module(f"{pack_name}.headless.batch")
            self.registry = {**builtins.BUILTIN_NODES, **pack.NODE_CLASS_MAPPINGS}
            if threads > 0:
                import torch

                torch.set_num_threads(threads)

        def ping(self) -> Dict[str, Any]:
            import socket

            return {"host": socket.gethostname(), "pid": os.getpid()}

        def run(self, spec: Dict[str, Any]) -> Dict[str, Any]:
            return self.batch.run_job(spec, self.registry)

    return BatchWorker


def plan_workers(total_cpus: float, total_gpus: float, workers: Optional[int] = None, cpus: Optional[float] = None,
                 gpus: Optional[float] = None) -> Tuple[int, float, float]:
    """``(workers, cpus, gpus)``: how many workers and what each asks for, on a cluster of ``total_cpus`` CPUs and
    ``total_gpus`` GPUs, from what was asked (None: the defaults of :class:`RayPool`). Refuses (with what to change)
    a plan the cluster cannot hold, which Ray would otherwise leave waiting for ever."""
    if workers is not None and workers < 1:
        raise TalkingHeadError("--workers must be at least 1")
    if (cpus is not None and cpus <= 0) or (gpus is not None and gpus < 0):
        raise TalkingHeadError("--cpus-per-worker must be more than 0 and --gpus-per-worker 0 or more")
    if gpus is None:
        gpus = 1.0 if total_gpus >= 1 else 0.0
    if workers is None:
        if gpus:
            workers = max(1, int(total_gpus // gpus))
        else:
            workers = max(1, int(total_cpus // (cpus or min(4.0, total_cpus))))
    if cpus is None:
        cpus = max(1.0, float(int(total_cpus // workers))) if gpus else max(1.0, min(4.0, total_cpus // workers))
    if gpus and workers * gpus > total_gpus:
        raise TalkingHeadError(f"{workers} worker(s) with {gpus:g} GPU each need {workers * gpus:g} GPUs; the "
                               f"cluster has {total_gpus:g} (fewer --workers, or --gpus-per-worker 0 for CPU workers)")
    if workers * cpus > total_cpus:
        raise TalkingHeadError(f"{workers} worker(s) with {cpus:g} CPU(s) each need {workers * cpus:g} CPUs; the "
                               f"cluster has {total_cpus:g} (fewer --workers or --cpus-per-worker)")
    return workers, float(cpus), float(gpus)


def _gist(exc: BaseException) -> str:
    """A Ray error in a line or two: its first line, and its last (where a worker's own exception is named)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


class RayPool:
    """``workers`` Ray actors running a batch's jobs (see the module's notes).

    ``address``: ``"auto"`` (Ray's own choice: the cluster ``ray start`` runs on this machine or ``RAY_ADDRESS``,
    else a new local one) or a cluster's address (``HOST:6379``). ``workers``: how many
    (default: one per GPU of the cluster, else one per ``cpus`` cores); ``cpus`` / ``gpus``: what each asks for
    (defaults: with GPUs, 1 GPU and the cluster's CPUs shared out; without, 4 cores or all there are).
    ``init``: more ``ray.init`` arguments (tests give ``num_cpus``)."""

    def __init__(self, address: str = "auto", workers: Optional[int] = None, cpus: Optional[float] = None,
                 gpus: Optional[float] = None, init: Optional[Dict[str, Any]] = None, debug: bool = False) -> None:
        plan_workers(1e9, 1e9, workers, cpus, gpus)         # the values asked for, checked before Ray starts
        ray = self.ray = import_ray()
        options = {"include_dashboard": False, "log_to_driver": debug, "configure_logging": debug,
                   **(init or {})}
        if not ray.is_initialized():
            self._owns_ray = True
            try:
                ray.init(address=None if address == "auto" else address, **options)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise TalkingHeadError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
        else:
            self._owns_ray = False
        try:
            resources = ray.cluster_resources()
            workers, cpus, gpus = plan_workers(float(resources.get("CPU", 1)), float(resources.get("GPU", 0)),
                                               workers, cpus, gpus)
        except BaseException:
            if self._owns_ray:
                ray.shutdown()
            raise
        self.workers, self.cpus, self.gpus = workers, cpus, gpus
        name, folder = _pack()
        worker = ray.remote(_worker_class()).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_concurrency=1)
        self._make = lambda: worker.remote(name, folder, int(cpus))
        self.idle: List[Any] = [self._make() for _ in range(workers)]
        self.running: Dict[Any, Tuple[Any, Any]] = {}
        self.replaced = 0

    def describe(self) -> str:
        what = f"{self.gpus:g} GPU, {self.cpus:g} CPU" if self.gpus else f"{self.cpus:g} CPU"
        return f"{self.workers} Ray worker(s), {what} each"

    def free(self) -> int:
        return len(self.idle)

    def busy(self) -> bool:
        return bool(self.running)

    def submit(self, spec: dict, tag: Any) -> None:
        actor = self.idle.pop()
        self.running[actor.run.remote(spec)] = (actor, tag)

    def wait(self) -> List[Tuple[Any, dict]]:
        ray = self.ray
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=None)
        out = []
        for ref in ready:
            actor, tag = self.running.pop(ref)
            try:
                result = ray.get(ref)
                self.idle.append(actor)
            except ray.exceptions.RayActorError as exc:   # the worker died: a new one takes its place
                self._replace(actor)
                result = {"ok": False, "published": False, "lost": True, "seconds": 0.0,
                          "error": f"the worker was lost ({type(exc).__name__}: {_gist(exc)})"}
            except ray.exceptions.RayError as exc:
                self.idle.append(actor)
                result = {"ok": False, "published": False, "seconds": 0.0,
                          "error": f"{type(exc).__name__}: {_gist(exc)}"}
            out.append((tag, result))
        return out

    def _kill(self, actor) -> None:
        try:
            self.ray.kill(actor)
        except Exception:  # already gone
            pass

    def _replace(self, actor) -> None:
        self._kill(actor)
        self.replaced += 1
        self.idle.append(self._make())

    def cancel(self) -> None:
        for actor, _ in self.running.values():
            self._kill(actor)
        self.running.clear()

    def close(self) -> None:
        for actor in self.idle + [a for a, _ in self.running.values()]:
            self._kill(actor)
        self.idle, self.running = [], {}
        if self._owns_ray:
            self.ray.shutdown()
