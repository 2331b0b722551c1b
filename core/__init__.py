"""Plain torch/numpy core of the talking-head toolkit.

Nothing in this package imports ComfyUI. The ComfyUI adapters in ``nodes/`` install
their bridges through :mod:`.host` (model folders, device choice, memory manager,
progress), and everything here falls back to standalone behaviour without them.
"""
