"""What tests and the workflow author do in ComfyUI's web page, through :class:`browser.Browser`.

Every step uses the frontend's own code paths: ``app.loadApiJson`` (importing an API file),
``app.loadGraphData`` (opening a workflow or a template), ``app.graph.serialize()`` (saving),
``app.graphToPrompt()`` (what Run and "Export (API)" send) and the Run button itself.
"""
from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

from .browser import Browser, BrowserError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_FILES = ("portrait.png", "speech.wav", "driving.mp4", "motion.safetensors")

#: console messages that an idle ComfyUI page prints on a server without optional content (a fresh
#: install, offline): the user's css, per-user workflow folders, the registry's release notes
EXPECTED_NOISE = ("user.css", "favicon.ico", "/api/userdata", "api.comfy.org", "ERR_NAME_NOT_RESOLVED",
                  "ERR_INTERNET_DISCONNECTED", "ERR_CONNECTION_REFUSED", "comfy.templates.json")

_API = "(window.comfyAPI && window.comfyAPI.api && window.comfyAPI.api.api) || app.api"


def place_example_inputs(input_dir: Path) -> None:
    input_dir.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLE_FILES:
        shutil.copy2(ROOT / "example_inputs" / name, input_dir / name)


def open_app(browser: Browser, url: str, timeout: float = 90.0) -> None:
    """Open ComfyUI at ``url`` and wait until the graph and the node definitions are there."""
    # start from an empty graph instead of the frontend's default example (its nodes are not ours)
    browser.goto(url.rstrip("/") + "/api/system_stats")
    browser.wait_for("document.readyState === 'complete'")
    empty = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {},
             "extra": {}, "version": 0.4}
    browser.call("(wf) => { localStorage.setItem('workflow', JSON.stringify(wf)); }", empty)
    browser.goto(url.rstrip("/") + "/")
    browser.wait_for("!!(window.app && window.app.graph && window.app.canvas && "
                     "window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 5)",
                     timeout=timeout)
    browser.call("""async () => {
        const api = %s;
        window.__th = {events: []};
        for (const name of ['execution_start', 'executing', 'executed', 'execution_success',
                            'execution_error', 'execution_interrupted', 'progress'])
            api.addEventListener(name, (e) => window.__th.events.push({type: name, detail: e.detail}));
        await new Promise(r => setTimeout(r, 500));
    }""" % _API)
    close_dialogs(browser)


def close_dialogs(browser: Browser) -> List[str]:
    """Close the dialogs on the page (e.g. the stand-in has no nodes for the start-up example graph, so
    the frontend warns about them); their texts."""
    return browser.call("""async () => {
        const texts = [];
        for (let i = 0; i < 5; i++) {
            const open = [...document.querySelectorAll('.p-dialog')].filter(d => d.offsetParent !== null);
            if (!open.length) break;
            for (const d of open) {
                texts.push(d.innerText.slice(0, 300));
                const close = d.querySelector('.p-dialog-close-button, button[aria-label="Close"]');
                if (close) close.click();
            }
            await new Promise(r => setTimeout(r, 300));
        }
        return texts;
    }""")


def settle(browser: Browser, ms: int = 800) -> None:
    browser.eval(f"new Promise(r => setTimeout(r, {ms}))")


def import_api(browser: Browser, api: dict, name: str) -> dict:
    """Import an API-format prompt as the frontend does, fix every "control after generate" widget to
    ``fixed``, let the previews load and return the serialised workflow."""
    return browser.call("""async (api, name) => {
        await app.loadApiJson(api, name + '.json');
        for (const node of app.graph.nodes)
            for (const w of node.widgets || [])
                if (w.name === 'control_after_generate') w.value = 'fixed';
        await new Promise(r => setTimeout(r, 2000));
        return app.graph.serialize();
    }""", api, name, timeout=60)


def load_and_save(browser: Browser, workflow: dict, name: Optional[str] = None) -> dict:
    """Open a UI workflow with ``app.loadGraphData`` (in the open tab when ``name`` is None) and return
    what the frontend saves of it."""
    browser.call("""async (wf, name) => {
        await app.loadGraphData(wf, true, true, name ? name + '.json' : null);
        await new Promise(r => setTimeout(r, 2000));
    }""", workflow, name, timeout=60)
    return browser.eval("app.graph.serialize()")


def export_api(browser: Browser) -> dict:
    """``app.graphToPrompt().output``: what the Run button queues and "Export (API)" saves."""
    return browser.eval("app.graphToPrompt().then(p => p.output)")


def open_workflow(browser: Browser, workflow: dict, name: str) -> dict:
    """Open a UI workflow as a user would (file open / drag and drop end in ``loadGraphData``) and
    report what went wrong: nodes the frontend does not know, dialogs and error toasts shown."""
    browser.clear_log()
    return browser.call("""async (wf, name) => {
        await app.loadGraphData(wf, true, true, name + '.json');
        await new Promise(r => setTimeout(r, 1500));
        const missing = app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type] || n.has_errors)
                                       .map(n => n.type);
        const visible = (el) => el.offsetParent !== null;
        const dialogs = [...document.querySelectorAll('.p-dialog')].filter(visible).map(d => d.innerText.slice(0, 300));
        const toasts = [...document.querySelectorAll('.p-toast-message-error, .p-toast-message-warn')]
                        .map(t => t.innerText.slice(0, 300));
        return {missing, dialogs, toasts, nodes: app.graph.nodes.length,
                scale: app.canvas.ds.scale, offset: Array.from(app.canvas.ds.offset)};
    }""", workflow, name, timeout=60)


def page_errors(browser: Browser) -> List[str]:
    """Exceptions and console errors, less the noise of an offline, fresh install."""
    return [e for e in browser.errors() if not any(n in e for n in EXPECTED_NOISE)]


def set_widgets(browser: Browser, overrides: Dict[str, Dict[str, object]]) -> None:
    """Set widget values by node title and widget name, as a user would in the graph."""
    problems = browser.call("""(overrides) => {
        const bad = [];
        for (const [title, values] of Object.entries(overrides)) {
            const node = app.graph.nodes.find(n => n.title === title);
            if (!node) { bad.push('no node titled ' + title); continue; }
            for (const [name, value] of Object.entries(values)) {
                const w = (node.widgets || []).find(w => w.name === name);
                if (!w) { bad.push(title + ' has no widget ' + name); continue; }
                w.value = value;
                if (w.callback) w.callback(value, app.canvas, node);
            }
        }
        app.graph.setDirtyCanvas(true, true);
        return bad;
    }""", overrides)
    if problems:
        raise BrowserError("; ".join(problems))


def click_run(browser: Browser) -> None:
    """Press the Run button of the top menu with the mouse (real input events, as a user's click)."""
    spot = browser.eval("""(() => {
        const run = [...document.querySelectorAll('button')].find(b => b.getAttribute('aria-label') === 'Run' &&
                                                                        b.offsetParent !== null);
        if (!run) return null;
        const r = run.getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2];
    })()""")
    if not spot:
        raise BrowserError("no Run button on the page")
    browser.click(*spot)


def wait_finished(browser: Browser, timeout: float) -> dict:
    """Wait for the queued prompt's ``execution_success``/``execution_error``/``execution_interrupted``
    event as the frontend receives it over its socket; that event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = browser.eval("""(() => (window.__th.events.find(e => ['execution_success', 'execution_error',
                                         'execution_interrupted'].includes(e.type)) || null))()""")
        if event:
            return event
        time.sleep(0.25)
    raise BrowserError(f"the prompt did not finish within {timeout:.0f} s")


def reset_events(browser: Browser) -> None:
    browser.eval("window.__th.events = []")


@contextmanager
def whole_graph(browser: Browser, max_size=(2400, 1500)):
    """Enlarge the window and zoom so the whole graph is on screen (at most 100 %), restore afterwards."""
    box = browser.eval("""(() => {
        const xs0 = [], ys0 = [], xs1 = [], ys1 = [];
        for (const n of app.graph.nodes) { xs0.push(n.pos[0]); ys0.push(n.pos[1] - 30);
                                           xs1.push(n.pos[0] + n.size[0]); ys1.push(n.pos[1] + n.size[1]); }
        for (const g of app.graph.groups || []) { const b = g._bounding || g.bounding;
            xs0.push(b[0]); ys0.push(b[1]); xs1.push(b[0] + b[2]); ys1.push(b[1] + b[3]); }
        return [Math.min(...xs0), Math.min(...ys0), Math.max(...xs1), Math.max(...ys1),
                app.canvas.ds.scale, Array.from(app.canvas.ds.offset)];
    })()""")
    x0, y0, x1, y1, old_scale, old_offset = box
    margin, left, top = 30, 70, 80
    scale = min(1.0, (max_size[0] - left - 2 * margin) / (x1 - x0), (max_size[1] - top - 2 * margin) / (y1 - y0))
    width = int((x1 - x0) * scale + left + 2 * margin)
    height = int((y1 - y0) * scale + top + 2 * margin)
    browser.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
    try:
        browser.call("""async (scale, ox, oy) => {
            window.dispatchEvent(new Event('resize'));
            await new Promise(r => setTimeout(r, 500));
            app.canvas.ds.scale = scale; app.canvas.ds.offset[0] = ox; app.canvas.ds.offset[1] = oy;
            app.canvas.setDirty(true, true); app.canvas.draw(true, true);
            await new Promise(r => setTimeout(r, 800));
        }""", scale, (left + margin) / scale - x0, (top + margin) / scale - y0)
        yield scale
    finally:
        browser.send("Emulation.setDeviceMetricsOverride", width=browser.width, height=browser.height,
                     deviceScaleFactor=1, mobile=False)
        browser.call("""async (scale, offset) => {
            window.dispatchEvent(new Event('resize'));
            await new Promise(r => setTimeout(r, 300));
            app.canvas.ds.scale = scale; app.canvas.ds.offset[0] = offset[0]; app.canvas.ds.offset[1] = offset[1];
            app.canvas.setDirty(true, true);
        }""", old_scale, old_offset)


def screenshot_graph(browser: Browser, path: Path) -> Path:
    """A screenshot of the whole graph as the frontend draws it."""
    with whole_graph(browser):
        browser.screenshot(path)
    return path


def note_overflow(browser: Browser) -> Dict[str, float]:
    """Note text -> how much taller (canvas units) its text box must be to show all of its text."""
    with whole_graph(browser):
        return browser.eval("""(() => {
            const out = {};
            for (const n of app.graph.nodes) {
                if (n.type !== 'Note' && n.type !== 'MarkdownNote') continue;
                const w = (n.widgets || [])[0];
                const el = w && (w.element || w.inputEl);
                if (el && el.clientHeight > 0) out[w.value] = Math.max(0, el.scrollHeight - el.clientHeight);
            }
            return out;
        })()""")


def compress_png(path: Path) -> Path:
    """Rewrite a screenshot as a 256-colour palette PNG (flat UI colours stay flat; a third of the size)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(path, optimize=True)
    return path


def thumbnail(src: Path, dst: Path, size=(640, 480)) -> Path:
    """A JPEG of ``src`` fitted into ``size`` (the template browser's 4:3 card picture), the rest in the
    canvas's own background colour."""
    from PIL import Image

    with Image.open(src) as img:
        img = img.convert("RGB")
        scale = min(size[0] / img.width, size[1] / img.height)
        small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
        card = Image.new("RGB", size, (32, 32, 32))
        card.paste(small, ((size[0] - small.width) // 2, (size[1] - small.height) // 2))
        card.save(dst, "JPEG", quality=85, optimize=True)
    return dst


def template_check(browser: Browser, module: str, name: str) -> dict:
    """Fetch one template as the template browser does (list, JSON, thumbnail) and open it."""
    return browser.call("""async (module, name) => {
        const api = %s;
        const listed = await api.getWorkflowTemplates();
        const base = api.apiURL('/workflow_templates/' + module + '/' + name);
        const jr = await fetch(base + '.json');
        const thumb = await fetch(base + '.jpg');
        let loaded = null;
        if (jr.ok) {
            const wf = await jr.json();
            await app.loadGraphData(wf, true, true, name);
            await new Promise(r => setTimeout(r, 800));
            loaded = app.graph.nodes.length;
        }
        return {listed: (listed[module] || []).includes(name), json_status: jr.status, loaded,
                thumb_status: thumb.status, thumb_type: thumb.headers.get('content-type')};
    }""" % _API, module, name, timeout=60)


def open_template_dialog_card(browser: Browser, module: str, name: str, timeout: float = 10.0) -> dict:
    """Open the template browser (the Templates button of the side bar), pick the pack ``module`` among
    the extensions, find the card of template ``name``, check its thumbnail picture loaded, click it,
    and report the opened graph."""
    def center(js: str):
        """Scroll the element into view, let the scrolling settle, and return its centre."""
        if not browser.eval("""(() => { const el = %s; if (!el) return false;
                                       el.scrollIntoView({block: 'center', behavior: 'instant'}); return true; })()"""
                            % js):
            return None
        settle(browser, 400)
        return browser.eval("""(() => { const el = %s; if (!el) return null; const r = el.getBoundingClientRect();
                                       return [r.x + r.width / 2, r.y + r.height / 2]; })()""" % js)

    button = center("[...document.querySelectorAll('button')].find(b => b.getAttribute('aria-label') === 'Templates')")
    if not button:
        raise BrowserError("no Templates button")
    browser.click(*button)
    pack = None
    deadline = time.monotonic() + timeout
    while pack is None and time.monotonic() < deadline:
        pack = center("""[...document.querySelectorAll('[role=dialog] *')].filter(e => e.innerText &&
                         e.innerText.trim() === %s).sort((a, b) => a.children.length - b.children.length)[0]"""
                      % json.dumps(module))
        time.sleep(0.2)
    if pack is None:
        raise BrowserError(f"the template browser lists no {module}")
    browser.click(*pack)
    # the card: the clickable block around the heading that is the name (its picture loads lazily, once
    # the card is scrolled into view)
    find_card = ("""(() => { const name = %s;
                       const cards = [...document.querySelectorAll(`[role=dialog] [data-testid="template-workflow-${name}"]`)]
                                       .filter(c => c.offsetParent !== null);
                       const shown = cards.find(c => { const i = c.querySelector('img'); return i && i.naturalWidth > 0; });
                       if (shown || cards.length) return shown || cards[0];
                       const h = [...document.querySelectorAll('[role=dialog] h3')].find(e => e.innerText.trim() === name);
                       return h ? h.closest('.cursor-pointer') || h.parentElement : null; })()"""
                 % json.dumps(name))
    deadline = time.monotonic() + timeout
    thumb = None
    while time.monotonic() < deadline:
        thumb = browser.eval("""(() => { const card = %s; if (!card) return null;
            card.scrollIntoView({block: 'center'});
            const img = card.querySelector('img');
            if (!img) return {src: null, loaded: false, width: 0};
            return {src: img.getAttribute('src'), loaded: img.complete && img.naturalWidth > 0,
                    width: img.naturalWidth}; })()""" % find_card)
        if thumb and thumb["loaded"]:
            break
        time.sleep(0.25)
    if not thumb:  # (a card's picture can stay a placeholder in a headless window: its loading is lazy)
        raise BrowserError(f"the template browser shows no card for {name}")
    spot = center(find_card)
    browser.click(*spot)
    browser.wait_for("""(() => ![...document.querySelectorAll('[role=dialog]')].some(d => d.offsetParent !== null))()""",
                     timeout=timeout)
    settle(browser, 500)
    titles = browser.eval("app.graph.nodes.map(n => n.title).sort()")
    return {"thumbnail": thumb, "nodes": len(titles), "titles": titles}
