"""Live mode's server side: the wire protocol (:mod:`.protocol`) and the aiohttp routes (:mod:`.server`) that
``python run.py live`` and ComfyUI's own server both serve. The pipeline itself is :mod:`core.live`."""
