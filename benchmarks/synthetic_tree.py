"""Deterministic synthetic organisation-unit trees for the benchmarks.

One country → regions → districts → health areas → facilities.  Country,
regions, districts and health areas have territories (jittered polygons, each
properly inside its parent); facilities have points inside their health area.
Names come from a syllable generator, refs are DHIS2-like 11-character uids
(unique by construction), codes are ``OU_<n>`` and opening dates never precede
the parent's.

The shape scales with the size asked for: ~20 health areas per district and
~49 facilities per health area, so a district holds ~1,000 units whatever the
total (100k units = 10 regions x 10 districts; 1M = 10 regions x 100 districts).
Subtree timings at 100k and 1M therefore read the same amount of data and show
only what the total size costs.

Everything streams: the generator keeps one path of the tree (a few rectangles)
and one integer per health area, never the units themselves.

    iter_synth(n, seed)          -> SynthUnit, parents before children
    iter_units(n, seed)          -> storage.bulk.UnitRecord (shapely geometries)
    write_geojson(path, n, seed) -> a GeoJSON FeatureCollection, one feature a line
    read_geojson_units(path)     -> UnitRecord again, streamed from that file

Run ``python benchmarks/synthetic_tree.py --size 1000 --check`` to validate the
geometry nesting of a small tree with shapely.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import shapely
from shapely.geometry import Point, Polygon

from storage.bulk import UnitRecord

Rect = tuple[float, float, float, float]  # min x, min y, max x, max y
Coord = tuple[float, float]

LEVEL_TYPES = {1: "Country", 2: "Region", 3: "District", 4: "Health area", 5: "Facility"}
COUNTRY_RECT: Rect = (10.0, -8.0, 22.0, 4.0)  # 12° x 12°, somewhere in central Africa
UNITS_PER_DISTRICT = 1000
AREAS_PER_DISTRICT = 20
REGIONS = 10

_SYLLABLES = (
    "ba be bi bo bu da de di do du fa fe fo ga ge go gu ka ke ki ko ku la le li lo lu ma me mi "
    "mo mu na ne ni no nu pa pe po ra re ri ro ru sa se si so su ta te ti to tu wa we wo ya yo "
    "mba mbo nda ndi nga nko kwa kwe sho tsa gba kpa"
).split()
_PREFIXES = ("Upper ", "Lower ", "New ", "Old ", "North ", "South ")
_FACILITY_KINDS = (
    ("CHP", 40),
    ("MCHP", 25),
    ("Health Post", 18),
    ("CHC", 10),
    ("Clinic", 4),
    ("Hospital", 3),
)
_UID_FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_UID_REST = _UID_FIRST + "0123456789"
_UID_SPACE = len(_UID_FIRST) * len(_UID_REST) ** 10
_UID_MULT = 6_364_136_223_846_793_005  # coprime with _UID_SPACE: index → uid is a bijection
assert math.gcd(_UID_MULT, _UID_SPACE) == 1
_FIRST_DAY = dt.date(1970, 1, 1).toordinal()
_LAST_DAY = dt.date(2023, 12, 31).toordinal()


@dataclass(frozen=True)
class TreePlan:
    """How many units of each level a tree of ``total`` units has."""

    total: int
    regions: int
    districts_per_region: int
    areas_per_district: int

    @property
    def districts(self) -> int:
        return self.regions * self.districts_per_region

    @property
    def areas(self) -> int:
        return self.districts * self.areas_per_district

    @property
    def facilities(self) -> int:
        return self.total - 1 - self.regions - self.districts - self.areas

    def describe(self) -> str:
        return (
            f"1 country, {self.regions} regions, {self.districts} districts, "
            f"{self.areas} health areas, {self.facilities} facilities"
        )


def plan(total: int) -> TreePlan:
    """The level sizes for ``total`` units (at least 5: one of each level)."""
    if total < 5:
        raise ValueError("A synthetic tree needs at least 5 units (one per level).")
    regions = REGIONS
    per_region = max(1, round(total / UNITS_PER_DISTRICT / regions))
    areas = AREAS_PER_DISTRICT
    # Small trees: shrink the upper levels until facilities are at least half the units.
    while 1 + regions + regions * per_region * (1 + areas) > total // 2 and (
        areas > 1 or regions > 1
    ):
        if areas > 1:
            areas = max(1, areas // 2)
        else:
            regions = max(1, regions // 2)
    p = TreePlan(total, regions, per_region, areas)
    if p.facilities < 0:
        raise ValueError(f"{total} units are too few for {p.describe()}.")
    return p


@dataclass(slots=True)
class SynthUnit:
    """One generated unit: plain data, shared by the record and GeoJSON writers."""

    ref: str
    name: str
    parent_ref: str | None
    level: int
    code: str
    opening_date: str
    point: Coord | None = None
    ring: list[Coord] | None = None  # closed exterior ring

    @property
    def type_name(self) -> str:
        return LEVEL_TYPES[self.level]


class _Generator:
    def __init__(self, total: int, seed: int) -> None:
        self.plan = plan(total)
        self.seed = seed
        self.rng = random.Random(seed)
        self.counter = 0
        self._uid_offset = random.Random(seed * 7919 + 1).randrange(_UID_SPACE)
        self.facility_counts = self._facility_counts()

    # --- identifiers and attributes ----------------------------------------------

    def uid(self, index: int) -> str:
        """DHIS2-style uid: a letter then 10 letters/digits; distinct for distinct index."""
        v = (index * _UID_MULT + self._uid_offset) % _UID_SPACE
        chars = []
        for _ in range(10):
            v, r = divmod(v, len(_UID_REST))
            chars.append(_UID_REST[r])
        chars.append(_UID_FIRST[v])
        return "".join(reversed(chars))

    def word(self) -> str:
        rng = self.rng
        n = 2 if rng.random() < 0.6 else 3
        return "".join(rng.choice(_SYLLABLES) for _ in range(n)).capitalize()

    def place_name(self) -> str:
        rng = self.rng
        name = self.word()
        r = rng.random()
        if r < 0.08:
            name = rng.choice(_PREFIXES) + name
        elif r < 0.16:
            name = f"{name} {self.word()}"
        return name

    def facility_name(self) -> str:
        kinds, weights = zip(*_FACILITY_KINDS, strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        return f"{self.place_name()} {kind}"

    def opening(self, after: int) -> int:
        """An opening day (ordinal) on or after the parent's."""
        lo = max(after, _FIRST_DAY)
        return lo + int((max(lo, _LAST_DAY - 365) - lo) * self.rng.random() ** 3)

    def new_unit(self, name: str, parent: SynthUnit | None, level: int, opened: int) -> SynthUnit:
        self.counter += 1
        return SynthUnit(
            ref=self.uid(self.counter),
            name=name,
            parent_ref=parent.ref if parent else None,
            level=level,
            code=f"OU_{self.counter}",
            opening_date=dt.date.fromordinal(opened).isoformat(),
        )

    # --- geometry ------------------------------------------------------------------

    def _facility_counts(self) -> list[int]:
        """Facilities per health area: lognormal weights, rounded to sum exactly."""
        rng = random.Random(self.seed * 31 + 17)
        areas, total = self.plan.areas, self.plan.facilities
        weights = [rng.lognormvariate(0.0, 0.5) for _ in range(areas)]
        scale = total / sum(weights)
        counts = [int(w * scale) for w in weights]
        for i in rng.sample(range(areas), total - sum(counts)):
            counts[i] += 1
        return counts

    @staticmethod
    def grid(rect: Rect, k: int) -> list[Rect]:
        """Split ``rect`` into ``k`` cells: rows of near-square cells."""
        x0, y0, x1, y1 = rect
        w, h = x1 - x0, y1 - y0
        rows = max(1, min(k, round(math.sqrt(k * h / w))))
        cells: list[Rect] = []
        base, extra = divmod(k, rows)
        for r in range(rows):
            in_row = base + (1 if r < extra else 0)
            ry0, ry1 = y0 + h * r / rows, y0 + h * (r + 1) / rows
            for c in range(in_row):
                cells.append((x0 + w * c / in_row, ry0, x0 + w * (c + 1) / in_row, ry1))
        return cells

    def territory(self, rect: Rect) -> tuple[list[Coord], Rect]:
        """A jittered ring inside ``rect`` and the inner rectangle it surely contains.

        Vertices lie in the band between ``rect`` and ``rect`` shrunk by a margin m,
        each edge's vertices monotone along the edge, so the ring is simple, stays
        inside ``rect`` and encloses the inner rectangle, where the children go.
        """
        rng = self.rng
        x0, y0, x1, y1 = rect
        m = 0.08 * min(x1 - x0, y1 - y0)

        def off() -> float:
            return rng.uniform(0.05 * m, 0.9 * m)

        def along(a: float, b: float) -> list[float]:
            return sorted(rng.uniform(a + m, b - m) for _ in range(rng.randint(2, 5)))

        ring: list[Coord] = [(x0 + off(), y0 + off())]
        ring += [(x, y0 + off()) for x in along(x0, x1)]
        ring.append((x1 - off(), y0 + off()))
        ring += [(x1 - off(), y) for y in along(y0, y1)]
        ring.append((x1 - off(), y1 - off()))
        ring += [(x, y1 - off()) for x in reversed(along(x0, x1))]
        ring.append((x0 + off(), y1 - off()))
        ring += [(x0 + off(), y) for y in reversed(along(y0, y1))]
        ring = [(round(x, 6), round(y, 6)) for x, y in ring]
        ring.append(ring[0])
        return ring, (x0 + m, y0 + m, x1 - m, y1 - m)

    def point_in(self, rect: Rect) -> Coord:
        x0, y0, x1, y1 = rect
        return (
            round(self.rng.uniform(x0, x1), 6),
            round(self.rng.uniform(y0, y1), 6),
        )

    # --- the tree -------------------------------------------------------------------

    def units(self) -> Iterator[SynthUnit]:
        p = self.plan
        c_open = dt.date(1961, 4, 27).toordinal()
        country = self.new_unit("Republic of " + self.word(), None, 1, c_open)
        country.ring, inner = self.territory(COUNTRY_RECT)
        yield country
        area_no = 0
        for r_rect in self.grid(inner, p.regions):
            r_open = self.opening(c_open)
            region = self.new_unit(f"{self.place_name()} Region", country, 2, r_open)
            region.ring, r_inner = self.territory(r_rect)
            yield region
            for d_rect in self.grid(r_inner, p.districts_per_region):
                d_open = self.opening(r_open)
                district = self.new_unit(f"{self.place_name()} District", region, 3, d_open)
                district.ring, d_inner = self.territory(d_rect)
                yield district
                for a_rect in self.grid(d_inner, p.areas_per_district):
                    a_open = self.opening(d_open)
                    area = self.new_unit(f"{self.place_name()} Health Area", district, 4, a_open)
                    area.ring, a_inner = self.territory(a_rect)
                    yield area
                    for _ in range(self.facility_counts[area_no]):
                        facility = self.new_unit(
                            self.facility_name(), area, 5, self.opening(a_open)
                        )
                        facility.point = self.point_in(a_inner)
                        yield facility
                    area_no += 1


def iter_synth(n: int, seed: int = 1) -> Iterator[SynthUnit]:
    """The ``n`` units of the tree for ``seed``, parents before children."""
    return _Generator(n, seed).units()


def to_record(u: SynthUnit) -> UnitRecord:
    return UnitRecord(
        name=u.name,
        source_ref=u.ref,
        parent_ref=u.parent_ref,
        type_name=u.type_name,
        code=u.code,
        opening_date=u.opening_date,
        location=Point(u.point) if u.point is not None else None,
        territory=Polygon(u.ring) if u.ring is not None else None,
    )


def iter_units(n: int, seed: int = 1) -> Iterator[UnitRecord]:
    """UnitRecords for :class:`storage.bulk.BulkLoader`, one at a time."""
    for u in iter_synth(n, seed):
        yield to_record(u)


# --- GeoJSON ------------------------------------------------------------------------


def _feature(u: SynthUnit) -> str:
    if u.point is not None:
        geom = f'{{"type":"Point","coordinates":[{u.point[0]!r},{u.point[1]!r}]}}'
    else:
        assert u.ring is not None
        coords = ",".join(f"[{x!r},{y!r}]" for x, y in u.ring)
        geom = f'{{"type":"Polygon","coordinates":[[{coords}]]}}'
    props = json.dumps(
        {
            "ref": u.ref,
            "name": u.name,
            "parent_ref": u.parent_ref,
            "level": u.level,
            "type": u.type_name,
            "code": u.code,
            "opening_date": u.opening_date,
        },
        separators=(",", ":"),
    )
    return f'{{"type":"Feature","properties":{props},"geometry":{geom}}}'


def write_geojson(path: str | Path, n: int, seed: int = 1) -> int:
    """Stream the tree to a GeoJSON FeatureCollection, one feature per line."""
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"type":"FeatureCollection","name":"org_unit",')
        fh.write('"crs":{"type":"name","properties":{"name":"urn:ogc:def:crs:OGC:1.3:CRS84"}},')
        fh.write('"features":[\n')
        for u in iter_synth(n, seed):
            if count:
                fh.write(",\n")
            fh.write(_feature(u))
            count += 1
        fh.write("\n]}\n")
    return count


def iter_geojson_features(path: str | Path) -> Iterator[dict[str, object]]:
    """Features of a file written by :func:`write_geojson`, one line at a time."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip().rstrip(",")
            if line.startswith('{"type":"Feature"'):
                yield json.loads(line)


def read_geojson_units(path: str | Path, batch: int = 5000) -> Iterator[UnitRecord]:
    """UnitRecords streamed back from a file written by :func:`write_geojson`.

    Points are handed over as ``(x, y)`` pairs, as the GeoJSON importer does (a
    shapely ``Point(...)`` per feature costs more than parsing its JSON).
    """
    pending: list[tuple[dict[str, object], dict[str, object]]] = []

    def emit() -> Iterator[UnitRecord]:
        for props, geom in pending:
            is_point = geom["type"] == "Point"
            yield UnitRecord(
                name=str(props["name"]),
                source_ref=str(props["ref"]),
                parent_ref=props["parent_ref"],  # type: ignore[arg-type]
                type_name=str(props["type"]),
                code=props["code"],  # type: ignore[arg-type]
                opening_date=props["opening_date"],  # type: ignore[arg-type]
                location=tuple(geom["coordinates"]) if is_point else None,  # type: ignore[arg-type]
                territory=None if is_point else Polygon(geom["coordinates"][0]),  # type: ignore[index]
            )
        pending.clear()

    for f in iter_geojson_features(path):
        pending.append((f["properties"], f["geometry"]))  # type: ignore[arg-type]
        if len(pending) >= batch:
            yield from emit()
    yield from emit()


# --- self-check -------------------------------------------------------------------


def check(n: int, seed: int) -> None:
    """Validate a (small) tree: unique refs, valid polygons, children inside parents."""
    shapes: dict[str, object] = {}
    refs: set[str] = set()
    levels: dict[int, int] = {}
    for u in iter_synth(n, seed):
        assert u.ref not in refs, f"duplicate ref {u.ref}"
        assert len(u.ref) == 11 and u.ref[0].isalpha(), u.ref
        refs.add(u.ref)
        levels[u.level] = levels.get(u.level, 0) + 1
        geom = Point(u.point) if u.point is not None else Polygon(u.ring)
        assert geom.is_valid, f"{u.name}: invalid geometry"
        if u.parent_ref is not None:
            parent = shapes[u.parent_ref]
            assert shapely.contains_properly(parent, geom), f"{u.name} not inside its parent"
        if u.level < 5:
            shapes[u.ref] = geom
    assert sum(levels.values()) == n, (levels, n)
    print(f"ok: {n} units, per level {dict(sorted(levels.items()))}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--geojson", type=Path, help="write the tree to this GeoJSON file")
    ap.add_argument("--check", action="store_true", help="validate nesting with shapely")
    args = ap.parse_args(argv)
    print(plan(args.size).describe())
    if args.check:
        check(args.size, args.seed)
    if args.geojson:
        print(f"{write_geojson(args.geojson, args.size, args.seed)} features → {args.geojson}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
