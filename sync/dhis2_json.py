"""Import organisation units, levels and groups as DHIS2's Web API returns them.

Input is the JSON of ``/api/organisationUnits`` (one or more pages, as saved
from the API or read by the DHIS2 client), ``/api/filledOrganisationUnitLevels``
or ``/api/organisationUnitLevels``, and ``/api/organisationUnitGroups`` with
``organisationUnits``.  Levels become org-unit types, DHIS2 uids become
``source_ref``, points become locations and polygons territories.  The whole
import is one transaction: a bad page leaves the registry as it was — but a unit
whose geometry cannot be read (a LineString, coordinates that are not degrees …)
comes without it, with a warning naming it: DHIS2's own apps still show that unit,
and one bad shape must not stop the pull of thousands.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely.errors import ShapelyError
from shapely.geometry.base import BaseGeometry

from storage import geometry
from storage.bulk import UnitRecord
from storage.errors import InvalidInput
from storage.registry import Registry
from sync.exchange import GroupDef, GroupSetDef, ImportPayload, ReadOptions, TypeDef
from sync.importing import ImportJob

#: The DHIS2 attributes of a unit kept in its ``extra_fields`` (DHIS2 owns them: a pull
#: replaces them, keeping any other key the registry's unit has).
DHIS2_EXTRA_KEYS = ("shortName", "description", "url", "contactPerson", "phoneNumber")


@dataclass
class Dhis2Payload:
    """The DHIS2 documents of one import, already parsed."""

    unit_pages: list[tuple[str, dict[str, Any]]]
    levels: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    group_sets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_units(self) -> int:
        return sum(len(page.get("organisationUnits", [])) for _, page in self.unit_pages)


def load_json_file(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8-sig") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: file not found.") from None
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})."
        ) from None


def classify(doc: Any, name: str) -> str:
    """Which DHIS2 document is this? units | levels | groups | group_sets."""
    if isinstance(doc, list):
        if all(isinstance(x, dict) and "level" in x and "name" in x for x in doc):
            return "levels"
    elif isinstance(doc, dict):
        for key, kind in (
            ("organisationUnits", "units"),
            ("organisationUnitLevels", "levels"),
            ("organisationUnitGroups", "groups"),
            ("organisationUnitGroupSets", "group_sets"),
        ):
            if isinstance(doc.get(key), list):
                return kind
    raise InvalidInput(
        f"{name}: not a DHIS2 organisationUnits, organisationUnitLevels, organisationUnitGroups "
        "or organisationUnitGroupSets response."
    )


def read_payload(paths: Sequence[Path]) -> Dhis2Payload:
    """Read and sort DHIS2 JSON files by what they contain (any order, any names)."""
    payload = Dhis2Payload(unit_pages=[])
    for path in paths:
        doc = load_json_file(path)
        kind = classify(doc, str(path))
        if kind == "units":
            payload.unit_pages.append((path.name, doc))
        elif kind == "levels":
            payload.levels.extend(doc if isinstance(doc, list) else doc["organisationUnitLevels"])
        elif kind == "groups":
            payload.groups.extend(doc["organisationUnitGroups"])
        else:
            payload.group_sets.extend(doc["organisationUnitGroupSets"])
    if not payload.unit_pages:
        raise InvalidInput("No organisationUnits page among the files given.")
    payload.unit_pages.sort(key=lambda item: (item[1].get("pager") or {}).get("page", 0))
    return payload


def _parent_ref(unit: dict[str, Any], where: str) -> str | None:
    parent = unit.get("parent")
    if isinstance(parent, dict) and parent.get("id"):
        return str(parent["id"])
    path = unit.get("path")
    if isinstance(path, str) and path.strip("/"):
        parts = path.strip("/").split("/")
        if parts[-1] != unit.get("id"):
            raise InvalidInput(f"{where}: field 'path' {path!r} does not end with its id.")
        return parts[-2] if len(parts) > 1 else None
    level = unit.get("level")
    if level not in (None, 1):
        raise InvalidInput(f"{where}: a level-{level} unit needs 'parent' or 'path'.")
    return None


def read_geometry(value: Any) -> tuple[BaseGeometry | None, BaseGeometry | None, str | None]:
    """A unit's DHIS2 ``geometry`` → (point location, territory, what is wrong with it).

    What cannot be stored as a point or a territory in degrees — not GeoJSON, a
    LineString, an empty shape, coordinates that are not numbers or not longitude and
    latitude — comes back as (None, None, why), for the caller to go on without it:
    the import would otherwise reject the unit, and with it the whole pull.  Invalid
    polygons (self-intersections …) are not refused here: the import keeps them as
    DHIS2 has them, with a warning of its own."""
    try:
        geom = geometry.from_geojson(value)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError,
            ShapelyError) as error:  # (an unknown "type": GeometryTypeError)
        return None, None, f"not valid GeoJSON: {error}"
    if geom is None:
        return None, None, None
    kind = geom.geom_type
    if geom.is_empty:
        return None, None, f"an empty {kind}"
    if kind == "MultiPoint" and len(geom.geoms) == 1:
        geom, kind = geom.geoms[0], "Point"
    if kind == "Point":
        x, y = geom.x, geom.y
        if not (math.isfinite(x) and math.isfinite(y)):
            return None, None, "a point whose coordinates are not numbers"
        if not -90 <= y <= 90:
            return None, None, (f"latitude {y:g}: a latitude is within -90..90 degrees (are "
                                "longitude and latitude swapped?)")
        if not -180 <= x <= 180:
            return None, None, f"longitude {x:g}: a longitude is within -180..180 degrees"
        return geom, None, None
    if kind not in ("Polygon", "MultiPolygon", "GeometryCollection"):
        return None, None, f"a {kind}, not a point or a polygon"
    try:
        territory = geometry.as_multipolygon(geom)
    except InvalidInput:  # a collection without polygons
        return None, None, f"a {kind} without a polygon"
    if territory is None or territory.is_empty:
        return None, None, f"an empty {kind}"
    minx, miny, maxx, maxy = shapely.bounds(territory).tolist()
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        return None, None, f"a {kind} whose coordinates are not numbers"
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        return None, None, (f"a {kind} with longitudes {minx:g}..{maxx:g} and latitudes "
                            f"{miny:g}..{maxy:g}: not degrees")
    return None, territory, None


def unit_records(payload: Dhis2Payload, level_names: dict[int, str],
                 warnings: list[str]) -> Iterator[UnitRecord]:
    """The units of the pages, as records.  ``warnings``: where to say which units come
    without their geometry (it cannot be read, see :func:`read_geometry`)."""
    for page_name, page in payload.unit_pages:
        units = page.get("organisationUnits")
        for i, unit in enumerate(units or [], start=1):
            where = f"{page_name}, organisationUnits item {i}"
            if not isinstance(unit, dict):
                raise InvalidInput(f"{where}: expected an object, got {type(unit).__name__}.")
            uid = unit.get("id")
            if not isinstance(uid, str) or not uid.strip():
                raise InvalidInput(f"{where}: field 'id' is missing or empty.")
            where = f"{where} (id {uid})"
            name = unit.get("name")
            if not isinstance(name, str) or not name.strip():
                raise InvalidInput(f"{where}: field 'name' is missing or empty.")
            level = unit.get("level")
            if level is None and isinstance(unit.get("path"), str):
                level = len(unit["path"].strip("/").split("/"))
            location, territory, problem = read_geometry(unit.get("geometry"))
            if problem is not None:
                warnings.append(f"DHIS2 org unit {name.strip()!r} (id {uid.strip()}, {page_name}, "
                                f"item {i}): its geometry cannot be read ({problem}); pulled "
                                "without it (a unit already here keeps the geometry it has).")
            extra = {k: unit[k] for k in DHIS2_EXTRA_KEYS if unit.get(k)}
            yield UnitRecord(
                name=name.strip(),
                source_ref=uid.strip(),
                parent_ref=_parent_ref(unit, where),
                type_name=level_names.get(level) if isinstance(level, int) else None,
                code=unit.get("code"),
                opening_date=unit.get("openingDate"),
                closed_date=unit.get("closedDate"),
                location=location,
                territory=territory,
                extra_fields=extra or None,
                where=where,
            )


def level_names(payload: Dhis2Payload) -> dict[int, str]:
    """DHIS2 levels → type names (``Level N`` when no levels document was given)."""
    names: dict[int, str] = {}
    for lvl in payload.levels:
        if not isinstance(lvl.get("level"), int) or not str(lvl.get("name", "")).strip():
            raise InvalidInput(
                "organisationUnitLevels: each level needs 'level' (a number) and 'name'; "
                f"got {json.dumps(lvl)[:120]}."
            )
        names[lvl["level"]] = str(lvl["name"]).strip()
    if not names:
        for _, page in payload.unit_pages:
            for unit in page.get("organisationUnits") or []:
                if isinstance(unit, dict) and isinstance(unit.get("level"), int):
                    names.setdefault(unit["level"], f"Level {unit['level']}")
    return dict(sorted(names.items()))


def to_import_payload(payload: Dhis2Payload) -> ImportPayload:
    """The DHIS2 documents as the format-neutral payload every import takes."""
    names = level_names(payload)
    groups: list[GroupDef] = []
    members: list[tuple[str, str]] = []
    for i, grp in enumerate(payload.groups, start=1):
        if not isinstance(grp, dict) or not grp.get("id"):
            raise InvalidInput(f"organisationUnitGroups item {i}: field 'id' is missing.")
        groups.append(GroupDef(grp["id"], grp.get("name") or "", grp.get("shortName"),
                               grp.get("code")))
        members.extend((grp["id"], m["id"]) for m in grp.get("organisationUnits") or []
                       if isinstance(m, dict) and m.get("id"))
    sets = []
    for i, gs in enumerate(payload.group_sets, start=1):
        if not isinstance(gs, dict) or not gs.get("id"):
            raise InvalidInput(f"organisationUnitGroupSets item {i}: field 'id' is missing.")
        sets.append(GroupSetDef(
            gs["id"], gs.get("name") or "",
            [g["id"] for g in gs.get("organisationUnitGroups") or [] if g.get("id")],
            short_name=gs.get("shortName"), compulsory=bool(gs.get("compulsory")),
        ))
    warnings: list[str] = []  # (filled while the units stream: the import reads it after)
    return ImportPayload(
        units=unit_records(payload, names, warnings),
        warnings=warnings,
        types=[TypeDef(name, depth) for depth, name in names.items()],
        groups=groups,
        group_sets=sets,
        memberships=members,
        total=payload.total_units,
        description="Imported from DHIS2 JSON",
        invalid_geometry="keep",
        blank_clears=True,  # DHIS2 gives each unit whole: no parent is a root
        owned_extra_keys=DHIS2_EXTRA_KEYS,  # (an upsert keeps the registry's other keys)
    )


def read_file(path: Path, opts: ReadOptions | None = None) -> ImportPayload:
    """Format entry point: one DHIS2 JSON file (use ``read_files`` for several)."""
    return read_files([path])


def read_files(paths: Sequence[Path], opts: ReadOptions | None = None) -> ImportPayload:
    return to_import_payload(read_payload(paths))


def import_dhis2_files(
    reg: Registry, paths: Sequence[Path], *, source: str, description: str | None = None,
    origin: str = "dhis2_import",
) -> dict[str, Any]:
    """Convenience for scripts: read the files and import them as a new draft version."""
    return ImportJob(reg, read_files(paths), source=source, description=description,
                     origin=origin).run()
