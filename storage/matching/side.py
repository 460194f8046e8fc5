"""One side of a match: a version's units as arrays, read once, with tree and geometry.

Everything the matcher needs sits in numpy arrays indexed 0..n-1 (parents as
indexes, coordinates as floats with NaN for "none"), so a 100k-unit version costs
a few tens of MB and every per-pair step is vectorised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, text

from storage import geometry
from storage.backends import Backend
from storage.errors import InvalidInput
from storage.matching.normalise import Normaliser
from storage.registry import json_value
from storage.versions import VersionRef

MAX_LISTED = 10
# "Kasa EP / Kasa EM": one list's unit standing for two of the other's (merged, or
# listed together).  Spaces around the slash: "Ngula/Mbaya" is one place's name.
_JOINED = re.compile(r"\s+/\s+")


@dataclass
class Side:
    version: VersionRef
    uuid: list[str]
    ref: list[str | None]
    name: list[str]
    code: list[str | None]
    type_name: list[str | None]
    aliases: list[list[str]]
    depth: np.ndarray
    parent: np.ndarray  # index of the parent, -1 for a root
    lon: np.ndarray  # own point (NaN: none)
    lat: np.ndarray
    territory: dict[int, BaseGeometry] = field(default_factory=dict)
    # derived by prepare()
    clon: np.ndarray = field(default_factory=lambda: np.empty(0))  # own point, else centroid
    clat: np.ndarray = field(default_factory=lambda: np.empty(0))
    children: list[list[int]] = field(default_factory=list)
    by_depth: dict[int, np.ndarray] = field(default_factory=dict)
    core: list[str] = field(default_factory=list)
    types: list[frozenset[str]] = field(default_factory=list)
    alias_core: list[list[str]] = field(default_factory=list)  # other names, and the parts
    has_alias: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    index_of_uuid: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.uuid)

    def display_ref(self, i: int) -> str:
        """The unit's source ref, else its uuid: what the CSV calls left_ref/right_ref."""
        return self.ref[i] or self.uuid[i]

    def prepare(self, norm: Normaliser) -> None:
        n = len(self)
        self.index_of_uuid = {u: i for i, u in enumerate(self.uuid)}
        self.children = [[] for _ in range(n)]
        for i, p in enumerate(self.parent.tolist()):
            if p >= 0:
                self.children[p].append(i)
        self.by_depth = {int(d): np.flatnonzero(self.depth == d) for d in np.unique(self.depth)}
        names = [norm.normalise(x) for x in self.name]
        self.core = [x.core for x in names]
        self.types = [x.types for x in names]
        self.alias_core = []
        for x, al in zip(self.name, self.aliases, strict=True):
            cores = [norm.normalise(a).core for a in al]
            parts = _JOINED.split(x) if "/" in x else []
            if len(parts) > 1:  # each part of a joined name is a name the unit goes by
                cores += [c for c in (norm.normalise(p).core for p in parts) if c]
            self.alias_core.append([c for c in dict.fromkeys(cores) if c])
        self.has_alias = np.fromiter((bool(a) for a in self.alias_core), dtype=bool, count=n)
        self.clon, self.clat = self.lon.copy(), self.lat.copy()
        for i, geom in self.territory.items():
            if np.isnan(self.clon[i]):
                c = geom.centroid
                self.clon[i], self.clat[i] = c.x, c.y
        # areas without geometry: mean of their children's points, bottom up
        for d in sorted(self.by_depth, reverse=True):
            idx = self.by_depth[d]
            par = self.parent[idx]
            ok = (par >= 0) & ~np.isnan(self.clon[idx])
            if not ok.any():
                continue
            sums = np.zeros((n, 3))
            np.add.at(sums, par[ok], np.column_stack(
                [self.clon[idx[ok]], self.clat[idx[ok]], np.ones(int(ok.sum()))]))
            fill = (sums[:, 2] > 0) & np.isnan(self.clon)
            self.clon[fill] = sums[fill, 0] / sums[fill, 2]
            self.clat[fill] = sums[fill, 1] / sums[fill, 2]


def _decode_points(backend: Backend, values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    n = len(values)
    lon = np.full(n, np.nan)
    lat = np.full(n, np.nan)
    idx = [i for i, v in enumerate(values) if v is not None]
    if not idx:
        return lon, lat
    if backend is Backend.GEOPACKAGE:
        wkbs = [geometry.gpkg_wkb(bytes(values[i])) for i in idx]
    else:
        wkbs = [bytes(values[i]) for i in idx]
    geoms = shapely.from_wkb(np.array(wkbs, dtype=object))
    empty = shapely.is_empty(geoms)
    xs = np.where(empty, np.nan, shapely.get_x(geoms))
    ys = np.where(empty, np.nan, shapely.get_y(geoms))
    lon[idx], lat[idx] = xs, ys
    return lon, lat


def load_side(conn: Connection, backend: Backend, version: VersionRef, *,
              label: str) -> Side:
    """Read every unit of ``version``; refuse an empty version or units without a name."""
    loc = geometry.select_sql(backend, "u.location")
    rows = conn.execute(
        text(
            f"SELECT u.fid, u.uuid, u.source_ref, u.name, u.code, t.name AS type_name, u.aliases, "
            f"u.depth, u.unit_key, u.parent_key, {loc} AS loc FROM org_unit u "
            "LEFT JOIN org_unit_type t ON t.fid = u.type_id WHERE u.version_id = :v "
            "ORDER BY u.depth, u.fid"
        ),
        {"v": version.id},
    ).all()
    if not rows:
        raise InvalidInput(
            f"{label} ({version.label}) has no units: nothing to match. Import a list into it "
            "first, or name another version as SOURCE:VERSION."
        )
    unnamed = [r for r in rows if not (r.name or "").strip()]
    if unnamed:
        shown = ", ".join(f"{r.source_ref or r.uuid}" for r in unnamed[:MAX_LISTED])
        more = f" and {len(unnamed) - MAX_LISTED} more" if len(unnamed) > MAX_LISTED else ""
        raise InvalidInput(
            f"{label} ({version.label}): {len(unnamed)} unit(s) have no name ({shown}{more}); "
            "matching compares names. Give them a name (georeg unit edit … --name) and run "
            "again."
        )
    key_index = {r.unit_key: i for i, r in enumerate(rows)}
    parent = np.array([key_index.get(r.parent_key, -1) if r.parent_key is not None else -1
                       for r in rows], dtype=np.int64)
    lon, lat = _decode_points(backend, [r.loc for r in rows])
    fid_index = {r.fid: i for i, r in enumerate(rows)}
    terr = geometry.select_sql(backend, "t.territory")
    territory: dict[int, BaseGeometry] = {}
    for fid, value in conn.execute(
        text(f"SELECT t.unit_fid, {terr} FROM org_unit_territory t WHERE t.version_id = :v "
             "AND t.territory IS NOT NULL"),
        {"v": version.id},
    ):
        geom = geometry.decode(backend, value)
        if geom is not None and not geom.is_empty and fid in fid_index:
            if not geom.is_valid:  # overlap areas need valid polygons; the registry keeps its own
                geom = shapely.make_valid(geom)
            territory[fid_index[fid]] = geom
    aliases = []
    for r in rows:
        al = json_value(r.aliases)
        aliases.append([str(a) for a in al if a] if isinstance(al, list) else [])
    depth = np.array([r.depth if r.depth is not None else 1 for r in rows], dtype=np.int64)
    return Side(
        version=version, uuid=[r.uuid for r in rows], ref=[r.source_ref for r in rows],
        name=[r.name.strip() for r in rows], code=[(r.code or "").strip() or None for r in rows],
        type_name=[r.type_name for r in rows], aliases=aliases, depth=depth, parent=parent,
        lon=lon, lat=lat, territory=territory,
    )
