"""Iaso's tree-importer CSV: one row per leaf, the levels above it as name columns.

As ``iaso/management/commands/tree_importer.py`` reads it: a ``;``-separated,
UTF-8 (BOM or not) file plus a **data dictionary** (``--data-dict``)::

    {"name": "Nom Ecole", "parents": ["ProvincePoliAdmin", "Proved", "Sproved"],
     "longitude": "GPS_longitude", "latitude": "GPS_latitude", "source_ref": "Numero SECOPE"}

* ``parents`` lists the level columns top first; each is one org-unit type, named
  after the column, at depth 1..k.  A level unit is one per distinct **name path**
  (get-or-create by name and parent, as Iaso; names are compared stripped) and gets
  that path as its ref: ``KINSHASA/KINSHASA LUKUNGA/NGALIEMA 2``.
* a parent cell that is empty or says "néant" (Iaso: ``unidecode(name).lower()
  .replace("neant", "").strip()`` is empty) is skipped: the row's lower levels hang
  under the level above, as in Iaso; a warning counts such rows per column.
* every row is a leaf unit of its own — **no dedup**, as Iaso's ``bulk_create`` —
  typed ``opts.mapping["leaf_type"]`` (``--mapping``), else the data dictionary's
  ``"type"``, else ``Unit`` (Iaso's ``--main_org_unit_name``).  Its ref is the
  ``source_ref`` column when that cell is filled, else ``row:<n>`` (n = the spreadsheet
  row, header = 1: stable only as long as the file's rows do not move).  Leaves with
  the same name under the same parent are kept apart and named in one warning each.
* ``latitude``/``longitude`` (decimal point or comma) give the leaf's location;
  ``source_ref``, ``latitude`` and ``longitude`` may be left out of the dictionary.
* the file's other named columns (address, commune …), which Iaso drops, are kept in
  the leaf's ``extra_fields`` when filled (``NULL`` counts as empty).

Encoding and delimiter are found as for any CSV (:mod:`sync.formats.tabular`):
UTF-8 unless ``--encoding``, a non-UTF-8 byte is an error naming the row and the
column; the delimiter is ``;`` unless the header splits better on ``,`` or tab.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.bulk import ROW_PROBLEMS, UnitRecord
from storage.errors import InvalidInput
from sync.exchange import ImportPayload, ReadOptions, TypeDef
from sync.formats.tabular import (
    MAX_LISTED,
    TextTable,
    XlsxTable,
    ascii_fold,
    data_rows,
    header_of,
    open_table,
    point,
)

DEFAULT_LEAF_TYPE = "Unit"
_OPTIONAL = ("latitude", "longitude", "source_ref")


@dataclass
class DataDict:
    name: str
    parents: list[str]
    latitude: str | None = None
    longitude: str | None = None
    source_ref: str | None = None
    type: str | None = None


def load_data_dict(path: str | Path) -> DataDict:
    p = Path(path)
    try:
        doc: Any = json.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InvalidInput(f"--data-dict {p}: file not found.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"--data-dict {p}: not valid JSON ({error}).") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"--data-dict {p}: expected a JSON object.")
    name, parents = doc.get("name"), doc.get("parents", [])
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput(f"--data-dict {p}: 'name' (the column of the unit names) is missing.")
    if not isinstance(parents, list) or not all(isinstance(c, str) and c.strip()
                                                for c in parents):
        raise InvalidInput(f"--data-dict {p}: 'parents' must be a list of column names, "
                           "top level first.")
    out = DataDict(name.strip(), [c.strip() for c in parents])
    for key in (*_OPTIONAL, "type"):
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"--data-dict {p}: {key!r} must be a column name (text).")
        setattr(out, key, value.strip() if value and value.strip() else None)
    return out


def skipped(name: str) -> bool:
    """Iaso skips a level whose name is empty or "néant" once accents and case go."""
    return not ascii_fold(name).casefold().replace("neant", "").strip()


class _Tree:
    def __init__(self, path: Path, table: TextTable | XlsxTable, dd: DataDict,
                 leaf_type: str) -> None:
        self.path, self.table, self.dd, self.leaf_type = path, table, dd, leaf_type
        headers = header_of(table)
        self.col: dict[str, int] = {}
        for i, h in enumerate(headers):
            if h:
                self.col.setdefault(h, i)  # Iaso strips the header names too
        wanted = [dd.name, *dd.parents, *(c for c in (dd.latitude, dd.longitude, dd.source_ref)
                                          if c)]
        missing = [c for c in wanted if c not in self.col]
        if missing:
            found = ", ".join(repr(h) for h in headers if h)
            raise InvalidInput(f"{path.name}: column(s) {', '.join(map(repr, missing))} of the "
                               f"data dictionary are not in the file; columns found: {found}.")
        used = {self.col[c] for c in wanted}
        self.extras = {i: h for h, i in self.col.items() if i not in used}
        #: (level index, name path) → ref, for every level unit
        self.refs: dict[tuple[int, tuple[str, ...]], str] = {}
        self.taken: set[str] = set()
        self.warnings: list[str] = []
        self.rows = 0
        #: rows whose coordinates cannot be read (the first ones' messages, and how many)
        self.point_problems: list[str] = []
        self.bad_points = 0

    def cell(self, cells: list[str], column: str | None) -> str:
        if column is None:
            return ""
        i = self.col[column]
        return cells[i].strip() if i < len(cells) else ""

    def where(self, n: int) -> str:
        return f"{self.path.name}, row {n}"

    def levels(self, cells: list[str]) -> list[tuple[int, tuple[str, ...]]]:
        """The row's level units as (level index, name path), skipping "néant" levels."""
        out: list[tuple[int, tuple[str, ...]]] = []
        names: tuple[str, ...] = ()
        for i, column in enumerate(self.dd.parents):
            name = self.cell(cells, column)
            if skipped(name):
                continue
            names = (*names, name)
            out.append((i, names))
        return out

    def scan(self) -> None:
        """First pass: refs of the level units, counts and warnings (before any unit)."""
        skip_count = dict.fromkeys(self.dd.parents, 0)
        skip_rows: dict[str, list[int]] = {c: [] for c in self.dd.parents}  # the first ones
        leaves: dict[tuple[tuple[int, tuple[str, ...]] | None, str], list[int]] = {}
        levels_seen: dict[tuple[int, tuple[str, ...]], None] = {}
        problems: list[str] = []
        n_problems = 0
        for n, cells in data_rows(self.table):
            self.rows += 1
            for column in self.dd.parents:
                if skipped(self.cell(cells, column)):
                    skip_count[column] += 1
                    if len(skip_rows[column]) < MAX_LISTED:
                        skip_rows[column].append(n)
            levels = self.levels(cells)
            levels_seen.update(dict.fromkeys(levels))
            name = self.cell(cells, self.dd.name)
            leaves.setdefault((levels[-1] if levels else None, name), []).append(n)
            self.taken.add(self.cell(cells, self.dd.source_ref) or f"row:{n}")
            try:
                self._point(cells, n)
            except InvalidInput as error:
                n_problems += 1
                if len(problems) < MAX_LISTED:
                    problems.append(error.message)
        # unreadable coordinates are the row's problem (see records), not the file's
        self.point_problems, self.bad_points = problems, n_problems
        if self.rows == 0:
            raise InvalidInput(f"{self.path.name} has a header but no rows.")
        for key in levels_seen:  # after the leaf refs: a level never takes a leaf's ref
            self.refs[key] = self._new_ref("/".join(key[1]))
        for column, count in skip_count.items():
            if count:
                self.warnings.append(
                    f"{self.path.name}: column {column!r} is empty or 'néant' on {count} row(s) "
                    f"(rows {_listed(skip_rows[column], count)}); that level is skipped there "
                    "and the levels below hang under the level above, as in Iaso.")
        top = sorted(n for (parent, _), rows in leaves.items() if parent is None for n in rows)
        if top and self.dd.parents:
            self.warnings.append(
                f"{self.path.name}: {len(top)} row(s) have no level name at all (rows "
                f"{_listed(top[:MAX_LISTED], len(top))}); those units are placed at the top of "
                "the tree.")
        for (parent, name), rows in leaves.items():
            if len(rows) > 1 and name:
                under = f"under {self.refs[parent]!r}" if parent else "at the top level"
                self.warnings.append(
                    f"{self.path.name}: {len(rows)} units named {name!r} {under} (rows "
                    f"{_listed(rows[:MAX_LISTED], len(rows))}); kept as separate units, not "
                    "merged.")

    def _new_ref(self, preferred: str) -> str:
        ref, i = preferred, 2
        while ref in self.taken:
            ref, i = f"{preferred} #{i}", i + 1
        self.taken.add(ref)
        return ref

    def _point(self, cells: list[str], n: int) -> Any:
        if not (self.dd.latitude and self.dd.longitude):
            return None
        return point(self.cell(cells, self.dd.latitude), self.cell(cells, self.dd.longitude),
                     self.where(n), self.dd.latitude, self.dd.longitude)

    def records(self) -> Iterator[UnitRecord]:
        """The level units, then each row's unit.  A row whose coordinates cannot be read
        comes with its ``problem``, for the import job to reject with the other rows'
        (``--skip-invalid`` skips it: a leaf, nothing hangs below it); read outside the
        job, such rows stop the reading, all listed, before the first unit."""
        if self.bad_points and not ROW_PROBLEMS.get():
            listed = "\n".join(f"  - {p}" for p in self.point_problems)
            more = self.bad_points - len(self.point_problems)
            raise InvalidInput(f"{self.bad_points} row(s) of {self.path.name} have unreadable "
                               f"coordinates; nothing was imported:\n{listed}"
                               + (f"\n  … and {more} more." if more > 0 else ""))
        made: set[tuple[int, tuple[str, ...]]] = set()
        for n, cells in data_rows(self.table):
            parent: str | None = None
            for key in self.levels(cells):
                ref = self.refs[key]
                if key not in made:
                    made.add(key)
                    column = self.dd.parents[key[0]]
                    yield UnitRecord(name=key[1][-1], source_ref=ref, parent_ref=parent,
                                     type_name=column, where=f"{self.where(n)}, column {column!r}")
                parent = ref
            extra = {h: v for i, h in self.extras.items()
                     if (v := cells[i].strip() if i < len(cells) else "")
                     and v.casefold() != "null"}
            try:
                location, problem = self._point(cells, n), None
            except InvalidInput as error:
                location, problem = None, error.message
            yield UnitRecord(
                name=self.cell(cells, self.dd.name),
                source_ref=self.cell(cells, self.dd.source_ref) or f"row:{n}",
                parent_ref=parent,
                type_name=self.leaf_type,
                location=location,
                extra_fields=extra or None,
                where=self.where(n),
                problem=problem,
            )


def _listed(rows: list[int], total: int) -> str:
    return ", ".join(map(str, rows)) + (" …" if total > len(rows) else "")


def read_file(path: Path, opts: ReadOptions | None = None) -> ImportPayload:
    """A tree-importer CSV (or XLSX) with its data dictionary (``opts.data_dict``)."""
    opts = opts or ReadOptions()
    path = Path(path)
    if not opts.data_dict:
        raise InvalidInput(f"{path.name}: a tree-importer CSV needs its data dictionary "
                           "(--data-dict FILE.json).")
    dd = load_data_dict(opts.data_dict)
    leaf_type = str((opts.mapping or {}).get("leaf_type") or dd.type or DEFAULT_LEAF_TYPE)
    table = open_table(path, opts, default_delimiter=";")
    tree = _Tree(path, table, dd, leaf_type.strip())
    tree.scan()
    types = [TypeDef(column, depth) for depth, column in enumerate(dd.parents, start=1)]
    if leaf_type in dd.parents:
        tree.warnings.append(f"The leaf type {leaf_type!r} is also a level column; its units "
                             "share that type.")
    else:
        types.append(TypeDef(leaf_type, len(dd.parents) + 1))
    return ImportPayload(
        units=tree.records(),
        types=types,
        warnings=tree.warnings,
        total=tree.rows + len(tree.refs),
        description=f"Imported from {path.name} (Iaso tree importer)",
    )
