"""ComfyUI's real web frontend for tests and authoring: a stand-in backend, a CDP-driven Chromium, page steps."""
