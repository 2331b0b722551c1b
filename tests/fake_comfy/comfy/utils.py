"""Fake of comfy.utils.ProgressBar and its global hook (the hook raises on cancel, as in ComfyUI)."""
PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK = None
updates = []  # test log of (value, total, preview)


def set_progress_bar_global_hook(function):
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


def _default_hook(value, total, preview, node_id=None):
    from . import model_management

    model_management.throw_exception_if_processing_interrupted()
    updates.append((value, total, preview))


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK or _default_hook

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        if value > self.total:
            value = self.total
        self.current = value
        if self.hook is not None:
            self.hook(self.current, self.total, preview)

    def update(self, value):
        self.update_absolute(self.current + value)
