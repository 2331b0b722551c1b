"""UnloadModels: free this pack's models (RAM and VRAM) between stages of a graph."""
from __future__ import annotations

from ..core import weights
from ..core.cache import CACHE
from .base import ANY, register
from .specs import dynamic


def family_choices():
    return ["all"] + sorted({mf.family for mf in weights.manifest().values()})


@register("UnloadModels", category="memory")
class UnloadModels:
    """Unload this pack's cached models (all, or one family) and empty the GPU cache. The input passes through
    unchanged, so the node can sit between two stages of a graph."""
    OUTPUT_NODE = True
    OUTPUTS = (
        ("passthrough", ANY, "Whatever came in, unchanged (connect it to the next stage to order the unload)."),
    )

    INPUTS = {
        "required": {
            "family": dynamic(lambda: (family_choices(), {"default": "all", "tooltip": "Which models to unload."})),
        },
        "optional": {
            "passthrough": (ANY, {"tooltip": "Any value; it is returned unchanged after the unload."}),
        },
    }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always run: unloading is a side effect

    def run(self, family, passthrough=None):
        before = [e.describe() for e in CACHE.entries(family)]
        count = CACHE.unload(family)
        text = f"unloaded {count} model(s)" + (": " + "; ".join(before) if before else "")
        return {"ui": {"text": [text]}, "result": (passthrough,)}
