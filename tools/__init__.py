"""Authoring tools, not loaded by ComfyUI: the workflow layout engine behind ``run.py convert`` and
``make_workflows.py`` (:mod:`.layout`, :mod:`.workflow_meta`), and ``frontend/`` (ComfyUI's web
frontend driven for the tests and the authoring). Imported as a sub-package of the pack (its modules use
relative imports of ``headless``), e.g. ``talkinghead_pack.tools.layout`` once ``run.py`` loaded the pack."""
