#!/usr/bin/env python3
"""Author the shipped workflows with ComfyUI's real web frontend.

For every ``workflows/api/NAME.api.json`` (the graph and its widget values) and its
``NAME.meta.json`` (groups, notes), this

1. loads the API graph into ComfyUI's frontend (``app.loadApiJson``, the frontend's own import) in
   headless Chromium, served by the stand-in backend (``tools/frontend/standin.py``), sets every
   "control after generate" to ``fixed`` so a shipped example renders the same on every run, and
   measures the size the frontend gives each node once its previews have loaded;
2. lays the graph out (``tools/layout.py``'s ``api_to_ui``: columns by dependency depth, groups, notes)
   with those sizes;
3. puts the frontend's own nodes at those places, adds the Note nodes and groups, loads the result
   with ``app.loadGraphData`` and saves what the frontend serialises (``app.graph.serialize()``) as
   ``workflows/NAME.json``, and what its "Export (API)" gives (``app.graphToPrompt().output``) as
   ``workflows/api/NAME.api.json``;
4. takes a screenshot of the graph as the user sees it when it opens: ``docs/images/NAME.png``
   (README) and ``workflows/NAME.jpg`` (the template browser's thumbnail).

Run it after changing a node's inputs or a workflow::

    python tools/make_workflows.py            # all workflows
    python tools/make_workflows.py NAME ...   # some

Needs Chromium and the dev requirements (``comfyui-frontend-package``, ``aiohttp``, ``websockets``).
``tests/test_frontend.py`` checks the results in the same frontend.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from frontend.browser import Browser  # noqa: E402
from frontend.standin import StandIn  # noqa: E402
from frontend import page  # noqa: E402

WORKFLOWS = ROOT / "workflows"
API = WORKFLOWS / "api"
IMAGES = ROOT / "docs" / "images"
EXAMPLES = ROOT / "example_inputs"
VIEW = (1600, 1000)           # the browser window: a laptop-sized ComfyUI
MIN_SCALE, MAX_SCALE = 0.7, 1.0  # litegraph hides widget text below 0.6
THUMB_SIZE = (640, 480)
PACK_FOLDER = "talking-head-toolkit"  # the registry name: what the node badges show


def names(selected: List[str]) -> List[str]:
    found = sorted(p.name[: -len(".api.json")] for p in API.glob("*.api.json"))
    unknown = [n for n in selected if n not in found]
    if unknown:
        raise SystemExit(f"no workflows/api/{unknown[0]}.api.json (have: {', '.join(found)})")
    return selected or found


def bbox(workflow: dict) -> List[float]:
    xs0, ys0, xs1, ys1 = [], [], [], []
    for n in workflow["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        xs0.append(x), ys0.append(y - 30), xs1.append(x + w), ys1.append(y + h)
    for g in workflow.get("groups", []):
        x, y, w, h = g["bounding"]
        xs0.append(x), ys0.append(y), xs1.append(x + w), ys1.append(y + h)
    return [min(xs0), min(ys0), max(xs1), max(ys1)]


def opening_view(box: List[float]) -> dict:
    """``extra.ds`` for a legible first view: the whole graph if it fits at MIN_SCALE or more, else its
    top-left part at MIN_SCALE (the user scrolls on from there)."""
    x0, y0, x1, y1 = box
    left, top = 70, 80  # the frontend's side bar and top bar
    fit = min((VIEW[0] - left - 20) / (x1 - x0), (VIEW[1] - top - 20) / (y1 - y0))
    scale = round(max(MIN_SCALE, min(MAX_SCALE, fit)), 3)
    return {"scale": scale, "offset": [round(left / scale - x0, 1), round(top / scale - y0, 1)]}


def author(browser: Browser, server: StandIn, name: str, registry, layout, runner) -> dict:
    """``layout``: the pack's ``tools.layout`` module, ``runner``: its ``headless`` package."""
    api = json.loads((API / f"{name}.api.json").read_text())
    meta = json.loads((API / f"{name}.meta.json").read_text())
    measured = page.import_api(browser, api, name)
    sizes = {str(n["id"]): n["size"] for n in measured["nodes"]}
    for attempt in range(3):  # lay out again while the frontend grows a node (a video preview that loaded late)
        laid_out = layout.api_to_ui(runner.declared_inputs(api, registry), registry, meta, sizes=sizes)
        placed = {str(n["id"]): n for n in laid_out["nodes"]}
        nodes = []
        for node in measured["nodes"]:
            spot = placed[str(node["id"])]
            nodes.append({**node, "pos": spot["pos"], "size": spot["size"]})
        notes = [n for n in laid_out["nodes"] if n["type"] == "Note"]
        merged = {**measured, "nodes": nodes + notes, "groups": laid_out["groups"],
                  "last_node_id": max(n["id"] for n in nodes + notes)}
        merged["extra"] = {**measured.get("extra", {}), "ds": opening_view(bbox(merged))}
        final = page.load_and_save(browser, merged)
        grown = {str(n["id"]): n["size"] for n in final["nodes"]
                 if n["type"] != "Note" and any(n["size"][i] > placed[str(n["id"])]["size"][i] + 0.5 for i in (0, 1))}
        cramped = {text: extra for text, extra in page.note_overflow(browser).items() if extra > 0}
        if not grown and not cramped:
            break
        print(f"  the frontend made nodes {sorted(grown)} larger than laid out, {len(cramped)} notes need "
              "more room: laying out again")
        sizes.update(grown)
        for note, node in ((m, n) for m in meta.get("notes", []) for n in notes if n["widgets_values"][0] == m["text"]):
            if note["text"] in cramped:
                note["height"] = int(node["size"][1] + cramped[note["text"]] + 4)
    else:
        raise SystemExit(f"{name}: node sizes do not settle")
    return {"workflow": final, "api": page.export_api(browser)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Author workflows/*.json with ComfyUI's real frontend.")
    parser.add_argument("names", nargs="*", help="workflow names (default: all)")
    parser.add_argument("--no-images", action="store_true", help="skip the screenshots")
    args = parser.parse_args(argv)
    todo = names(args.names)
    base = Path(tempfile.mkdtemp(prefix="th-author-"))
    try:
        page.place_example_inputs(base / "input")
        with StandIn(base, folder_name=PACK_FOLDER) as server, Browser(*VIEW) as browser:
            layout = importlib.import_module(f"{server.pack.__name__}.tools.layout")
            runner = importlib.import_module(f"{server.pack.__name__}.headless")
            for name in todo:
                print(f"{name}:")
                page.open_app(browser, server.url)  # a fresh page: one tab, named after the workflow
                result = author(browser, server, name, server.registry, layout, runner)
                (WORKFLOWS / f"{name}.json").write_text(json.dumps(result["workflow"], indent=1) + "\n")
                (API / f"{name}.api.json").write_text(json.dumps(result["api"], indent=1) + "\n")
                if not args.no_images:  # on a fresh page, opened as a user opens a file: two tabs
                    page.open_app(browser, server.url)
                    page.open_workflow(browser, result["workflow"], name)
                    time.sleep(1.0)  # previews
                    shot = IMAGES / f"{name}.png"
                    page.screenshot_graph(browser, shot)
                    page.thumbnail(shot, WORKFLOWS / f"{name}.jpg", THUMB_SIZE)
                    page.compress_png(shot)
                    print(f"  wrote {shot.relative_to(ROOT)} and workflows/{name}.jpg")
                print(f"  wrote workflows/{name}.json and workflows/api/{name}.api.json")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
