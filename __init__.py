"""Talking Head Toolkit: speech-driven talking-head video for ComfyUI.

ComfyUI imports this folder under a path-derived module name; everything inside uses
relative imports, so the folder may have any name.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.comfy_bridge import install as _install_comfy_bridge

_install_comfy_bridge()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
