"""Talking Head Toolkit: speech-driven talking-head video for ComfyUI.

ComfyUI imports this folder under a path-derived module name; everything inside uses
relative imports, so the folder may have any name.
"""
import os as _os

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.comfy_bridge import install as _install_comfy_bridge
from .nodes.web_routes import install as _install_routes

if _install_comfy_bridge():
    # ComfyUI names the pack after its folder (the name it was installed under)
    _install_routes(_os.path.basename(_os.path.dirname(__file__)))

#: ComfyUI serves this folder at /extensions/<folder name>/: live mode's page is web/live.html there
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
