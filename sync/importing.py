"""The import job every format shares: validate, write in one transaction, report per row.

Two ways in:

* **a new draft version** (no version given): records stream through the
  :class:`~storage.bulk.BulkLoader` — the fast path, built for 100k+ units;
* **an existing draft version**: an *upsert by source ref* — each row is
  created, updated (only the fields that differ; validation status is kept
  unless the user sets it) or left unchanged, and the report says which.

Every row is validated first (name, coordinates, geometry, dates, control
characters — extra fields included); problems are collected for the whole file
so the user sees them all at once, and then the import is refused and nothing is
written (``skip_invalid`` imports the good rows instead).  A row the reader could
not make sense of comes with its ``problem`` (see ``storage.bulk.ROW_PROBLEMS``)
and is rejected likewise.  The tree's problems (a ref used twice, an unknown
parent, a cycle) reject their rows and every row below them: into an existing
draft in ``_Upsert._placeable``, into a new version in the bulk loader's
``collect`` mode, after its fast load and inside the same transaction.
``dry_run`` runs everything and rolls it back: the report shows exactly what
would change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from itertools import chain
from operator import attrgetter
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity
from sqlalchemy import Connection, text

from storage import geometry
from storage.bulk import (
    ROW_PROBLEMS,
    VALIDATION_STATUSES,
    BulkLoader,
    FileRows,
    UnitRecord,
    parse_date,
    point_pairs,
)
from storage.errors import CycleError, GeoregError, InvalidInput
from storage.jobs import Job, gc_paused
from storage.registry import Registry, json_value
from storage.units import (
    CONTROL_CHARACTERS,
    check_degrees,
    check_no_nul,
    repaired,
    set_territory,
)
from storage.versions import (
    VersionRef,
    ensure_source,
    insert_version,
    require_draft,
    resolve_version,
    version_by_id,
)
from sync.exchange import ImportPayload, internal_ref

MAX_LISTED = 1000  # rows listed in a report (counts are always complete)


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: what a new version holds (points, territories, groups …), from the bulk loader
    loaded: dict[str, Any] = field(default_factory=dict)
    #: rejected rows that are on a cycle of parent refs
    cycles: int = 0

    def add(self, status: str, rec: UnitRecord, **extra: Any) -> None:
        self.add_row(status, rec.where, rec.source_ref, rec.name, **extra)

    def add_row(self, status: str, where: str, ref: str | None, name: str | None,
                **extra: Any) -> None:
        setattr(self, status, getattr(self, status) + 1)
        if status != "unchanged" and len(self.rows) < MAX_LISTED:
            self.rows.append({"status": status, "where": where, "ref": ref, "name": name,
                              **extra})

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "rejected": self.rejected, "rows": self.rows, "warnings": self.warnings,
                "loaded": self.loaded}


# --- validation --------------------------------------------------------------------


def _clean_territory(geom: BaseGeometry, where: str, fix: bool,
                     warnings: list[str] | None,
                     bounds: tuple[float, float, float, float] | None = None) -> BaseGeometry:
    """``bounds``: the polygon's (minx, miny, maxx, maxy) when the caller computed them
    for a batch (``shapely.bounds`` on an array)."""
    if bounds is None:
        minx, miny, maxx, maxy = shapely.bounds(geom).tolist()
        bounds = (minx, miny, maxx, maxy)
    geom = geometry.as_multipolygon(geom)
    if geom.is_empty:
        raise InvalidInput(f"{where}: field 'territory' is an empty polygon.")
    check_degrees(bounds, where, _CRS_HINT)
    if not geom.is_valid:
        if not fix and warnings is not None:
            warnings.append(f"{where}: field 'territory' is not a valid polygon "
                            f"({explain_validity(geom)}); kept as the source has it.")
            return geom
        if not fix:
            raise InvalidInput(
                f"{where}: field 'territory' is not a valid polygon ({explain_validity(geom)}); "
                "fix it, or import with --fix-geometry to repair it (or with "
                "--keep-invalid-geometry to keep it as the file has it, as DHIS2 does)."
            )
        return repaired(geom, where)
    return geom


_CRS_HINT = ("is the file in a projected CRS such as UTM? Give its CRS with --crs, or check "
             "the CRS the file declares")


#: the text fields of a record that may hold no control character (see
#: ``storage.units.CONTROL_CHARACTERS``), with the names the formats give them; the
#: extra fields (a file's other columns, a JSON object) too, keys and values at any
#: depth: a NUL kept there would make a later PostGIS push fail
_TEXT_FIELDS = (("name", "name"), ("source_ref", "ref"), ("parent_ref", "parent_ref"),
                ("code", "code"), ("type_name", "type"), ("aliases", "aliases"),
                ("extra_fields", "extra_fields"))


def validate(rec: UnitRecord, *, fix_geometry: bool = False,
             keep_invalid: list[str] | None = None,
             point: tuple[int, float, float] | None = None,
             bounds: tuple[float, float, float, float] | None = None) -> UnitRecord:
    """Check and normalise one record; raise InvalidInput naming the row and field.

    ``keep_invalid``: a list to collect warnings in, keeping invalid polygons as they
    are (for faithful mirrors of an upstream); None rejects them.  ``point``: the
    location's (shapely type id, x, y) when the caller computed them for a batch
    (NaN coordinates for an empty point); ``bounds``: the territory's, likewise.
    """
    where = rec.where or f"unit {rec.source_ref or rec.name!r}"
    if rec.problem is not None:  # found by the reader (a cell that is not WKT …)
        raise InvalidInput(rec.problem)
    name = rec.name.strip() if isinstance(rec.name, str) else ""
    if not name:
        raise InvalidInput(f"{where}: field 'name' is missing or empty.")
    rec.name = name
    if rec.source_ref is not None:
        rec.source_ref = str(rec.source_ref).strip() or None
    if rec.parent_ref is not None:
        rec.parent_ref = str(rec.parent_ref).strip() or None
    # NUL (which PostgreSQL cannot store) and the other control characters but tabs and
    # line breaks
    for attr, field_name in _TEXT_FIELDS:
        check_no_nul(getattr(rec, attr), where, field_name, controls=True)
    if rec.validation_status not in VALIDATION_STATUSES:
        raise InvalidInput(f"{where}: field 'validation_status' is {rec.validation_status!r}; "
                           f"expected one of {', '.join(VALIDATION_STATUSES)}.")
    loc = rec.location
    if loc is not None:
        if point is None and type(loc) is tuple:
            if not point_pairs([loc])[1][0]:
                raise InvalidInput(f"{where}: field 'location' must be a point: two numbers "
                                   f"(longitude, latitude), not {loc!r}.")
            point = (0, float(loc[0]), float(loc[1]))
        elif point is None:
            point = (int(shapely.get_type_id(loc)), *_xy(loc))
        kind, x, y = point
        if kind != 0 or x != x:  # not a point, or an empty one (NaN)
            raise InvalidInput(f"{where}: field 'location' must be a point with coordinates.")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidInput(f"{where}: field 'location' has no usable coordinates.")
        if not -90 <= y <= 90:
            raise InvalidInput(f"{where}: field 'latitude' is {y:g}; a latitude must be within "
                               "-90..90 degrees (are longitude and latitude swapped?).")
        if not -180 <= x <= 180:
            raise InvalidInput(f"{where}: field 'longitude' is {x:g}; a longitude must be within "
                               "-180..180 degrees.")
    if rec.territory is not None:
        rec.territory = _clean_territory(rec.territory, where, fix_geometry, keep_invalid,
                                         bounds)
    if rec.opening_date is not None and not _iso_date(rec.opening_date):
        rec.opening_date = parse_date(rec.opening_date, f"{where}: field 'opening_date'")
    if rec.closed_date is not None and not _iso_date(rec.closed_date):
        rec.closed_date = parse_date(rec.closed_date, f"{where}: field 'closed_date'")
    return rec


def _iso_date(value: Any) -> bool:
    """Already a valid ``YYYY-MM-DD`` text (the common case: kept as it is, without
    building ``parse_date``'s message)."""
    if type(value) is not str or len(value) != 10 or value[4] != "-" or value[7] != "-":
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _points(locs: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapely type id (-1: no location, -2: a pair that is not two numbers), x and y
    (NaN: none, or an empty point) of a chunk's locations, vectorised.  Locations come
    as shapely geometries or as ``(x, y)`` pairs (fast readers); a chunk of pairs needs
    no geometry object at all."""
    n = len(locs)
    kinds = np.full(n, -1, dtype=np.int64)
    xs, ys = np.full(n, np.nan), np.full(n, np.nan)
    pairs = [i for i, loc in enumerate(locs) if type(loc) is tuple]
    if pairs:  # the bad ones (-2) get their message from ``validate``
        xy, ok = point_pairs([locs[i] for i in pairs])
        kinds[pairs], xs[pairs], ys[pairs] = np.where(ok, 0, -2), xy[:, 0], xy[:, 1]
    if len(pairs) < n:
        # (``np.fromiter``: filling an object array from a list of geometries makes
        # numpy probe each one as a possible sequence, ~30x slower)
        geoms = np.fromiter((None if type(loc) is tuple else loc for loc in locs),
                            dtype=object, count=n)
        found = shapely.get_type_id(geoms)  # -1 for None
        shaped = found >= 0
        kinds[shaped] = found[shaped]
        usable = found == 0
        usable[usable] = ~shapely.is_empty(geoms[usable])
        xs[usable], ys[usable] = shapely.get_x(geoms[usable]), shapely.get_y(geoms[usable])
    return kinds, xs, ys


_TERRITORY = attrgetter("territory")
_EXTRA = attrgetter("extra_fields")


def _extras_clean(chunk: list[UnitRecord]) -> bool:
    """Whether no extra field of the chunk holds a control character: the keys and
    text values of every row's extra fields, joined and searched once (a row with a
    nested value, a list or an object, is left to :func:`validate`'s exact test — so
    is every row of a chunk where a control character is found)."""
    texts: list[str] = []
    for extra in filter(None, map(_EXTRA, chunk)):
        texts.extend(extra)
        for value in extra.values():
            kind = type(value)
            if kind is str:
                texts.append(value)
            elif kind is dict or kind is list:
                return False
    return not texts or CONTROL_CHARACTERS.search("".join(texts)) is None


#: the text fields :func:`_printable` checks for a whole chunk at once
_TEXTS = attrgetter("name", "source_ref", "parent_ref", "code", "type_name")


def _printable(chunk: list[UnitRecord]) -> bool:
    """Whether every name, ref, parent ref, code and type of the chunk is printable text
    (or none): all of them joined, in one pass of C calls, and tested by
    ``str.isprintable`` — under half the cost of testing them row by row.  False (then
    rows are tested one by one, :func:`_printable_row`) for a chunk with a
    non-printable character or a number (a spreadsheet's ref)."""
    try:
        return "".join(filter(None, chain.from_iterable(map(_TEXTS, chunk)))).isprintable()
    except TypeError:
        return False


def _printable_row(rec: UnitRecord, name: str) -> bool:
    """A row's name (stripped), refs, code and type are printable: nothing for
    :func:`validate` to look at.  (``isprintable`` also doubts no-break spaces,
    zero-width joiners … : those rows get the exact test there.)"""
    return (name.isprintable()
            and ((code := rec.code) is None or type(code) is str and code.isprintable())
            and ((tn := rec.type_name) is None or type(tn) is str and tn.isprintable())
            and ((ref := rec.source_ref) is None or type(ref) is not str
                 or ref.isprintable())
            and ((ref := rec.parent_ref) is None or type(ref) is not str
                 or ref.isprintable()))


def _bounds(territories: list[Any]) -> dict[int, tuple[float, float, float, float]]:
    """(minx, miny, maxx, maxy) of a chunk's territories by row, vectorised."""
    if territories.count(None) == len(territories):
        return {}
    geoms = np.fromiter(territories, dtype=object, count=len(territories))
    rows = np.flatnonzero(shapely.is_geometry(geoms))
    return dict(zip(rows.tolist(), map(tuple, shapely.bounds(geoms[rows]).tolist()),
                    strict=True))


def _xy(geom: BaseGeometry) -> tuple[float, float]:
    if geom.geom_type != "Point" or geom.is_empty:
        return math.nan, math.nan
    return geom.x, geom.y


_CHUNK = 2000


class _Validated:
    """Wraps the record stream: valid records flow on, rejected ones are reported."""

    def __init__(self, records: Iterable[UnitRecord], report: ImportReport, *,
                 fix_geometry: bool, keep_invalid: bool, job: Job[Any] | None,
                 total: int | None | Callable[[], int | None]) -> None:
        """``total``: units expected, for progress; a callable when the reader refines
        its estimate while the units stream."""
        self.records = records
        self.report = report
        self.fix_geometry = fix_geometry
        self.job = job
        self.total = total
        self.seen = 0
        self.keep: list[str] | None = report.warnings if keep_invalid else None
        #: the records rejected (an upsert rejects their children too)
        self.rejected: list[UnitRecord] = []

    def __iter__(self) -> Iterator[UnitRecord]:
        return self._stream(self.records, count=True)

    def _stream(self, records: Iterable[UnitRecord], *, count: bool) -> Iterator[UnitRecord]:
        """The records checked in chunks (``count``: they advance the progress)."""
        chunk: list[UnitRecord] = []
        for rec in records:
            if type(rec) is FileRows:
                # rows the reader vouches for, copied by the loader in SQL; if it cannot,
                # it takes their records, checked here as any others (counted already)
                yield from self._check(chunk, count)
                chunk = []
                rec.validated = partial(self._records_of, rec)
                yield rec  # type: ignore[misc]
                self.seen += rec.count
                self._report()
                continue
            chunk.append(rec)
            if len(chunk) >= _CHUNK:
                yield from self._check(chunk, count)
                chunk = []
        yield from self._check(chunk, count)

    def _records_of(self, rows: FileRows) -> Iterator[UnitRecord]:
        return self._stream(rows.records(), count=False)

    def _report(self) -> None:
        if self.job is not None:
            total = self.total
            self.job.report(self.seen, total() if callable(total) else total, "Importing units")

    def _check(self, chunk: list[UnitRecord], count: bool = True) -> Iterator[UnitRecord]:
        """Validate a chunk.  The points' type and coordinates, and the chunk's distinct
        dates, are checked once for the chunk; a row that needs nothing more (a usable
        point or none, no territory, a known status, ISO dates) only has its name and
        refs normalised as :func:`validate` does, inline; any other row goes through
        :func:`validate`, which also writes the message of a rejected row.

        Control characters: a row is plain only when its name, refs, code and type are
        printable (``str.isprintable``, in C, on the chunk's texts joined — see
        :func:`_printable`; the rare texts it doubts, a no-break space or a zero-width
        joiner, get the exact test in :func:`validate`), it has no aliases, no
        problem from its reader, and extra fields without control characters
        (:func:`_extras_clean`, one search per chunk).
        Territories' bounds come from one vectorised ``shapely.bounds`` per chunk."""
        kinds_arr, xs_arr, ys_arr = _points([rec.location for rec in chunk])
        bounds = _bounds(list(map(_TERRITORY, chunk)))
        clean = _printable(chunk)
        extras = _extras_clean(chunk)
        with np.errstate(invalid="ignore"):
            plain_arr = (kinds_arr == -1) | ((kinds_arr == 0) & (np.abs(xs_arr) <= 180)
                                             & (np.abs(ys_arr) <= 90))  # NaN: False
        kinds, xs, ys = kinds_arr.tolist(), xs_arr.tolist(), ys_arr.tolist()  # NaN: no point
        # the chunk's distinct text dates that are ISO already (others: ``validate``)
        iso: set[Any] = {d for d in {d for rec in chunk for d in (rec.opening_date,
                                                                  rec.closed_date)
                                     if type(d) is str} if _iso_date(d)}
        iso.add(None)
        statuses = VALIDATION_STATUSES
        for i, (rec, kind, x, y, plain) in enumerate(zip(chunk, kinds, xs, ys,
                                                         plain_arr.tolist(), strict=True)):
            self.seen += count
            if count and self.seen % 1000 == 0:
                self._report()
            name = rec.name
            if (plain and rec.territory is None and type(name) is str
                    and (name := name.strip()) and rec.validation_status in statuses
                    and ((od := rec.opening_date) is None or type(od) is str and od in iso)
                    and ((cd := rec.closed_date) is None or type(cd) is str and cd in iso)
                    and rec.aliases is None and (clean or _printable_row(rec, name))
                    and rec.problem is None and (extras or rec.extra_fields is None)):
                rec.name = name
                if (ref := rec.source_ref) is not None:
                    rec.source_ref = (ref if type(ref) is str else str(ref)).strip() or None
                if (ref := rec.parent_ref) is not None:
                    rec.parent_ref = (ref if type(ref) is str else str(ref)).strip() or None
                yield rec
                continue
            try:
                yield validate(rec, fix_geometry=self.fix_geometry, keep_invalid=self.keep,
                               point=(kind, x, y) if kind >= 0 else None,  # -2: see there
                               bounds=bounds.get(i))
            except InvalidInput as error:
                self.report.add("rejected", rec, message=error.message)
                self.rejected.append(rec)


# --- the job -------------------------------------------------------------------------


class ImportJob(Job[dict[str, Any]]):
    """Import a payload into a new draft version, or upsert it into an existing draft."""

    title = "Import"

    def __init__(self, reg: Registry, payload: ImportPayload, *, source: str,
                 number: int | None = None, dry_run: bool = False,
                 set_status: str | None = None, skip_invalid: bool = False,
                 fix_geometry: bool = False, description: str | None = None,
                 origin: str = "import", author: str | None = None) -> None:
        super().__init__()
        if set_status is not None and set_status not in VALIDATION_STATUSES:
            raise InvalidInput(f"--set-status must be one of {', '.join(VALIDATION_STATUSES)}.")
        self.reg, self.payload, self.source, self.number = reg, payload, source, number
        self.dry_run, self.set_status, self.skip_invalid = dry_run, set_status, skip_invalid
        self.fix_geometry, self.description = fix_geometry, description
        self.origin, self.author = origin, author

    @gc_paused()
    def execute(self) -> dict[str, Any]:
        report = ImportReport(warnings=list(self.payload.warnings))
        known = len(self.payload.warnings)  # readers may add more while the units stream
        self.report(0, self.payload.total, "Reading")
        # a row the reader cannot make sense of comes as a rejected row, not an error
        # that would stop the read (and --skip-invalid) at the first one
        rows_judged_here = ROW_PROBLEMS.set(True)
        try:
            with self.reg.write(origin=self.origin, author=self.author,
                                dry_run=self.dry_run) as conn:
                if self.number is None:
                    version = self._into_new_version(conn, report)
                else:
                    version = resolve_version(conn, self.source, self.number)
                    require_draft(version, conn)
                    _Upsert(self, conn, version, report).run()
                report.warnings.extend(self.payload.warnings[known:])
                if report.rejected and not self.skip_invalid:
                    raise _rejection_error(report)
                if report.rejected and not (report.created or report.updated
                                            or report.unchanged):
                    # --skip-invalid with no valid row: an empty draft (one more per
                    # attempt) and exit code 0 would tell a script all went well
                    raise _rejection_error(report, everything=True)
                self.check_cancelled()
                version = version_by_id(conn, version.id)
        finally:
            ROW_PROBLEMS.reset(rows_judged_here)
        result = {"version": version.to_dict(), "dry_run": self.dry_run, **report.to_dict()}
        if self.dry_run:
            result["version"]["note"] = "dry run: nothing was written"
        return result

    def _into_new_version(self, conn: Connection, report: ImportReport) -> VersionRef:
        source_id = ensure_source(conn, self.source)
        version_id = insert_version(conn, source_id, description=self.description
                                    or self.payload.description or None)
        details = {"from": self.payload.description} if self.payload.description else {}
        # ``collect``: a duplicate ref, an unknown parent or a cycle rejects its rows
        # (and those below them) instead of stopping the load at the first one
        loader = BulkLoader(self.reg, conn, version_id, new_version=True, log_details=details,
                            collect=True)
        payload = self.payload
        for t in payload.types:
            loader.add_type(t.name, t.depth, t.short_name)
        added = set()
        for g in payload.groups:
            loader.add_group(g.ref, g.name, g.short_name, g.code)
            added.add(g.ref)
        units = payload.load_units() if payload.load_units is not None else payload.units
        records = _Validated(units, report, fix_geometry=self.fix_geometry,
                             keep_invalid=payload.invalid_geometry == "keep", job=self,
                             total=lambda: payload.total)
        loader.add_units(records if not self.set_status
                         else _with_status(records, self.set_status))
        # A reader may learn types and groups while its units stream (one pass over the
        # file): those it listed since are added now, before memberships are resolved.
        for t in payload.types:
            loader.add_type(t.name, t.depth, t.short_name)
        for g in payload.groups:
            if g.ref not in added:
                loader.add_group(g.ref, g.name, g.short_name, g.code)
        for gs in payload.group_sets:
            loader.add_group_set(gs.ref, gs.name, gs.group_refs, short_name=gs.short_name,
                                 compulsory=gs.compulsory)
        loader.add_memberships(payload.memberships)
        # the rows rejected here: those below them are rejected by the loader too, and a
        # row with the same ref (which of the two is right cannot be told)
        loader.lost({ref: rec.where or f"unit {ref!r}" for rec in records.rejected
                     if rec.source_ref is not None and (ref := str(rec.source_ref).strip())})
        # Without --skip-invalid, ``finish`` still runs: the rows' own problems and the
        # tree's (refs, parents, cycles) are listed in the one error, so a file is fixed
        # in one round; the transaction is then rolled back.
        stats = loader.finish()
        for row in loader.rejected:
            report.add_row("rejected", row["where"], row["ref"], row["name"],
                           message=row["message"])
            if row["kind"] == "cycle":
                report.cycles += 1
        if report.rejected and not self.skip_invalid:
            raise _rejection_error(report)
        report.created = stats.units
        report.warnings.extend(stats.warnings)
        report.loaded = {k: v for k, v in stats.to_dict().items() if k != "warnings"}
        return version_by_id(conn, version_id)


def _with_status(records: Iterable[UnitRecord], status: str) -> Iterator[UnitRecord]:
    for rec in records:
        rec.validation_status = status  # (FileRows: for every row)
        yield rec


#: rejected rows shown in the error (all are in its details, up to ``MAX_LISTED``)
SHOWN = 50


def _rejection_error(report: ImportReport, *, everything: bool = False
                     ) -> InvalidInput | CycleError:
    """One error listing every rejected row (the first ``SHOWN``, then the count).  A
    cycle of parent refs makes it a :class:`CycleError` (a conflict, as for edits).
    ``everything``: --skip-invalid was given, but no row was valid."""
    rejected = [r for r in report.rows if r["status"] == "rejected"]
    shown = "\n".join(f"  - {r['message']}" for r in rejected[:SHOWN])
    more = (f"\n  … and {report.rejected - SHOWN} more (listed by --report FILE)."
            if report.rejected > SHOWN else "")
    cycles = (f" ({report.cycles} units are their own ancestors: a cycle in the parent "
              "refs)" if report.cycles else "")
    kind = CycleError if report.cycles else InvalidInput
    if everything:
        return kind(
            f"All {report.rejected} row(s) rejected{cycles}: no row to import, so nothing was "
            f"imported:\n{shown}{more}\nFix the file and import it again.",
            rejected=rejected,
        )
    return kind(
        f"{report.rejected} row(s) rejected{cycles}; nothing was imported:\n{shown}{more}\n"
        "Fix the file, or import the other rows with --skip-invalid.",
        rejected=rejected,
    )


def import_payload(reg: Registry, payload: ImportPayload, *, source: str,
                   number: int | None = None, **options: Any) -> dict[str, Any]:
    """Convenience for scripts and tests: run the import job synchronously."""
    return ImportJob(reg, payload, source=source, number=number, **options).run()


# --- upsert into an existing draft -----------------------------------------------------

_COMPARED = ("name", "code", "opening_date", "closed_date", "aliases", "extra_fields")


class _Upsert:
    def __init__(self, job: ImportJob, conn: Connection, version: VersionRef,
                 report: ImportReport) -> None:
        self.job, self.conn, self.version, self.report = job, conn, version, report
        self.backend = job.reg.backend
        self.blank_clears = job.payload.blank_clears  # (see ImportPayload)
        self.group_refs: dict[int, str] = {}  # group key -> ref, for the report
        self.types = {r[1]: r[0] for r in conn.execute(text("SELECT fid, name FROM org_unit_type"))}

    def _existing(self) -> dict[str, dict[str, Any]]:
        b = self.backend
        rows = self.conn.execute(text(
            "SELECT u.fid, u.unit_key, u.source_ref, u.name, u.code, u.type_id, u.parent_key, "
            "u.uuid, "
            "u.opening_date, u.closed_date, u.aliases, u.extra_fields, u.validation_status, "
            f"{geometry.select_sql(b, 'u.location')}, {geometry.select_sql(b, 't.territory')} "
            "FROM org_unit u LEFT JOIN org_unit_territory t ON t.unit_fid = u.fid "
            "WHERE u.version_id = :v"), {"v": self.version.id}).all()
        out = {}
        for r in rows:
            # A unit without an external ref is known to files by its internal ref, the
            # one our exports write for it (georeg:<uuid>).
            ref = r[2] if r[2] is not None else internal_ref(r[7])
            out[ref] = {
                "fid": r[0], "unit_key": r[1], "name": r[3], "code": r[4], "type_id": r[5],
                "parent_key": r[6], "uuid": r[7], "opening_date": _iso(r[8]),
                "closed_date": _iso(r[9]), "aliases": json_value(r[10]),
                "extra_fields": json_value(r[11]), "validation_status": r[12],
                "location": geometry.decode(b, r[13]), "territory": geometry.decode(b, r[14]),
            }
        self.uuids = {e["uuid"] for e in out.values()}
        return out

    def _type_id(self, rec: UnitRecord) -> int | None:
        if not rec.type_name:
            return None
        name = rec.type_name.strip()
        if name not in self.types:
            depth = next((t.depth for t in self.job.payload.types if t.name == name), None)
            self.types[name] = int(self.conn.execute(text(
                "INSERT INTO org_unit_type (name, depth) VALUES (:n, :d) RETURNING fid"),
                {"n": name, "d": depth}).scalar_one())
        return self.types[name]

    def run(self) -> None:
        job, conn, v = self.job, self.conn, self.version.id
        existing = self._existing()
        key_to_ref = {e["unit_key"]: ref for ref, e in existing.items()}
        # the records first: a reader may list types and groups while its units stream
        validated = _Validated(job.payload.units, self.report, fix_geometry=job.fix_geometry,
                               keep_invalid=job.payload.invalid_geometry == "keep", job=job,
                               total=lambda: job.payload.total)
        records = list(validated)
        groups = {r[1]: r[0] for r in conn.execute(text(
            "SELECT group_key, source_ref FROM org_unit_group WHERE version_id = :v"), {"v": v})}
        for g in job.payload.groups:
            if g.ref not in groups:
                groups[g.ref] = int(conn.execute(text(
                    "INSERT INTO org_unit_group (version_id, source_ref, name, short_name, code) "
                    "VALUES (:v, :r, :n, :s, :c) RETURNING fid"),
                    {"v": v, "r": g.ref, "n": g.name, "s": g.short_name, "c": g.code}
                ).scalar_one())
        if job.payload.group_sets:
            self.report.warnings.append(
                "Group sets are not updated when importing into an existing version.")
        self.group_refs = {key: ref for ref, key in groups.items()}
        incoming = self._placeable(records, validated.rejected, existing)
        if self.report.rejected and not job.skip_invalid:
            return
        keys = {ref: e["unit_key"] for ref, e in existing.items()}
        for rec in _parents_first(incoming, set(existing)):
            if rec.source_ref in existing:
                self._update(rec, existing[rec.source_ref], keys, key_to_ref, groups)
            else:
                keys[rec.source_ref] = key = self._create(rec, keys)  # type: ignore[index]
                if rec.groups:
                    self._set_groups(rec, key, groups)

    def _placeable(self, records: list[UnitRecord], failed: list[UnitRecord],
                   existing: dict[str, dict[str, Any]]) -> list[UnitRecord]:
        """The valid records that can be written; every other row is reported rejected
        with its reason, so each input row appears in the report.

        A ref used by several rows rejects all of them (which one is right cannot be
        told); a parent ref that is neither in the file nor in the version rejects the
        row; and a row whose parent is a rejected row (of a unit the version does not
        have) is rejected too, and so on down: its place in the tree is unknown, and
        making it a root would be a silent guess.  ``failed``: the rows the field
        checks rejected."""
        uses: dict[str, int] = {}
        wheres: dict[str, list[str]] = {}  # rows of a ref used twice
        lost: dict[str, str] = {}  # ref of a rejected row -> that row (units to be created)
        for rec in failed:  # (their refs count: a valid row sharing one is a duplicate)
            bad = str(rec.source_ref).strip() if rec.source_ref is not None else ""
            if bad:
                uses[bad] = uses.get(bad, 0) + 1
                wheres.setdefault(bad, []).append(rec.where)
                if bad not in existing:
                    lost.setdefault(bad, rec.where)
        for rec in records:
            if type(rec.location) is tuple:  # compared and written one by one: a Point
                rec.location = shapely.Point(rec.location)
            if rec.source_ref is not None:
                uses[rec.source_ref] = uses.get(rec.source_ref, 0) + 1
        incoming: list[UnitRecord] = []
        for rec in records:
            ref = rec.source_ref
            if ref is None:
                self.report.add("rejected", rec, message=f"{rec.where}: field 'ref' is empty; "
                                "re-importing into a version matches units by ref.")
                continue
            if uses[ref] > 1:
                wheres.setdefault(ref, []).append(rec.where)
                continue
            incoming.append(rec)
        for rec in records:
            if (dup := rec.source_ref) is not None and uses[dup] > 1:
                others = ", ".join(w for w in wheres[dup] if w != rec.where)
                self.report.add("rejected", rec, message=f"{rec.where}: ref {dup!r} is used "
                                f"{'twice' if uses[dup] == 2 else f'{uses[dup]} times'} (also "
                                f"by {others}); none of these rows is imported, as which one "
                                "is right cannot be told.")
                if dup not in existing:
                    lost.setdefault(dup, wheres[dup][0])
        out: set[int] = set()  # id() of the rejected incoming records
        for rec in incoming:  # dates as they will be: the file's, else the registry's
            before = existing.get(rec.source_ref or "", {})
            opened = rec.opening_date or before.get("opening_date")
            closed = rec.closed_date or before.get("closed_date")
            if opened and closed and str(closed) < str(opened):
                self.report.add("rejected", rec, message=f"{rec.where}: field 'closed_date': "
                                f"{closed} is before opening_date {opened}.")
                out.add(id(rec))
                if rec.source_ref not in existing:
                    lost[rec.source_ref] = rec.where  # type: ignore[index]
        known = set(existing) | {rec.source_ref for rec in incoming}
        children: dict[str, list[UnitRecord]] = {}
        for rec in incoming:
            parent = rec.parent_ref
            if parent is None or parent in existing:
                continue
            children.setdefault(parent, []).append(rec)
            if parent not in known and parent not in lost:
                self.report.add("rejected", rec, message=f"{rec.where}: parent {parent!r} is "
                                f"neither in the file nor in {self.version.label}.")
                out.add(id(rec))
                if rec.source_ref not in existing:
                    lost[rec.source_ref] = rec.where  # type: ignore[index]
        todo = list(lost)
        while todo:
            parent = todo.pop()
            for rec in children.get(parent, ()):
                if id(rec) in out:
                    continue
                self.report.add("rejected", rec, message=f"{rec.where}: its parent {parent!r} "
                                f"is not imported ({lost[parent]} was rejected), so neither is "
                                "this row.")
                out.add(id(rec))
                if rec.source_ref not in existing:
                    lost[rec.source_ref] = rec.where  # type: ignore[index]
                    todo.append(rec.source_ref)  # type: ignore[arg-type]
        return [rec for rec in incoming if id(rec) not in out]

    def _create(self, rec: UnitRecord, keys: dict[str, int]) -> int:
        b = self.backend
        uuid = rec.uuid if rec.uuid not in self.uuids else None  # never clash in a version
        params = {
            "v": self.version.id, "uuid": uuid, "ref": rec.source_ref, "name": rec.name,
            "code": rec.code, "type_id": self._type_id(rec),
            "parent": keys.get(rec.parent_ref) if rec.parent_ref else None,
            "status": self.job.set_status or "new", "od": rec.opening_date,
            "cd": rec.closed_date, "aliases": _json(rec.aliases),
            "extra": _json(rec.extra_fields), "loc": geometry.encode(b, rec.location),
        }
        row = self.conn.execute(text(
            "INSERT INTO org_unit (version_id, uuid, source_ref, name, code, type_id, parent_key, "
            "validation_status, opening_date, closed_date, aliases, extra_fields, location) "
            f"VALUES (:v, :uuid, :ref, :name, :code, :type_id, :parent, :status, :od, :cd, "
            f":aliases, :extra, {geometry.bind_sql(b, 'loc')}) RETURNING fid"), params).scalar_one()
        if rec.territory is not None:
            set_territory(self.job.reg, self.conn, row, rec.territory)
        key = self.conn.execute(text("SELECT unit_key FROM org_unit WHERE fid = :f"),
                                {"f": row}).scalar_one()
        self.report.add("created", rec)
        return int(key)

    def _update(self, rec: UnitRecord, old: dict[str, Any], keys: dict[str, int],
                key_to_ref: dict[int, str], groups: dict[str, int]) -> None:
        b = self.backend
        new: dict[str, Any] = {"name": rec.name, "code": rec.code,
                               "opening_date": rec.opening_date, "closed_date": rec.closed_date,
                               "aliases": rec.aliases or None, "extra_fields": rec.extra_fields
                               or None}
        changes: dict[str, list[Any]] = {}
        sets: dict[str, Any] = {}
        owned = self.job.payload.owned_extra_keys
        if owned is not None:  # the source's own keys replaced, the registry's others kept
            kept = {k: v for k, v in (old["extra_fields"] or {}).items() if k not in owned}
            merged = (kept | (new.pop("extra_fields") or {})) or None
            if merged != (old["extra_fields"] or None):
                changes["extra_fields"] = [old["extra_fields"], merged]
                sets["extra_fields"] = _json(merged)
        for f in _COMPARED:
            if f not in new:
                continue
            value = new[f]
            if value is None and f != "name":
                continue  # absent in the file: keep what the registry has
            if value != old[f]:
                changes[f] = [old[f], value]
                sets[f] = _json(value) if f in ("aliases", "extra_fields") else value
        type_id = self._type_id(rec)
        if type_id is not None and type_id != old["type_id"]:
            changes["type"] = [old["type_id"], rec.type_name]
            sets["type_id"] = type_id
        # no parent ref: the unit stays where it is (Iaso's GeoPackage: it becomes a root)
        if rec.parent_ref is not None or self.blank_clears:
            parent_key = keys.get(rec.parent_ref) if rec.parent_ref else None
            if parent_key != old["parent_key"]:
                changes["parent_ref"] = [key_to_ref.get(old["parent_key"]), rec.parent_ref]
                sets["parent_key"] = parent_key
        if self.job.set_status and self.job.set_status != old["validation_status"]:
            changes["validation_status"] = [old["validation_status"], self.job.set_status]
            sets["validation_status"] = self.job.set_status
        loc = rec.location
        if loc is not None and not isinstance(loc, tuple) and not _same(loc, old["location"]):
            changes["location"] = [_wkt(old["location"]), loc.wkt]
            sets["location"] = geometry.encode(b, loc)
        if sets:
            assigns = ", ".join(
                f"{k} = {geometry.bind_sql(b, k)}" if k == "location" else f"{k} = :{k}"
                for k in sets)
            self.conn.execute(text(f"UPDATE org_unit SET {assigns} WHERE fid = :fid"),
                              sets | {"fid": old["fid"]})
        if rec.territory is not None and not _same(rec.territory, old["territory"]):
            changes["territory"] = [_wkt(old["territory"]), "(new polygon)"]
            set_territory(self.job.reg, self.conn, old["fid"], rec.territory)
        # an empty groups cell keeps the memberships (Iaso's GeoPackage: it clears them)
        if rec.groups is not None and (rec.groups or self.blank_clears):
            moved = self._set_groups(rec, old["unit_key"], groups)
            if moved is not None:
                changes["groups"] = moved
        self.report.add("updated" if changes else "unchanged", rec, changes=changes)

    def _set_groups(self, rec: UnitRecord, unit_key: int,
                    groups: dict[str, int]) -> list[list[str]] | None:
        """Make the unit's memberships those the record lists; the [before, after]
        group refs when they changed, for the report (None: no change)."""
        wanted = {groups[g] for g in rec.groups or [] if g in groups}
        missing = [g for g in rec.groups or [] if g not in groups]
        if missing:
            self.report.warnings.append(f"{rec.where}: unknown group(s) {', '.join(missing)}.")
        p = {"v": self.version.id, "u": unit_key}
        have = {r[0] for r in self.conn.execute(text(
            "SELECT group_key FROM group_membership WHERE version_id = :v AND unit_key = :u"), p)}
        for g in wanted - have:
            self.conn.execute(text("INSERT INTO group_membership (version_id, group_key, unit_key)"
                                   " VALUES (:v, :g, :u)"), p | {"g": g})
        for g in have - wanted:
            self.conn.execute(text("DELETE FROM group_membership WHERE version_id = :v AND "
                                   "group_key = :g AND unit_key = :u"), p | {"g": g})
        if have == wanted:
            return None
        return [sorted(self.group_refs.get(g, str(g)) for g in have),
                sorted(self.group_refs.get(g, str(g)) for g in wanted)]


def _parents_first(records: list[UnitRecord], existing: set[str]) -> list[UnitRecord]:
    """Order so every new parent comes before its children; a loop is an error."""
    by_ref = {r.source_ref: r for r in records}
    state: dict[str, int] = {}
    out: list[UnitRecord] = []
    for start in records:
        stack = [start]
        while stack:
            rec = stack[-1]
            ref = rec.source_ref or ""
            if state.get(ref) == 2:
                stack.pop()
                continue
            state[ref] = 1
            parent = by_ref.get(rec.parent_ref or "")
            if parent is not None and state.get(parent.source_ref or "") != 2:
                if state.get(parent.source_ref or "") == 1:
                    raise CycleError(f"{rec.where}: the parent refs form a cycle through "
                                     f"{rec.source_ref!r} and {parent.source_ref!r}.")
                stack.append(parent)
                continue
            state[ref] = 2
            out.append(rec)
            stack.pop()
    return out


def _same(a: BaseGeometry | None, b: BaseGeometry | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(shapely.equals_exact(shapely.normalize(a), shapely.normalize(b), 1e-12))


def _wkt(g: BaseGeometry | None) -> str | None:
    return None if g is None else g.wkt


def _json(value: Any) -> str | None:
    return json.dumps(value, ensure_ascii=False) if value else None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


__all__ = ["GeoregError", "ImportJob", "ImportReport", "import_payload", "validate"]
