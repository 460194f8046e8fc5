"""A small map drawn server-side as inline SVG: territories as outlines, points as dots.

No JavaScript and nothing fetched at run time (the field server has no internet):
coordinates are projected equirectangularly with the longitude scaled by the cosine
of the middle latitude, which is what a district-sized map needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

import shapely
from shapely.geometry.base import BaseGeometry


@dataclass
class MapPoint:
    lon: float
    lat: float
    label: str
    href: str | None = None
    colour: str = "#d9480f"
    radius: float = 4.0


def render_svg(territories: list[tuple[str, BaseGeometry]], points: list[MapPoint], *,
               width: int = 720, height: int = 480, title: str = "Map") -> str:
    geoms = [g for _, g in territories if g is not None and not g.is_empty]
    xs = [p.lon for p in points]
    ys = [p.lat for p in points]
    for g in geoms:
        x1, y1, x2, y2 = g.bounds
        xs += [x1, x2]
        ys += [y1, y2]
    if not xs:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
                f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
                f'<text x="20" y="40">Nothing to show yet.</text></svg>')
    minx, maxx, miny, maxy = min(xs), max(xs), min(ys), max(ys)
    if not geoms:  # points only: leave room around them
        mx, my = max((maxx - minx) * 0.15, 0.005), max((maxy - miny) * 0.15, 0.005)
        minx, maxx, miny, maxy = minx - mx, maxx + mx, miny - my, maxy + my
    kx = math.cos(math.radians((miny + maxy) / 2))
    pad = 12
    scale = min((width - 2 * pad) / ((maxx - minx) * kx), (height - 2 * pad) / (maxy - miny))

    def xy(lon: float, lat: float) -> tuple[float, float]:
        return pad + (lon - minx) * kx * scale, height - pad - (lat - miny) * scale

    tolerance = 1.0 / scale  # one pixel
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" class="map">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#eef3f7"/>',
    ]
    for name, geom in territories:
        if geom is None or geom.is_empty:
            continue
        simple = shapely.simplify(geom, tolerance, preserve_topology=True)
        polys = getattr(simple, "geoms", [simple])
        d = []
        for poly in polys:
            for ring in [poly.exterior, *poly.interiors]:
                coords = [xy(x, y) for x, y, *_ in ring.coords]
                if len(coords) < 3:
                    continue
                d.append("M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in coords) + " Z")
        if d:
            parts.append(f'<path d="{" ".join(d)}" fill="#ffffff" stroke="#7a8a99" '
                         f'stroke-width="0.8" fill-rule="evenodd"><title>{escape(name)}</title>'
                         "</path>")
    for p in points:
        x, y = xy(p.lon, p.lat)
        dot = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{p.radius:g}" fill="{escape(p.colour)}" '
               f'stroke="#fff" stroke-width="1" class="point"><title>{escape(p.label)}</title>'
               "</circle>")
        if p.href:
            dot = f'<a href="{escape(p.href)}">{dot}</a>'
        parts.append(dot)
    parts.append("</svg>")
    return "".join(parts)
