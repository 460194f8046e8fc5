"""Read one geometry from a small GeoJSON file (a Geometry, Feature or FeatureCollection)."""

from __future__ import annotations

from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

from storage import geometry
from storage.errors import InvalidInput
from sync.dhis2_json import load_json_file


def read_single_geometry(path: Path) -> BaseGeometry:
    doc = load_json_file(path)
    if not isinstance(doc, dict):
        raise InvalidInput(f"{path}: expected a GeoJSON object.")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        feats = doc.get("features") or []
        if len(feats) != 1:
            raise InvalidInput(f"{path}: expected exactly one feature, found {len(feats)}.")
        doc = feats[0]
        kind = doc.get("type")
    if kind == "Feature":
        doc = doc.get("geometry")
    try:
        geom = geometry.from_geojson(doc)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError,
            shapely.errors.ShapelyError) as error:  # (an unknown "type": GeometryTypeError)
        raise InvalidInput(f"{path}: not a valid GeoJSON geometry ({error}).") from None
    if geom is None or shapely.is_empty(geom):
        raise InvalidInput(f"{path}: the geometry is empty.")
    return geom
