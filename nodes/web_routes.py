"""What the pack adds to ComfyUI's server: an HTTP route for its templates, an on-prompt hook that puts
which outputs of our nodes are connected into their cache key (:func:`on_prompt`), and live mode's routes
(:func:`add_live_routes`: the page, its info and the WebSocket of :mod:`live.protocol`).

ComfyUI serves a pack's workflow templates with an aiohttp static route at
``/api/workflow_templates/<folder name>/``. aiohttp keeps such a prefix URL-encoded and compares
it with the decoded request path, so a pack installed under a folder name with a space or another
character that needs quoting (``ComfyUI-Talking Head.toolkit (it)``) gets 404 for every template
and thumbnail. The route below answers those requests for this pack only; ComfyUI's own static
route, registered earlier, still wins wherever it works.
"""
from __future__ import annotations

from pathlib import Path

PACK_DIR = Path(__file__).resolve().parent.parent
#: the folder ComfyUI serves templates from: the first of its candidates that exists in the pack
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
_TYPES = {".json": "application/json", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
          ".webp": "image/webp", ".mp4": "video/mp4", ".webm": "video/webm", ".mp3": "audio/mpeg"}


def template_folder(pack_dir: Path = PACK_DIR):
    for name in TEMPLATE_FOLDERS:
        if (pack_dir / name).is_dir():
            return pack_dir / name
    return None


def add_template_route(routes, folder_name: str, pack_dir: Path = PACK_DIR) -> bool:
    """Register ``GET /workflow_templates/{module}/{file}`` on an aiohttp ``RouteTableDef`` (ComfyUI's
    ``PromptServer.instance.routes``, which ComfyUI also serves under ``/api``): the file of this pack's
    template folder when ``module`` is ``folder_name``, else 404. Returns False when there is no
    template folder."""
    from aiohttp import web

    folder = template_folder(pack_dir)
    if folder is None:
        return False
    root = folder.resolve()

    @routes.get("/workflow_templates/{module}/{file}")
    async def serve_template(request):
        if request.match_info["module"] != folder_name:
            raise web.HTTPNotFound()
        name = request.match_info["file"]
        path = (root / name).resolve()
        if path.parent != root or not path.is_file() or path.suffix.lower() not in _TYPES:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": _TYPES[path.suffix.lower()]})

    return True


def on_prompt(json_data):
    """ComfyUI's on-prompt hook: mark which outputs of our nodes are linked (:func:`nodes.base.mark_linked_outputs`,
    part of their cache key); the request is returned as it came otherwise."""
    from .base import mark_linked_outputs

    if isinstance(json_data, dict):
        mark_linked_outputs(json_data.get("prompt"))
    return json_data


#: the token clients on other machines give to live mode inside ComfyUI (none set: this machine only)
LIVE_TOKEN_ENV = "TALKINGHEAD_LIVE_TOKEN"


def add_live_routes(routes):
    """Live mode inside ComfyUI: the routes of :class:`live.server.LiveServer` on ComfyUI's route table. The
    portraits are the images of ComfyUI's input folder; the networks load on the first session (the
    default LivePortrait set, Ditto's LMDM and its HuBERT, from ComfyUI's model folders)."""
    import os

    from ..core.host import HOST
    from ..core.live import LiveConfig, load_parts
    from ..live.server import LiveServer, Portraits

    inputs = Portraits(folder=lambda: next(iter(HOST.input_dirs()), None))
    server = LiveServer(lambda: load_parts(), inputs, token=os.environ.get(LIVE_TOKEN_ENV) or None,
                        config=LiveConfig())
    server.add_routes(routes)
    return server


def install(folder_name: str) -> bool:
    """Add the routes and the on-prompt hook to the running ComfyUI server (False outside ComfyUI)."""
    try:
        from server import PromptServer
    except ImportError:
        return False
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return False
    if hasattr(instance, "add_on_prompt_handler"):
        instance.add_on_prompt_handler(on_prompt)
    add_live_routes(instance.routes)
    return add_template_route(instance.routes, folder_name)
