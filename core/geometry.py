"""Small geometry shared by the model families."""
from __future__ import annotations

import numpy as np


def hull_measure(points) -> float:
    """Size of the convex hull of N points in 2-D (area) or 3-D (volume), as scipy's
    ``ConvexHull(points).volume`` (FOM's adapt_movement_scale, LivePortrait's expression-friendly
    motion). Accepts an array or a tensor shaped ``[..., N, D]`` with a single point set."""
    from scipy.spatial import ConvexHull

    if hasattr(points, "detach"):
        points = points.detach().double().cpu().numpy()
    pts = np.asarray(points, dtype=np.float64)
    return float(ConvexHull(pts.reshape(-1, pts.shape[-1])).volume)
