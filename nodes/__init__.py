"""ComfyUI adapters: types in, a core call, types out. Importing this registers every node."""
from . import classic, liveportrait, memory, motion, portrait, video  # noqa: F401  (registration side effects)
from .base import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, PREFIX

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "PREFIX"]
