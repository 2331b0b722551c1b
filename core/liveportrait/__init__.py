"""LivePortrait: appearance extractor, motion extractor, warping, SPADE decoder, stitching and
retargeting; official checkpoint loading; rendering with paste-back (work in progress)."""
