"""The smallest backend that serves ComfyUI's real web frontend and runs prompts with this pack.

Used where no ComfyUI checkout can be installed (CI, authoring the shipped workflows): the
``comfyui-frontend-package`` wheel's static files are served unchanged, ``/api/object_info``
describes this pack's nodes and the headless runner's stand-ins for ComfyUI's own nodes the way
ComfyUI 0.8.0's server does (V1 nodes as ``server.node_info`` builds them, the V3 core nodes in
their V3 form), and ``POST /api/prompt`` validates and runs the prompt with the headless runner,
reporting over ``/ws`` with ComfyUI's messages (``execution_start``, ``executing``, ``progress``,
``executed``, ``execution_success`` / ``execution_error`` / ``execution_interrupted``).

What it leaves out (settings persistence beyond memory, user files, model browser, subgraph
library, jobs) answers as an empty ComfyUI would. ``tests/integration`` compares its
``/object_info`` with a real server's.

Standalone::

    python tools/frontend/standin.py --base-dir /tmp/th --port 8189   # then open http://127.0.0.1:8189
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import importlib
import json
import mimetypes
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
FRONTEND_VERSION = "1.35.9"   # what ComfyUI 0.8.0's requirements pin
COMFYUI_VERSION = "0.8.0"
#: the features the server announces (GET /features and the socket's feature_flags reply)
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}

#: ComfyUI's own nodes that the headless runner stands in for: what their /object_info says
#: besides the inputs (display name, category, module) and whether ComfyUI defines them with the
#: V3 schema (combos as ["COMBO", {"options": [...]}] and the V3 keys).
BUILTINS: Dict[str, dict] = {
    "LoadImage": {"display_name": "Load Image", "category": "image", "python_module": "nodes", "v3": False},
    "SaveImage": {"display_name": "Save Image", "category": "image", "python_module": "nodes", "v3": False,
                  "description": "Saves the input images to your ComfyUI output directory."},
    "PreviewImage": {"display_name": "Preview Image", "category": "image", "python_module": "nodes",
                     "v3": False, "description": "Saves the input images to your ComfyUI output directory."},
    "LoadAudio": {"display_name": "Load Audio", "category": "audio", "python_module": "comfy_extras.nodes_audio",
                  "v3": True},
    "LoadVideo": {"display_name": "Load Video", "category": "image/video",
                  "python_module": "comfy_extras.nodes_video", "v3": True},
    "GetVideoComponents": {"display_name": "Get Video Components", "category": "image/video",
                           "python_module": "comfy_extras.nodes_video", "v3": True,
                           "description": "Extracts all components from a video: frames, audio, and framerate."},
    "CreateVideo": {"display_name": "Create Video", "category": "image/video",
                    "python_module": "comfy_extras.nodes_video", "v3": True,
                    "description": "Create a video from images."},
    "SaveVideo": {"display_name": "Save Video", "category": "image/video",
                  "python_module": "comfy_extras.nodes_video", "v3": True,
                  "description": "Saves the input images to your ComfyUI output directory."},
}



def frontend_root() -> Path:
    """The static files of the installed ``comfyui-frontend-package``."""
    try:
        import comfyui_frontend_package
    except ImportError as exc:  # pragma: no cover - message for people running it by hand
        raise RuntimeError(f"pip install comfyui-frontend-package=={FRONTEND_VERSION}") from exc
    return Path(comfyui_frontend_package.__file__).resolve().parent / "static"


def load_registry():
    """(pack module, registry {class_type: class}, display names) of this checkout, loaded like run.py does."""
    sys.path.insert(0, str(ROOT))
    try:
        import run  # noqa: E402  (the pack's headless entry point)
    finally:
        sys.path.remove(str(ROOT))
    pack = run.load_pack()
    return pack, run.registry(), dict(getattr(pack, "NODE_DISPLAY_NAME_MAPPINGS", {}))


# --------------------------------------------------------------------------- /object_info


def _v3_input(spec: Any) -> Any:
    """A V1 input tuple as ComfyUI's V3 schema serialises it (combo lists become COMBO + options)."""
    spec = list(spec)
    kind, opts = spec[0], dict(spec[1]) if len(spec) > 1 else {}
    if isinstance(kind, (list, tuple)):
        extra = {k: v for k, v in opts.items()}
        opts = {"multiselect": False, "options": list(kind)}
        if "default" in extra:
            opts = {"default": extra.pop("default"), **opts}
        opts.update(extra)
        return ["COMBO", opts]
    if kind == "STRING":
        opts.setdefault("multiline", False)  # V3's String input always says so
    return [kind, opts]  # V3 always writes the options, empty or not


def node_info(class_type: str, cls: type, display: Dict[str, str], module: str) -> dict:
    """One ``/object_info`` entry, built the way ComfyUI 0.8.0's server builds it."""
    builtin = BUILTINS.get(class_type)
    types = cls.INPUT_TYPES()
    if builtin and builtin["v3"]:
        inputs = {}
        for section, entries in types.items():
            if section == "hidden":
                inputs[section] = {k: [v] if isinstance(v, str) else list(v) for k, v in entries.items()}
            else:
                inputs[section] = {k: _v3_input(v) for k, v in entries.items()}
    else:
        inputs = json.loads(json.dumps(types))  # tuples -> lists, as the JSON reply has them
    returns = list(getattr(cls, "RETURN_TYPES", ()))
    info: Dict[str, Any] = {
        "input": inputs,
        "input_order": {k: list(v.keys()) for k, v in types.items()},
        "output": returns,
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(returns))),
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or returns),
    }
    if builtin and builtin["v3"]:
        info["output_tooltips"] = list(getattr(cls, "OUTPUT_TOOLTIPS", [None] * len(returns)))
        info["output_matchtypes"] = None
    info.update({
        "name": class_type,
        "display_name": builtin["display_name"] if builtin else display.get(class_type, class_type),
        "description": builtin.get("description", "") if builtin else getattr(cls, "DESCRIPTION", ""),
        "python_module": builtin["python_module"] if builtin else module,
        "category": builtin["category"] if builtin else getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    })
    if builtin and builtin["v3"]:
        info.update({"deprecated": False, "experimental": False, "api_node": False})
    elif hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
    if not builtin:
        if getattr(cls, "DEPRECATED", False):
            info["deprecated"] = True
        if getattr(cls, "EXPERIMENTAL", False):
            info["experimental"] = True
    return info


# --------------------------------------------------------------------------- the server


def _status(code: int, text: str = ""):
    async def handler(request):
        return web.Response(status=code, text=text)
    return handler


def _json(reply):
    """A handler answering ``reply(request)`` as JSON."""
    async def handler(request):
        return web.json_response(reply(request))
    return handler


class StandIn:
    """The stand-in server on 127.0.0.1, run in a background thread.

    ``base_dir`` holds ``input/``, ``output/``, ``temp/`` and ``models/`` like ComfyUI's
    ``--base-directory``; ``folder_name`` is the name the pack is installed under (it appears in
    ``python_module`` and in the template URLs, as in ComfyUI).
    """

    def __init__(self, base_dir: Path, port: int = 0, folder_name: Optional[str] = None,
                 host: str = "127.0.0.1") -> None:
        self.base = Path(base_dir).resolve()
        for sub in ("input", "output", "temp", "models"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.folder_name = folder_name or ROOT.name
        self.host, self.port = host, port
        self.static = frontend_root()
        self.pack, self.registry, self.display = load_registry()
        self._configure_host()
        self.settings: Dict[str, Any] = {"Comfy.TutorialCompleted": True}
        self.userdata: Dict[str, bytes] = {}
        self.history: Dict[str, dict] = {}
        self.sockets: Dict[str, web.WebSocketResponse] = {}
        self.jobs: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self.pending: List[tuple] = []
        self.running: Optional[tuple] = None
        self.number = 0
        self.interrupted = threading.Event()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._thread: Optional[threading.Thread] = None
        self._worker: Optional[threading.Thread] = None
        self._started = threading.Event()
        self._error: Optional[BaseException] = None

    # ------------------------------------------------------------------ host hooks

    def _configure_host(self) -> None:
        host_mod = importlib.import_module(f"{self.pack.__name__}.core.host")
        errors = importlib.import_module(f"{self.pack.__name__}.core.errors")

        def check_interrupt():
            if self.interrupted.is_set():
                raise errors.Cancelled("Processing interrupted")

        def progress_factory(label=""):
            def report(done, total, preview=None):
                check_interrupt()
                job = self.running
                if job is not None:
                    self._send("progress", {"value": int(done), "max": int(total), "prompt_id": job[1],
                                            "node": self._node}, job[3])
            return report

        host_mod.HOST.configure(models_dir=self.base / "models", input_dirs=lambda: [self.base / "input"],
                                output_dir=lambda: self.base / "output", temp_dir=lambda: self.base / "temp",
                                check_interrupt=check_interrupt, progress_factory=progress_factory)
        self._graph = importlib.import_module(f"{self.pack.__name__}.headless")
        self._errors = errors
        self._node: Optional[str] = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "StandIn":
        self._thread = threading.Thread(target=self._serve, name="standin-http", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the stand-in server did not start: {self._error}")
        self._worker = threading.Thread(target=self._work, name="standin-exec", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        self.interrupted.set()
        self.jobs.put(None)
        if self.loop is not None and self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
            try:
                fut.result(timeout=10)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._worker is not None:
            self._worker.join(timeout=30)

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        for ws in list(self.sockets.values()):
            await ws.close()
        await self._runner.cleanup()

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self._runner = web.AppRunner(self._app(), access_log=None)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # report to start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    # ------------------------------------------------------------------ routes

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=100 * 1024 * 1024)
        api = web.RouteTableDef()
        api.get("/ws")(self.ws)
        api.get("/embeddings")(_json(lambda r: []))
        api.get("/extensions")(self.extensions)
        api.get("/system_stats")(self.system_stats)
        api.get("/features")(_json(lambda r: FEATURES))
        api.get("/object_info")(self.object_info)
        api.get("/object_info/{node_class}")(self.object_info_one)
        api.get("/prompt")(_json(lambda r: self.queue_info()))
        api.post("/prompt")(self.post_prompt)
        api.get("/queue")(self.get_queue)
        api.post("/queue")(self.post_queue)
        api.post("/interrupt")(self.interrupt)
        api.post("/free")(_status(200))
        api.get("/history")(self.get_history)
        api.get("/history/{prompt_id}")(self.get_history_one)
        api.post("/history")(self.post_history)
        api.get("/view")(self.view)
        api.post("/upload/image")(self.upload)
        api.get("/users")(_json(lambda r: {"storage": "server", "migrated": True}))
        api.get("/settings")(_json(lambda r: self.settings))
        api.get("/settings/{id}")(_json(lambda r: self.settings.get(r.match_info["id"])))
        api.post("/settings")(self.post_settings)
        api.post("/settings/{id}")(self.post_setting)
        api.get("/userdata")(_status(404, "Directory not found"))
        api.get("/v2/userdata")(_json(lambda r: []))
        api.get("/userdata/{file}")(self.get_userdata)
        api.post("/userdata/{file}")(self.post_userdata)
        api.get("/i18n")(_json(lambda r: {}))
        api.get("/workflow_templates")(self.workflow_templates)
        api.get("/global_subgraphs")(_json(lambda r: {}))
        api.get("/experiment/models")(_json(lambda r: []))
        api.get("/models")(_json(lambda r: []))
        api.get("/models/{folder}")(_json(lambda r: []))
        api.get("/jobs")(_json(lambda r: {"jobs": [], "pagination": {}}))
        # the pack's own routes, as its __init__ adds them to PromptServer.instance.routes
        web_routes = importlib.import_module(f"{self.pack.__name__}.nodes.web_routes")
        web_routes.add_template_route(api, self.folder_name)
        # ComfyUI's static route for the pack's templates comes first (it fails for folder names that
        # need quoting, where the pack's route above answers)
        templates = self._template_dir()
        if templates is not None:
            app.router.add_static(f"/api/workflow_templates/{self.folder_name}", templates)
        app.add_routes(api)            # ComfyUI answers with and without the /api prefix
        prefixed = web.RouteTableDef()
        for route in api:
            prefixed.route(route.method, "/api" + route.path)(route.handler)
        app.add_routes(prefixed)
        app.router.add_get("/internal/logs", _json(lambda r: ""))
        app.router.add_get("/internal/logs/raw", _json(lambda r: {"entries": [], "size": {}}))
        app.router.add_get("/internal/folder_paths", _json(lambda r: {}))
        # ComfyUI's own templates come from the comfyui-workflow-templates package, which the stand-in
        # does without: an empty index (no core templates), the pack's own still listed
        app.router.add_get(r"/templates/{index:index(\.[a-zA-Z-]+)?\.json}", _json(lambda r: []))
        app.router.add_get("/", self.index)
        app.router.add_static("/", self.static)
        return app

    async def index(self, request):
        return web.FileResponse(self.static / "index.html", headers={"Cache-Control": "no-cache"})

    async def extensions(self, request):
        files = sorted(self.static.glob("extensions/**/*.js"))
        return web.json_response(["/" + p.relative_to(self.static).as_posix() for p in files])

    async def system_stats(self, request):
        return web.json_response({
            "system": {"os": sys.platform, "ram_total": 0, "ram_free": 0, "comfyui_version": COMFYUI_VERSION,
                       "required_frontend_version": FRONTEND_VERSION, "installed_templates_version": None,
                       "required_templates_version": None, "python_version": sys.version,
                       "pytorch_version": "", "embedded_python": False, "argv": ["main.py"]},
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0,
                         "torch_vram_total": 0, "torch_vram_free": 0}]})

    @property
    def module(self) -> str:
        """The pack's ``python_module`` as ComfyUI reports it."""
        return f"custom_nodes.{self.folder_name}"

    def object_info_dict(self) -> Dict[str, dict]:
        return {name: node_info(name, cls, self.display, self.module) for name, cls in self.registry.items()}

    async def object_info(self, request):
        return web.json_response(self.object_info_dict())

    async def object_info_one(self, request):
        name = request.match_info["node_class"]
        if name not in self.registry:
            return web.json_response({})
        return web.json_response({name: node_info(name, self.registry[name], self.display, self.module)})

    def _template_dir(self) -> Optional[Path]:
        """The folder ComfyUI serves the pack's templates from (the first of its candidates that exists)."""
        return importlib.import_module(f"{self.pack.__name__}.nodes.web_routes").template_folder(ROOT)

    async def workflow_templates(self, request):
        folder = self._template_dir()
        names = sorted(p.stem for p in folder.glob("*.json")) if folder is not None else []
        return web.json_response({self.folder_name: names} if names else {})

    async def post_settings(self, request):
        self.settings.update(await request.json())
        return web.Response(status=200)

    async def post_setting(self, request):
        self.settings[request.match_info["id"]] = await request.json()
        return web.Response(status=200)

    async def get_userdata(self, request):
        data = self.userdata.get(request.match_info["file"])
        return web.Response(status=404) if data is None else web.Response(body=data)

    async def post_userdata(self, request):
        name = request.match_info["file"]
        self.userdata[name] = await request.read()
        return web.json_response(name)

    def _folder(self, kind: str) -> Optional[Path]:
        return {"output": self.base / "output", "input": self.base / "input", "temp": self.base / "temp"}.get(kind)

    async def view(self, request):
        q = request.rel_url.query
        folder = self._folder(q.get("type", "output"))
        name = q.get("filename", "")
        if folder is None or not name:
            return web.Response(status=400)
        path = (folder / q.get("subfolder", "") / name).resolve()
        if folder.resolve() not in path.parents or not path.is_file():
            return web.Response(status=404)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Type": ctype})

    async def upload(self, request):
        post = await request.post()
        item = post.get("image")
        if item is None or not getattr(item, "filename", None):
            return web.Response(status=400)
        name = os.path.basename(item.filename)
        sub = os.path.basename(str(post.get("subfolder", "")))
        folder = self._folder(str(post.get("type", "input"))) or self.base / "input"
        dest = folder / sub / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(item.file.read())
        return web.json_response({"name": name, "subfolder": sub, "type": str(post.get("type", "input"))})

    # ------------------------------------------------------------------ websocket

    async def ws(self, request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
        self.sockets[sid] = sock
        try:
            await sock.send_str(json.dumps({"type": "status", "data": {"status": self.queue_info(), "sid": sid}}))
            async for msg in sock:
                if msg.type == web.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        continue
                    if data.get("type") == "feature_flags":
                        await sock.send_str(json.dumps({"type": "feature_flags", "data": FEATURES}))
        finally:
            if self.sockets.get(sid) is sock:
                self.sockets.pop(sid, None)
        return sock

    def _send(self, event: str, data: dict, sid: Optional[str] = None) -> None:
        """Send one message to ``sid`` (or everybody) from any thread."""
        if self.loop is None:
            return
        text = json.dumps({"type": event, "data": data})

        async def go():
            targets = [self.sockets[sid]] if sid in self.sockets else ([] if sid else list(self.sockets.values()))
            for sock in targets:
                try:
                    await sock.send_str(text)
                except Exception:
                    pass

        asyncio.run_coroutine_threadsafe(go(), self.loop)

    # ------------------------------------------------------------------ queue

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": len(self.pending) + (self.running is not None)}}

    async def get_queue(self, request):
        return web.json_response({"queue_running": [list(self.running[:3]) + [{}, []]] if self.running else [],
                                  "queue_pending": [list(j[:3]) + [{}, []] for j in self.pending]})

    async def post_queue(self, request):
        body = await request.json()
        if body.get("clear"):
            self.pending.clear()
        for pid in body.get("delete", []):
            self.pending[:] = [j for j in self.pending if j[1] != pid]
        return web.Response(status=200)

    async def interrupt(self, request):
        self.interrupted.set()
        return web.Response(status=200)

    async def get_history(self, request):
        return web.json_response(self.history)

    async def get_history_one(self, request):
        pid = request.match_info["prompt_id"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def post_history(self, request):
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for pid in body.get("delete", []):
            self.history.pop(pid, None)
        return web.Response(status=200)

    def _node_errors(self, exc) -> dict:
        errors: Dict[str, dict] = {}
        for p in exc.problems:
            if p.node_id is None:
                continue
            entry = errors.setdefault(str(p.node_id), {"errors": [], "dependent_outputs": [],
                                                       "class_type": p.class_type})
            entry["errors"].append({"type": "value_not_valid", "message": p.message, "details": p.message,
                                    "extra_info": {}})
        return errors

    async def post_prompt(self, request):
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"type": "invalid_prompt", "message": "invalid JSON", "details": "",
                                                "extra_info": {}}, "node_errors": {}}, status=400)
        prompt = body.get("prompt")
        if not isinstance(prompt, dict):
            return web.json_response({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "",
                                                "extra_info": {}}, "node_errors": {}}, status=400)
        try:
            self._graph.validate(prompt, self.registry)
        except self._graph.GraphError as exc:
            node_errors = self._node_errors(exc)
            return web.json_response({"error": {"type": "prompt_outputs_failed_validation",
                                                "message": "Prompt outputs failed validation",
                                                "details": str(exc), "extra_info": {}},
                                      "node_errors": node_errors}, status=400)
        pid = body.get("prompt_id") or str(uuid.uuid4())
        self.number += 1
        job = (self.number, pid, prompt, body.get("client_id"), body.get("extra_data") or {})
        self.pending.append(job)
        self.jobs.put(job)
        self._send("status", {"status": self.queue_info()})
        return web.json_response({"prompt_id": pid, "number": job[0], "node_errors": {}})

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job not in self.pending:
                continue  # deleted from the queue
            self.pending.remove(job)
            self.interrupted.clear()
            self.running = job
            try:
                self._execute(job)
            finally:
                self.running = None
                self._node = None
                self._send("status", {"status": self.queue_info()})

    def _execute(self, job: tuple) -> None:
        number, pid, prompt, sid, extra = job
        messages: List[list] = []

        def say(event: str, data: dict) -> None:
            data = {**data, "prompt_id": pid, "timestamp": int(time.time() * 1000)}
            messages.append([event, data])
            self._send(event, data, sid)

        say("execution_start", {})
        say("execution_cached", {"nodes": []})
        entry = {"prompt": [number, pid, prompt, extra, []], "outputs": {},
                 "status": {"status_str": "success", "completed": False, "messages": messages}, "meta": {}}

        def on_node(node_id, class_type, title, index, count):
            self._node = node_id
            self._send("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid}, sid)

        pnginfo = (extra or {}).get("extra_pnginfo")
        try:
            result = self._graph.execute(copy.deepcopy(prompt), self.registry, on_node=on_node,
                                         extra_pnginfo=pnginfo)
        except self._errors.Cancelled:
            say("execution_interrupted", {"node_id": self._node, "node_type": None, "executed": []})
            entry["status"].update(status_str="error", completed=False)
        except Exception as exc:  # the node's failure, as ComfyUI reports it
            node_id = getattr(exc, "node_id", None) or self._node
            node = prompt.get(str(node_id), {}) if node_id is not None else {}
            cause = exc.__cause__ or exc
            say("execution_error", {"node_id": node_id, "node_type": node.get("class_type"), "executed": [],
                                    "exception_message": str(exc), "exception_type": type(cause).__name__,
                                    "traceback": traceback.format_exception(cause), "current_inputs": {},
                                    "current_outputs": {}})
            entry["status"].update(status_str="error", completed=False)
        else:
            for node_id, ui in result["outputs"].items():
                entry["outputs"][node_id] = ui
                self._send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                        "prompt_id": pid}, sid)
            say("execution_success", {})
            entry["status"]["completed"] = True
        self.history[pid] = entry
        self._send("executing", {"node": None, "prompt_id": pid}, sid)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", required=True, help="folder with input/, output/, temp/, models/")
    parser.add_argument("--port", type=int, default=8189)
    parser.add_argument("--folder-name", default=None, help="the pack's folder name as installed")
    args = parser.parse_args(argv)
    server = StandIn(Path(args.base_dir), args.port, args.folder_name).start()
    print(f"serving ComfyUI's frontend {FRONTEND_VERSION} on {server.url} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
