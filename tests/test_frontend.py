"""The shipped UI workflows in ComfyUI's real web frontend, in a real (headless) Chromium.

The frontend is the ``comfyui-frontend-package`` wheel that ComfyUI 0.8.0 pins, served unchanged by
the stand-in backend (``tools/frontend/standin.py``: the pack's ``/object_info`` as ComfyUI builds
it, prompts run by the headless runner on the tiny weights). For every ``workflows/NAME.json``:

* opening it (``app.loadGraphData``, where file open and drag-and-drop end) shows no missing node,
  dialog, error toast or page error, at a zoom where the frontend draws text;
* the frontend's own save of it (``app.graph.serialize()``) is the shipped file, so the file is what
  ComfyUI itself writes, and once the previews have loaded no node covers another and every group
  frames its members;
* the frontend's conversion (``app.graphToPrompt().output``, what Run and "Export (API)" produce) is
  ``workflows/api/NAME.api.json`` exactly, and the pack's own converter (``headless.ui_format.ui_to_api``, used
  by ``run.py``) reads the same values from the file;
* pressing Run (with the tiny checkpoints and short inputs set in the widgets) ends in
  ``execution_success`` and writes the expected mp4.

The template browser's requests (list, JSON, thumbnail) are checked for every workflow too. A
screenshot of each opened workflow is kept in ``test-artifacts/frontend/``.

Needs Chromium (Debian's ``chromium``) and the dev requirements; ``.ci/run`` installs both. Where they
are missing the tests skip, except under CI (``CI`` set), where that is a failure.
``tests/integration`` runs the same checks against a real ComfyUI when ``COMFYUI_DIR`` is set.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from conftest import browser_test_mark

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "frontend"
SHIPPED = sorted(p.name[:-len(".api.json")] for p in (ROOT / "workflows" / "api").glob("*.api.json"))
FOLDER_NAME = "ComfyUI-Talking Head.toolkit (it)"  # as installed by a user: not a Python identifier
PROMPT_TIMEOUT = float(os.environ.get("TH_FRONTEND_PROMPT_TIMEOUT", "300"))


pytestmark, _MISSING = browser_test_mark("the browser test", ("aiohttp", "comfyui_frontend_package", "websockets"))

if not _MISSING:
    from frontend import page
    from frontend.browser import Browser
    from frontend.standin import StandIn

from workflow_cases import WORKFLOW_CASES, check_mp4, place_inputs, place_models, saved_files  # noqa: E402


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("standin")
    place_inputs(base / "input")
    place_models(base / "models")
    saved = {k: os.environ.get(k) for k in ("TALKINGHEAD_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update(TALKINGHEAD_OFFLINE="1", HF_HUB_OFFLINE="1")
    srv = StandIn(base, folder_name=FOLDER_NAME).start()
    try:
        yield srv
    finally:
        srv.stop()
        importlib.import_module(f"{srv.pack.__name__}.core.host").HOST.reset()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def browser(server):
    with Browser(1600, 1000) as b:
        page.open_app(b, server.url)
        yield b


@pytest.fixture(scope="module")
def runner(server):
    return importlib.import_module(f"{server.pack.__name__}.headless")


@pytest.fixture(scope="module")
def layout(server):
    return importlib.import_module(f"{server.pack.__name__}.tools.layout")


# --------------------------------------------------------------------------- checks shared with tests/integration


def live_layout_problems(browser) -> list:
    """Nodes that cover each other, and group members outside their group, as the frontend has them now
    (sizes after the previews loaded; a group's members are the nodes whose centre it holds when loaded)."""
    state = browser.eval("""(() => ({
        nodes: app.graph.nodes.map(n => ({id: n.id, title: n.title, box: [n.pos[0], n.pos[1] - 30,
                                          n.pos[0] + n.size[0], n.pos[1] + n.size[1]]})),
        groups: (app.graph.groups || []).map(g => { const b = g._bounding || g.bounding;
                                                     return {title: g.title, box: [b[0], b[1], b[0] + b[2], b[1] + b[3]]}; })
    }))()""")
    problems = []
    nodes = state["nodes"]

    def overlap(a, b):
        return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5

    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if overlap(a["box"], b["box"]):
                problems.append(f"'{a['title']}' and '{b['title']}' overlap")
    for g in state["groups"]:
        gx0, gy0, gx1, gy1 = g["box"]
        for n in nodes:
            x0, y0, x1, y1 = n["box"]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if gx0 <= cx <= gx1 and gy0 <= cy <= gy1 and not (gx0 <= x0 and gy0 <= y0 and x1 <= gx1 and y1 <= gy1):
                problems.append(f"'{n['title']}' sticks out of group '{g['title']}'")
    return problems


def check_opens(browser, name: str) -> dict:
    """Open workflows/NAME.json in the frontend and check what a user sees; returns the opened file."""
    ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    seen = page.open_workflow(browser, ui, name)
    assert seen["missing"] == [], f"{name}: the frontend does not know {seen['missing']}"
    assert seen["dialogs"] == [] and seen["toasts"] == [], f"{name}: {seen['dialogs']} {seen['toasts']}"
    assert seen["nodes"] == len(ui["nodes"])
    assert seen["scale"] >= 0.6, f"{name} opens at {seen['scale']:.0%}, where the frontend draws no text"
    assert page.page_errors(browser) == [], f"{name}: {page.page_errors(browser)}"
    return ui


def check_round_trip(browser, name: str, ui: dict) -> dict:
    """The frontend saves the shipped file unchanged and exports exactly the shipped API file."""
    saved = browser.eval("app.graph.serialize()")
    for key in ("nodes", "links", "groups", "last_node_id", "last_link_id", "version"):
        assert saved[key] == ui[key], (f"{name}.json is not what the frontend saves ({key} differs): "
                                       "python tools/make_workflows.py " + name)
    exported = page.export_api(browser)
    shipped = json.loads((ROOT / "workflows" / "api" / f"{name}.api.json").read_text())
    assert exported == shipped, f"the frontend converts {name}.json to something else than {name}.api.json"
    return exported


def run_from_the_ui(browser, case, timeout: float = PROMPT_TIMEOUT) -> tuple:
    """Set the case's widget values, press Run and wait: ``(prompt id, the prompt graphToPrompt gave)``
    once the page got ``execution_success``."""
    page.set_widgets(browser, case.overrides)
    queued = page.export_api(browser)
    page.reset_events(browser)
    page.click_run(browser)
    event = page.wait_finished(browser, timeout)
    assert event["type"] == "execution_success", json.dumps(event)[:4000]
    return event["detail"]["prompt_id"], queued


def check_template(browser, folder: str, name: str) -> None:
    """The template browser's requests for ``name`` (list, JSON, thumbnail) are served; the JSON opens."""
    got = page.template_check(browser, folder, name)
    assert got["listed"] and got["json_status"] == 200, got
    assert got["loaded"] == len(json.loads((ROOT / "workflows" / f"{name}.json").read_text())["nodes"]), got
    assert got["thumb_status"] == 200 and got["thumb_type"] == "image/jpeg", got


def check_template_dialog(browser, url: str, folder: str) -> None:
    """Each shipped workflow opens from its card in the Templates dialog (each on a freshly loaded page:
    a reopened dialog may keep its lazy pictures' placeholders)."""
    for name in SHIPPED:
        page.open_app(browser, url)
        got = page.open_template_dialog_card(browser, folder, name)
        shipped = json.loads((ROOT / "workflows" / f"{name}.json").read_text())["nodes"]
        assert got["titles"] == sorted(n["title"] for n in shipped), (name, got)


# --------------------------------------------------------------------------- tests


def test_object_info_is_complete(server):
    """The stand-in describes every node of the pack and every ComfyUI node the workflows use."""
    info = server.object_info_dict()
    used = {n["class_type"] for name in SHIPPED
            for n in json.loads((ROOT / "workflows" / "api" / f"{name}.api.json").read_text()).values()}
    assert used <= set(info), used - set(info)
    for node_id, entry in info.items():
        assert entry["name"] == node_id and entry["input_order"].keys() <= entry["input"].keys()
        if node_id.startswith("TalkingHead_"):
            assert entry["python_module"] == f"custom_nodes.{FOLDER_NAME}"


def test_template_folder_is_not_shadowed(server):
    """ComfyUI serves a pack's templates from the first of these folders that exists: it must be workflows/."""
    folders = importlib.import_module(f"{server.pack.__name__}.nodes.web_routes").TEMPLATE_FOLDERS
    first = next(f for f in folders if (ROOT / f).is_dir())
    assert first == "workflows", f"{first}/ hides workflows/ from ComfyUI's template browser"


@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_in_the_frontend(browser, server, runner, layout, name):
    ui = check_opens(browser, name)
    page.settle(browser, 1500)  # media previews load and may grow their nodes
    assert live_layout_problems(browser) == [], name
    page.screenshot_graph(browser, ARTIFACTS / f"{name}.png")
    exported = check_round_trip(browser, name, ui)
    # the pack's converter (run.py on a UI file) reads the same values as the frontend
    assert runner.ui_to_api(ui, server.registry) == runner.declared_inputs(exported, server.registry)
    # ... and writes widget values in the frontend's order
    laid_out = layout.api_to_ui(runner.declared_inputs(exported, server.registry), server.registry)
    ours = {n["id"]: n for n in laid_out["nodes"]}
    for node in ui["nodes"]:
        if node["type"] != "Note":
            assert ours[node["id"]]["widgets_values"] == node.get("widgets_values", []), (name, node["title"])

    # Run, as a user: the tiny checkpoints and short inputs set in the widgets, then the Run button
    case = WORKFLOW_CASES[name]
    pid, queued = run_from_the_ui(browser, case)
    entry = server.history[pid]
    assert entry["prompt"][2] == queued  # what the Run button sent is what graphToPrompt gives
    writers = [i for i, n in queued.items() if "filename_prefix" in n["inputs"]]
    for node_id in writers:
        items = saved_files(entry["outputs"].get(node_id, {}))
        assert len(items) == 1, entry["outputs"]
        path = server.base / "output" / items[0]["subfolder"] / items[0]["filename"]
        check_mp4(path, case.size, case.frames, case.seconds, case.audio_tol)
    executed = [e["detail"].get("node") for e in browser.eval("window.__th.events") if e["type"] == "executed"]
    assert set(writers) <= set(executed), "the page was not told about the written videos"
    assert page.page_errors(browser) == [], page.page_errors(browser)


@pytest.mark.parametrize("name", SHIPPED)
def test_template_browser(browser, name):
    """What the template browser fetches for a custom-node template (list, JSON, thumbnail) is served,
    and the template opens."""
    check_template(browser, FOLDER_NAME, name)
    assert page.page_errors(browser) == [], page.page_errors(browser)


def test_pack_template_route_serves_only_its_own_files(server):
    """The pack's template route (nodes/web_routes.py) answers for its own folder name only, serves only
    files directly in workflows/, and with their media types."""
    import urllib.error
    import urllib.parse
    import urllib.request

    def get(module: str, file: str):
        url = f"{server.url}/api/workflow_templates/{urllib.parse.quote(module)}/{urllib.parse.quote(file, safe='')}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, resp.headers.get("Content-Type")
        except urllib.error.HTTPError as exc:
            return exc.code, None

    assert get(FOLDER_NAME, "portrait_still_video.json") == (200, "application/json")
    assert get(FOLDER_NAME, "portrait_still_video.jpg") == (200, "image/jpeg")
    assert get("another pack", "portrait_still_video.json")[0] == 404
    for bad in ("../README.md", "api/portrait_still_video.api.json", "../../etc/passwd", "missing.json",
                "../example_inputs/portrait.png"):
        assert get(FOLDER_NAME, bad)[0] == 404, bad


def test_template_browser_dialog(browser, server):
    """As a user: Templates in the side bar, the pack among the extensions, a click on its card opens each
    (each on a freshly loaded page, as a user who opens the template browser once)."""
    check_template_dialog(browser, server.url, FOLDER_NAME)
    assert page.page_errors(browser) == [], page.page_errors(browser)
