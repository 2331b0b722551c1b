"""Audio -> LivePortrait motion: Ditto's LMDM (``ditto``), JoyVASA (``joyvasa``) and the procedural
motion (``procedural``). Every producer emits :class:`core.liveportrait.motion.Motion`."""
