"""Distances on the ground and a metric projection good enough for candidate search."""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray
                ) -> np.ndarray:
    """Great-circle distance in metres (NaN where a coordinate is missing)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dl = np.radians(lon2 - lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def project(lon: np.ndarray, lat: np.ndarray, lat0: float) -> np.ndarray:
    """Equirectangular metres around ``lat0``: within 1 % over a few km, for k-d trees."""
    return np.column_stack([np.radians(lon) * EARTH_RADIUS_M * np.cos(np.radians(lat0)),
                            np.radians(lat) * EARTH_RADIUS_M])
