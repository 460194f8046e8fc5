"""GeoJSON FeatureCollection (RFC 7946): one feature per unit, read and written as a stream.

Each feature's ``properties``::

    ref, name, parent_ref, level, type, code, opening_date, closed_date,
    groups (list of group refs), uuid, aliases (list), validation_status,
    extra_fields (object), location ([lon, lat] or null)

**Geometry.** A unit's territory (``Polygon``/``MultiPolygon``) is the feature's
geometry when it has one; otherwise its point (``Point``); ``null`` when it has
neither.  A unit with *both* keeps the polygon as the geometry and its point in the
``location`` property as ``[lon, lat]`` — QGIS, GDAL, Mapshaper and web maps all
read a plain polygon layer, whereas a ``GeometryCollection`` is shown badly or not
at all by most of them.  ``location`` is written only in that case (``null``
otherwise): a point geometry moved in a GIS is never contradicted by a stale
property.  On reading, a ``Point`` geometry is the location (a ``location``
property is then ignored), a polygon the territory, and a ``GeometryCollection``
of one point and polygons is accepted too.

**Foreign members** (allowed by RFC 7946 §6.1), written before ``features`` so a
streaming reader meets them first: ``"types": [{name, depth, short_name}]`` and
``"groups": [{ref, name, short_name, code}]``.  Group refs named by features but
absent from ``groups`` become groups named by their ref.  A legacy ``crs`` member
(GeoJSON 2008) is honoured: coordinates are reprojected to EPSG:4326.

A file written by Georeg (it carries a ``"georeg"`` member) is re-imported with
its polygons as they are — an invalid polygon the registry kept from DHIS2 comes
back with a warning instead of refusing the file; other files follow the usual
rule (refused unless ``--fix-geometry``).

**Reading** parses the file once, incrementally (the C scanner of ``json``'s
``raw_decode`` over a sliding buffer), so memory does not grow with the file.  The members before
``features`` (``types``, ``groups``, ``crs``, ``georeg``: our writer puts them there)
and the first feature are read when the file is opened: a file that is empty, not
JSON, not a FeatureCollection or without features is refused before anything is
written.  The units then stream; the types (with their depth, from the features'
``level`` when ``types`` does not give it), the groups named only by features and
members after ``features`` are learned on the way and listed in the payload at the
end, which the import job adds after the units (a type at several levels gets no
depth, with a warning).  A problem found only then (a ``type`` member after the
features that is not ``FeatureCollection``, no feature with a name, a ``crs`` after
the features) fails the import, which is rolled back.  The unit count for the
progress bar is estimated from the share of the file read, exact at the end.
Values that are wrong for one row (an empty name, latitude 200, a coordinate that is
a text, an invalid polygon, a bad date) are passed on to the import job, which
checks every row and reports them all together with the file and feature number; a
file that is not JSON, not a FeatureCollection, or a feature that is not a feature,
is refused here.  A GeoJSON with other column names: give ``--mapping`` (or
``--parent-by-location``) and it is read by the generic vector reader.
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from storage import geometry
from storage.bulk import ROW_PROBLEMS, UnitRecord
from storage.errors import InvalidInput
from storage.jobs import gc_paused
from sync.exchange import (
    GroupDef,
    ImportPayload,
    ReadOptions,
    TypeDef,
    UnitBatch,
    VersionData,
    unit_batches,
)

PROPERTIES = ("ref", "name", "parent_ref", "level", "type", "code", "opening_date",
              "closed_date", "groups", "uuid", "aliases", "validation_status",
              "extra_fields", "location")
_WGS84 = CRS.from_epsg(4326)
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]  # set in __init__, untyped


# --- incremental JSON -------------------------------------------------------------------


class _Syntax(Exception):
    """The stream is not the JSON we expect; the caller re-parses for the exact position."""


class _JsonStream:
    """Just enough of a pull parser: the top-level object and the ``features`` array.

    Bytes are decoded here (not by a text file) so the stream knows how far into the
    file it is: :meth:`offset` estimates the byte position of the parser, from which
    the reader estimates the number of features before it has seen them all."""

    CHUNK = 1 << 20

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.buf, self.pos, self.eof = fh, "", 0, False
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.dropped = 0  # characters read before ``buf[0]``
        self.nbytes = self.nchars = 0  # bytes read, characters decoded

    def _fill(self) -> bool:
        if self.eof:
            return False
        pending = len(self.buf) - self.pos
        while True:
            raw = self.fh.read(max(self.CHUNK, pending))  # doubles for one huge value
            data = self.decoder.decode(raw, final=not raw)
            if data or not raw:  # (a chunk may end inside a character: read on)
                break
        if not data:
            self.eof = True
            return False
        self.nbytes += len(raw)
        self.nchars += len(data)
        self.dropped += self.pos
        self.buf = self.buf[self.pos:] + data
        self.pos = 0
        return True

    def offset(self) -> float:
        """About how many bytes of the file the parser has gone through."""
        if not self.nchars:
            return 0.0
        return (self.dropped + self.pos) * self.nbytes / self.nchars

    def peek(self) -> str:
        """The next non-blank character ('' at the end), not consumed."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise _Syntax(char)
        self.pos += 1

    def value(self) -> Any:
        buf, pos = self.buf, self.pos
        if pos >= len(buf) or buf[pos] in " \t\n\r":
            self.pos = pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= len(buf):
                self.peek()
        while True:
            try:
                # the C scanner itself: ``raw_decode`` without its Python frame
                obj, end = _SCAN(self.buf, self.pos)
            except (StopIteration, json.JSONDecodeError):
                if self._fill():
                    continue
                raise _Syntax("value") from None
            if end == len(self.buf) and self._fill():
                continue  # a number cut by the buffer's end: read on and decode again
            self.pos = end
            return obj

    def members(self) -> Iterator[tuple[str, Any]]:
        """Top-level members; for ``features`` the value is an item iterator (consume it)."""
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
        else:
            while True:
                key = self.value()
                if not isinstance(key, str):
                    raise _Syntax("key")
                self.expect(":")
                if key == "features" and self.peek() == "[":
                    yield key, _Items(self._items())
                else:
                    yield key, self.value()
                char = self.peek()
                self.pos += 1
                if char == "}":
                    break
                if char != ",":
                    raise _Syntax(",")
        if self.peek() != "":
            raise _Syntax("end")

    def _items(self) -> Iterator[Any]:
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            pos = self.pos
            char = self.buf[pos] if pos < len(self.buf) else ""
            if char not in (",", "]"):  # blanks, or the buffer's end: the slow path
                char = self.peek()
            self.pos += 1
            if char == "]":
                return
            if char != ",":
                raise _Syntax(",")


class _Items:
    """The ``features`` array, streamed."""

    def __init__(self, items: Iterator[Any]) -> None:
        self.items = items


#: ``header["features"]`` once the array has been met (and is being streamed)
STREAMED: Any = object()
_NONE: Any = object()  # no feature (an empty array)


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: file not found.") from None
    except OSError as error:
        raise InvalidInput(f"{path}: cannot be read ({error.strerror}).") from None


def _syntax_error(path: Path) -> InvalidInput:
    """The exact position of a JSON error, from the standard parser."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            json.load(fh)
    except json.JSONDecodeError as error:
        return InvalidInput(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})."
        )
    except UnicodeDecodeError as error:
        return InvalidInput(f"{path}: not UTF-8 text (byte {error.start}); GeoJSON is UTF-8.")
    return InvalidInput(f"{path}: expected a GeoJSON FeatureCollection (a JSON object).")


# --- reading ----------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A property as text: numbers become '12', blanks None."""
    if type(value) is str:
        return value.strip() or None
    if value is None or isinstance(value, bool):
        return None if value is None else str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(";")
    if not isinstance(value, list):
        value = [value]
    return [t for t in (_text(v) for v in value) if t]


def _check_feature(path: Path, i: int, feat: Any) -> dict[str, Any]:
    if not isinstance(feat, dict) or feat.get("type") != "Feature":
        got = feat.get("type") if isinstance(feat, dict) else type(feat).__name__
        raise InvalidInput(f"{path.name}, feature {i}: expected a GeoJSON Feature, got {got!r}.")
    props = feat.get("properties")
    if props is None:
        return {}
    if not isinstance(props, dict):
        raise InvalidInput(f"{path.name}, feature {i}: field 'properties' must be an object.")
    return props


def _transformer(path: Path, header: dict[str, Any], opts: ReadOptions) -> Transformer | None:
    """Legacy ``crs`` member or --crs → a transformer to EPSG:4326 (None: already there)."""
    given = opts.crs
    if given is None:
        crs = header.get("crs")
        if not crs:
            return None
        given = ((crs.get("properties") or {}).get("name") if isinstance(crs, dict) else None)
        if not given:
            raise InvalidInput(f"{path}: member 'crs' is not a named CRS; remove it (GeoJSON "
                               "is EPSG:4326) or give --crs.")
    try:
        source = CRS.from_user_input(given)
    except CRSError:
        raise InvalidInput(f"{path}: unknown CRS {given!r} (give e.g. --crs EPSG:32628).") \
            from None
    if source.equals(_WGS84, ignore_axis_order=True) or "CRS84" in str(given).upper():
        return None
    return Transformer.from_crs(source, _WGS84, always_xy=True)


def _geometry(props: dict[str, Any], feat: dict[str, Any], where: str,
              tr: Transformer | None) -> tuple[BaseGeometry | None, BaseGeometry | None]:
    raw = feat.get("geometry")
    if (bad := _not_a_number(raw)) is not None:  # (shapely would read "12.5" as 12.5)
        raise InvalidInput(f"{where}: field 'geometry' has a coordinate that is not a "
                           f"number ({bad!r}); GeoJSON coordinates are numbers.")
    try:
        geom = geometry.from_geojson(raw)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError,
            shapely.errors.ShapelyError) as error:  # (an unknown "type": GeometryTypeError)
        raise InvalidInput(f"{where}: field 'geometry' is not valid GeoJSON ({error}).") \
            from None
    location = territory = None
    if geom is not None:
        kind = geom.geom_type
        if kind == "Point":
            location = geom
        elif kind == "MultiPoint" and len(geom.geoms) == 1:
            location = geom.geoms[0]
        elif kind in ("Polygon", "MultiPolygon"):
            territory = geom
        elif kind == "GeometryCollection":
            points = [g for g in geom.geoms if g.geom_type == "Point"]
            polys = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
            if len(points) > 1 or len(points) + len(polys) != len(geom.geoms):
                raise InvalidInput(f"{where}: field 'geometry': a GeometryCollection may hold "
                                   "one point and polygons only.")
            location = points[0] if points else None
            territory = geometry.as_multipolygon(geom) if polys else None
        else:
            raise InvalidInput(f"{where}: field 'geometry' is a {kind}; a unit takes a Point, "
                               "a Polygon or a MultiPolygon.")
    extra_point = props.get("location")
    if location is None and extra_point is not None:
        try:
            if isinstance(extra_point, dict):
                location = geometry.from_geojson(extra_point)
            else:
                x, y = (float(v) for v in extra_point)
                location = shapely.Point(x, y)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError,
                shapely.errors.ShapelyError):
            raise InvalidInput(f"{where}: field 'location' must be [longitude, latitude]; got "
                               f"{json.dumps(extra_point)[:80]}.") from None
    if tr is not None:
        location = _project(tr, location)
        territory = _project(tr, territory)
    return location, territory


def _not_a_number(raw: Any) -> Any:
    """The first coordinate value of a GeoJSON geometry that is not a number, else None."""
    if type(raw) is not dict:
        return None
    if raw.get("type") == "GeometryCollection":
        parts = raw.get("geometries")
        for part in parts if type(parts) is list else ():
            if (bad := _not_a_number(part)) is not None:
                return bad
        return None
    coordinates = raw.get("coordinates")
    stack = [coordinates] if type(coordinates) is list else []  # (else: not GeoJSON at all)
    while stack:
        value = stack.pop()
        if type(value) is list:
            stack.extend(value)
        elif value is not None and (type(value) is bool or not isinstance(value, (int, float))):
            return value
    return None


def _project(tr: Transformer, geom: BaseGeometry | None) -> BaseGeometry | None:
    if geom is None or geom.is_empty:
        return geom
    return shapely.transform(geom, lambda xy: _xy(tr, xy))


def _xy(tr: Transformer, xy: Any) -> Any:
    x, y = tr.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def _extra(value: Any, where: str) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):  # GDAL and spreadsheets keep objects as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidInput(f"{where}: field 'extra_fields' must be a JSON object.") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: field 'extra_fields' must be an object.")
    return value or None


def _simple_point(raw: Any) -> list[float] | None:
    """``[x, y]`` of a plain 2-D GeoJSON Point (the common case), else None."""
    if type(raw) is dict and raw.get("type") == "Point":
        xy = raw.get("coordinates")
        if type(xy) is list and len(xy) == 2:
            x, y = xy
            if (type(x) is float or type(x) is int) and (type(y) is float or type(y) is int):
                return xy
    return None


def _bad_point(raw: Any) -> tuple[Any, ...] | None:
    """The coordinates, as they are, of a GeoJSON Point whose coordinates are not all
    numbers (``["12.5", 8]``, ``[true, 8]``), else None.  Handed over as the unit's
    location, they are rejected by the import job with the other rows' problems —
    the geometry parser would read a text as a number, or stop the whole read."""
    if type(raw) is dict and raw.get("type") == "Point":
        xy = raw.get("coordinates")
        if type(xy) is list and not all(type(v) is float or type(v) is int for v in xy):
            return tuple(xy)
    return None


def _record(props: dict[str, Any], where: str,
            location: BaseGeometry | tuple[Any, ...] | None,
            territory: BaseGeometry | None) -> UnitRecord:
    # ``_text`` inlined for the common case, a text (100k rows: a tenth of the reading)
    get = props.get
    name, ref, parent, kind, code, opening, closed, status, uuid = (
        get("name"), get("ref"), get("parent_ref"), get("type"), get("code"),
        get("opening_date"), get("closed_date"), get("validation_status"), get("uuid"))
    groups, aliases, extra = get("groups"), get("aliases"), get("extra_fields")
    status = (status.strip() or None) if type(status) is str else _text(status)
    return UnitRecord(
        name=name.strip() if type(name) is str else (_text(name) or ""),
        source_ref=(ref.strip() or None) if type(ref) is str else _text(ref),
        parent_ref=(parent.strip() or None) if type(parent) is str else _text(parent),
        type_name=(kind.strip() or None) if type(kind) is str else _text(kind),
        code=(code.strip() or None) if type(code) is str else _text(code),
        opening_date=(opening.strip() or None) if type(opening) is str else _text(opening),
        closed_date=(closed.strip() or None) if type(closed) is str else _text(closed),
        aliases=(_str_list(aliases) or None) if aliases is not None else None,
        extra_fields=_extra(extra, where) if extra is not None else None,
        location=location,  # (a bad point: for the job to reject)
        territory=territory,
        validation_status=status or "valid",
        uuid=(uuid.strip() or None) if type(uuid) is str else _text(uuid),
        groups=(_str_list(groups) or None) if groups is not None else None,
        where=where,
    )


def _refused(props: dict[str, Any], where: str, ref: str | None, problem: str) -> UnitRecord:
    """A feature this reader cannot make a unit of (its geometry or extra fields): handed
    over with ``problem``, for the import job to reject the row with the others'
    problems (``--skip-invalid`` skips it, and the rows below it) instead of stopping the
    read at the first one."""
    name, parent = props.get("name"), props.get("parent_ref")
    return UnitRecord(name=name.strip() if type(name) is str else (_text(name) or ""),
                      source_ref=ref,
                      parent_ref=(parent.strip() or None) if type(parent) is str
                      else _text(parent),
                      where=where, problem=problem)


def _declared_types(path: Path, declared: Any) -> dict[str, TypeDef]:
    """Member ``types``: ``[{name, depth, short_name}]``."""
    types: dict[str, TypeDef] = {}
    if not declared:
        return types
    if not isinstance(declared, list):
        raise InvalidInput(f"{path}: member 'types' must be a list of {{name, depth}}.")
    for i, t in enumerate(declared, start=1):
        if not isinstance(t, dict) or not _text(t.get("name")):
            raise InvalidInput(f"{path}: member 'types', item {i}: field 'name' is missing.")
        depth = t.get("depth")
        types[_text(t["name"]) or ""] = TypeDef(
            _text(t["name"]) or "", depth if isinstance(depth, int) else None,
            _text(t.get("short_name")))
    return types


def _declared_groups(path: Path, declared: Any) -> dict[str, GroupDef]:
    """Member ``groups``: ``[{ref, name, short_name, code}]``."""
    groups: dict[str, GroupDef] = {}
    if not declared:
        return groups
    if not isinstance(declared, list):
        raise InvalidInput(f"{path}: member 'groups' must be a list of {{ref, name}}.")
    for i, g in enumerate(declared, start=1):
        ref = _text(g.get("ref")) if isinstance(g, dict) else None
        if ref is None:
            raise InvalidInput(f"{path}: member 'groups', item {i}: field 'ref' is missing.")
        groups[ref] = GroupDef(ref, _text(g.get("name")) or ref, _text(g.get("short_name")),
                               _text(g.get("code")))
    return groups


def _by_depth(types: Iterable[TypeDef]) -> list[TypeDef]:
    return sorted(types, key=lambda t: (t.depth is None, t.depth or 0, t.name))


def _add_types(payload: ImportPayload, types: Iterable[TypeDef]) -> None:
    """Types not listed yet (a name already listed keeps its first definition)."""
    known = {t.name for t in payload.types}
    payload.types.extend(t for t in types if t.name not in known)


def _add_groups(payload: ImportPayload, groups: Iterable[GroupDef]) -> None:
    """Groups not listed yet; a group listed by its ref alone takes a real name."""
    at = {g.ref: i for i, g in enumerate(payload.groups)}
    for g in groups:
        i = at.get(g.ref)
        if i is None:
            at[g.ref] = len(payload.groups)
            payload.groups.append(g)
        elif payload.groups[i].name == g.ref != g.name:
            payload.groups[i] = g


class _Reader:
    """One FeatureCollection read in one pass.

    Created, it reads the members before ``features`` (our writer puts ``types``,
    ``groups``, ``crs`` and ``georeg`` there) and the first feature, so a file that is
    empty, not JSON, not a FeatureCollection or without features is refused before
    the import writes anything.  :meth:`units` then streams the units, learning as
    they pass what the old first pass collected (types and their levels, group refs
    named by features, whether any feature has a name), and at the end reads the
    members after ``features``, checks what could only be checked then, and lists the
    types, groups and warnings it learned in the payload (the import job adds them
    after the units: see ``ImportJob``); an error raised then rolls the import back.
    ``payload.total`` is an estimate while the units stream (from the share of the
    file read so far), exact at the end.
    """

    def __init__(self, path: Path, opts: ReadOptions) -> None:
        self.path, self.opts = path, opts
        self.next: _Reader | None = None  # the file after this one, in one import
        self.header: dict[str, Any] = {}
        self.total = 0  # units expected: an estimate until the end
        self.fh = _open(path)
        try:
            self.size = os.fstat(self.fh.fileno()).st_size
            self.stream = _JsonStream(self.fh)
            self.members = self.stream.members()
            self._head()
        except BaseException:
            self.fh.close()
            raise
        self.total = self._estimate(1)

    def _head(self) -> None:
        """The members before ``features`` and its first item (or the whole file, when
        the array is empty or absent), checked."""
        header, path = self.header, self.path
        self.streamed, self.first, self.items = False, _NONE, iter(())
        self.start = 0.0  # where the features begin (bytes)
        try:
            for key, value in self.members:
                if isinstance(value, _Items):
                    header[key], self.streamed, self.items = STREAMED, True, value.items
                    break
                header[key] = value
            if self.streamed:
                self.start = self.stream.offset()
                self.first = next(self.items, _NONE)
                if self.first is _NONE:  # no features: read on to the end
                    for key, value in self.members:
                        header.setdefault(key, value)
        except (_Syntax, UnicodeDecodeError):
            raise _syntax_error(path) from None
        if "type" in header or self.first is _NONE:
            self._check_type(header)
        if not self.streamed:
            raise InvalidInput(f"{path}: member 'features' must be an array of features.")
        if self.first is _NONE:
            raise InvalidInput(f"{path}: no features.")
        self.tr = _transformer(path, header, self.opts)
        self.types = _declared_types(path, header.get("types"))
        self.groups = _declared_groups(path, header.get("groups"))

    def _check_type(self, members: dict[str, Any]) -> None:
        kind = members.get("type")
        if kind != "FeatureCollection":
            raise InvalidInput(f"{self.path}: not a GeoJSON FeatureCollection (its member "
                               f"'type' is {kind!r}).")

    def _estimate(self, count: int) -> int:
        """Units expected, from the ``count`` seen in the bytes read so far."""
        done = self.stream.offset() - self.start
        left = self.size - self.start
        return max(count, round(count * left / done) if done > 0 else 0)

    def units(self, payload: ImportPayload, readers: list[_Reader]) -> Iterator[UnitRecord]:
        """The units; ``payload`` (shared by ``readers``, the files of one import) gets
        the running estimate of the total and, at the end, what the file told."""
        try:
            yield from self._units(payload, readers)
        finally:
            self.fh.close()

    def _units(self, payload: ImportPayload, readers: list[_Reader]) -> Iterator[UnitRecord]:
        path, file, tr = self.path, self.path.name, self.tr
        keys: dict[str, None] = {}  # property names, shown when no feature has a name
        type_depths: dict[str, set[int]] = {}
        seen_types: set[tuple[str, int | None]] = set()
        group_refs: dict[str, None] = {}
        named = False
        i = 0
        try:
            for feat in itertools.chain((self.first,), self.items):
                i += 1
                if not i & 1023:  # the estimate, refined as the file is read
                    self.total = self._estimate(i)
                    payload.total = sum(r.total for r in readers)
                if type(feat) is dict and feat.get("type") == "Feature" \
                        and type(props := feat.get("properties")) is dict:
                    pass  # the common case, without a call
                else:
                    props = _check_feature(path, i, feat)
                ref = props.get("ref")
                ref = (ref.strip() or None) if type(ref) is str else _text(ref)
                where = f"{file}, feature {i} (ref {ref})" if ref else f"{file}, feature {i}"
                raw = feat.get("geometry")
                xy = _simple_point(raw) if tr is None else None
                try:
                    if xy is not None:  # a plain point: as (x, y), no geometry object
                        rec = _record(props, where, (xy[0], xy[1]), None)
                    elif (bad := _bad_point(raw)) is not None:
                        rec = _record(props, where, bad, None)
                    else:
                        rec = _record(props, where, *_geometry(props, feat, where, tr))
                except InvalidInput as error:  # a bad geometry or extra_fields: the job
                    if not ROW_PROBLEMS.get():  # rejects the row (see ROW_PROBLEMS)
                        raise
                    rec = _refused(props, where, ref, error.message)
                if not named:
                    if rec.name:
                        named = True
                    else:
                        keys.update(dict.fromkeys(props))
                kind = rec.type_name
                if kind is not None:
                    level = props.get("level")
                    seen = (kind, level if type(level) is int else None)
                    if seen not in seen_types:
                        seen_types.add(seen)
                        depths = type_depths.setdefault(kind, set())
                        if seen[1] is not None:
                            depths.add(seen[1])
                if rec.groups:
                    group_refs.update(dict.fromkeys(rec.groups))
                yield rec
            trailer: dict[str, Any] = {}
            for key, value in self.members:  # members after ``features``
                trailer.setdefault(key, value)
        except (_Syntax, UnicodeDecodeError):
            raise _syntax_error(path) from None
        self._end(payload, readers, i, named, keys, type_depths, group_refs, trailer)

    def _end(self, payload: ImportPayload, readers: list[_Reader], count: int, named: bool,
             keys: dict[str, None], type_depths: dict[str, set[int]],
             group_refs: dict[str, None], trailer: dict[str, Any]) -> None:
        """What the whole file tells: checks, then its types, groups and warnings."""
        path = self.path
        if "type" not in self.header:
            self._check_type(trailer)
        if not named:
            shown = ", ".join(list(keys)[:30]) or "none"
            raise InvalidInput(
                f"{path}: no feature has a 'name' property (properties here: {shown}). "
                "For other column names give --mapping (see docs/formats.md)."
            )
        if self.opts.crs is None and "crs" in trailer and "crs" not in self.header \
                and _transformer(path, trailer, self.opts) is not None:
            raise InvalidInput(f"{path}: member 'crs' comes after 'features', too late to "
                               "reproject them; move it before 'features' or give --crs.")
        types = {**self.types, **_declared_types(path, trailer.get("types"))}
        learned = []
        for name, depths in type_depths.items():
            if name in types:
                continue
            learned.append(TypeDef(name, next(iter(depths)) if len(depths) == 1 else None))
            if len(depths) > 1:
                levels = ", ".join(map(str, sorted(depths)))
                payload.warnings.append(f"{path.name}: type {name!r} has features at levels "
                                        f"{levels}; it is given no depth.")
        _add_types(payload, _by_depth([*types.values(), *learned]))
        groups = {**self.groups, **_declared_groups(path, trailer.get("groups"))}
        undeclared = [r for r in group_refs if r not in groups]
        if undeclared and groups:
            shown = ", ".join(undeclared[:10]) + (" …" if len(undeclared) > 10 else "")
            payload.warnings.append(f"{path.name}: group(s) {shown} are not in member "
                                    "'groups'; named by their ref.")
        _add_groups(payload, [*groups.values(), *(GroupDef(r, r) for r in undeclared)])
        if self.next is not None:  # the next file's header, in the files' order
            _add_types(payload, _by_depth(self.next.types.values()))
            _add_groups(payload, self.next.groups.values())
        self.total = count
        payload.total = sum(r.total for r in readers)

    @property
    def keep_invalid(self) -> bool:
        """A Georeg export holds what a registry already accepted: its polygons are kept
        as they are (warned).  The marker counts before ``features`` only (our writer
        puts it there): the job decides before the units come."""
        return isinstance(self.header.get("georeg"), dict)


def _delegate(opts: ReadOptions | None) -> bool:
    return bool(opts and (opts.mapping or opts.parent_by_location))


def _payload(readers: list[_Reader], description: str) -> ImportPayload:
    """One import of ``readers``' files.  What the first file declares before its
    features is listed now; the rest as the units stream (see :class:`_Reader`), in the
    order the files come, so that the first definition of a type wins and a group
    named by its ref alone takes the first real name, as when each file was read
    whole first.  (A group named by its ref waits for the end too, in case a later
    member names it: the import job adds what is listed up front before the units.)"""
    for r, after in zip(readers, readers[1:], strict=False):
        r.next = after
    first = readers[0]
    payload = ImportPayload(
        units=(),
        types=_by_depth(first.types.values()),
        groups=[g for g in first.groups.values() if g.name != g.ref],
        warnings=[],
        total=sum(r.total for r in readers),
        description=description,
        invalid_geometry="keep" if all(r.keep_invalid for r in readers) else "reject",
    )
    payload.units = (u for r in readers for u in r.units(payload, readers))
    return payload


@gc_paused()
def read_file(path: Path, opts: ReadOptions | None = None) -> ImportPayload:
    """Read one FeatureCollection (see the module docstring for the properties)."""
    opts = opts or ReadOptions()
    if _delegate(opts):
        from sync.formats import vector

        return vector.read_file(path, opts)
    path = Path(path)
    return _payload([_Reader(path, opts)], f"Imported from {path.name}")


@gc_paused()
def read_files(paths: Sequence[Path], opts: ReadOptions | None = None) -> ImportPayload:
    """Several FeatureCollections as one import (or, with --parent-by-location or
    --mapping, one file per level through the vector reader).  Every file's header is
    read and checked first; the files are then streamed one after the other."""
    opts = opts or ReadOptions()
    if _delegate(opts):
        from sync.formats import vector

        return vector.read_files(list(paths), opts)
    readers: list[_Reader] = []
    try:
        for p in paths:
            readers.append(_Reader(Path(p), opts))
    except BaseException:
        for r in readers:
            r.fh.close()
        raise
    return _payload(readers, "Imported from " + ", ".join(Path(p).name for p in paths))


# --- writing ----------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _geojson(geom: BaseGeometry | None) -> Any:
    if geom is None or geom.is_empty:
        return None
    return mapping(geom)


def feature(u: Any) -> dict[str, Any]:
    """One :class:`~sync.exchange.ExportUnit` as a GeoJSON feature (a dict)."""
    geom = u.territory if u.territory is not None else u.location
    return {"type": "Feature", "properties": _properties(u), "geometry": _geojson(geom)}


_PROPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_WRITE_BATCH = 2000


def _make_encode() -> Any:
    """``_PROPS.encode`` without its per-call set-up: CPython's C encoder, made once
    (``JSONEncoder.encode`` builds a new one for every object — a third of the time of
    encoding 100k small property objects).  Same settings, same text."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # another Python: the plain way
        return _PROPS.encode
    c_encode = make(None, _PROPS.default, json.encoder.encode_basestring, None,
                    _PROPS.key_separator, _PROPS.item_separator, False, False, True)

    def encode(value: Any) -> str:
        return "".join(c_encode(value, 0))

    return encode


_encode = _make_encode()


def _properties(u: Any) -> dict[str, Any]:
    both = u.territory is not None and u.location is not None and not u.location.is_empty
    return {
        "ref": u.ref,
        "name": u.name,
        "parent_ref": u.parent_ref,
        "level": u.depth,
        "type": u.type,
        "code": u.code,
        "opening_date": u.opening_date,
        "closed_date": u.closed_date,
        "groups": list(u.groups),
        "uuid": u.uuid,
        "aliases": list(u.aliases),
        "validation_status": u.validation_status,
        "extra_fields": u.extra_fields or {},
        "location": [u.location.x, u.location.y] if both else None,
    }


_esc = getattr(json.encoder, "c_encode_basestring", json.encoder.encode_basestring)

def _column(values: list[Any]) -> tuple[str, list[Any]]:
    """A column of texts (or None) for :func:`_batch_texts`: its ``%`` slot and values.

    The common case, texts that JSON writes as they are (no quote, backslash or
    control character: checked on the whole column at once), goes into a quoted slot
    unchanged; a column of few distinct values (types, statuses, dates) is escaped
    once per value; any other is escaped value by value.  Non-texts go through the
    encoder, None is ``null``."""
    try:
        joined = "".join(values)
    except TypeError:  # a None (or a non-text) in the column
        pass
    else:
        if len(_esc(joined)) == len(joined) + 2:
            return '"%s"', values
    distinct = set(values)
    if len(distinct) * 4 <= len(values):
        made = {v: _json_value(v) for v in distinct}
        return "%s", list(map(made.__getitem__, values))
    return "%s", list(map(_json_value, values))


def _json_value(value: Any) -> str:
    if type(value) is str:
        return _esc(value)  # type: ignore[no-any-return]
    return "null" if value is None else _encode(value)  # type: ignore[no-any-return]


def _batch_texts(batch: UnitBatch) -> list[str]:
    """A batch of units as feature texts, the same as ``feature`` gives: the geometry
    written vectorised (``shapely.to_geojson``: shortest round-trip numbers, like
    ``json.dumps``), each property column made JSON in one pass (:func:`_column`),
    and each feature put together with one ``%`` of a template made for the batch
    (no dict, no encoder call per unit)."""
    n = len(batch)
    locs, ters = batch.locations, batch.territories
    # (``np.fromiter``: filling an object array from a list of geometries makes numpy
    # probe each one as a possible sequence, ~30x slower)
    geoms = np.fromiter([t if t is not None else loc for loc, t in zip(locs, ters, strict=True)],
                        dtype=object, count=n)
    missing = shapely.is_missing(geoms)
    missing[~missing] = shapely.is_empty(geoms[~missing])
    texts = np.full(n, "null", dtype=object)
    if (~missing).any():
        texts[~missing] = shapely.to_geojson(geoms[~missing])
    encode = _encode
    # ``location`` only for a unit with both a territory and a (non-empty) point
    location = ["null"] * n
    for i, ter in enumerate(ters):
        if ter is not None and (loc := locs[i]) is not None and not loc.is_empty:
            location[i] = encode([loc.x, loc.y])
    depths = batch.depths
    slots: list[tuple[str, list[Any]]] = [
        _column(batch.refs), _column(batch.names), _column(batch.parent_refs),
        ("%s", depths) if set(map(type, depths)) <= {int}
        else ("%s", list(map(_json_value, depths))),
        _column(batch.types), _column(batch.codes), _column(batch.opening_dates),
        _column(batch.closed_dates),
        ("%s", [encode(list(g)) if g else "[]" for g in batch.groups]),
        _column(batch.uuids),
        ("%s", [encode(list(a)) if a else "[]" for a in batch.aliases]),
        _column(batch.statuses),
        ("%s", [encode(e) if e else "{}" for e in batch.extra_fields]),
        ("%s", location),
    ]
    template = ('{"type":"Feature","properties":{'
                + ",".join(f'"{p}":{slot}' for p, (slot, _) in zip(PROPERTIES, slots,
                                                                     strict=True))
                + '},"geometry":%s}')
    return list(map(template.__mod__, zip(*(v for _, v in slots), texts.tolist(),
                                          strict=True)))


@gc_paused()
def write_file(data: VersionData, out: Path, opts: ReadOptions | None = None) -> dict[str, Any]:
    """Stream the version to ``out`` (written to ``out.part``, renamed when complete)."""
    out = Path(out)
    part = out.with_name(out.name + ".part")
    header = {
        "type": "FeatureCollection",
        "name": data.version.label,
        "georeg": {"source": data.version.source, "version": data.version.number},
        "types": [{"name": t.name, "depth": t.depth, "short_name": t.short_name}
                  for t in data.types],
        "groups": [{"ref": g.ref, "name": g.name, "short_name": g.short_name, "code": g.code}
                   for g in data.groups],
    }
    counts = {"features": 0, "locations": 0, "territories": 0}
    try:
        with part.open("w", encoding="utf-8", newline="\n") as fh:
            fh.write(_json(header)[:-1] + ',\n"features":[\n')
            first = True
            for batch in unit_batches(data, _WRITE_BATCH):
                if not len(batch):
                    continue
                fh.write(("" if first else ",\n") + ",\n".join(_batch_texts(batch)))
                first = False
                counts["features"] += len(batch)
                counts["locations"] += sum(1 for g in batch.locations if g is not None)
                counts["territories"] += sum(1 for g in batch.territories if g is not None)
            fh.write("\n]}\n")
        os.replace(part, out)
    except OSError as error:
        raise InvalidInput(f"{out}: cannot be written ({error.strerror or error}).") from None
    finally:
        if part.exists():
            part.unlink()
    return {"file": str(out), **counts}
