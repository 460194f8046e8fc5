"""CSV and Excel (XLSX): one row per unit, with English headers or Iaso's French ones.

**Columns** (English, the default; the header is matched case-insensitively, spaces
and hyphens count as ``_``)::

    ref, name, type, level, parent_ref, code, latitude, longitude, wkt,
    opening_date, closed_date, validation_status, uuid, aliases, groups,
    parent_1_name, parent_1_ref, parent_2_name, parent_2_ref, …, <extra fields>

``parent_1_*`` is the **nearest** parent (Iaso's order), ``parent_2_*`` the one above
it, and so on, for every level above the deepest unit.  ``wkt`` is the territory as
WKT (full precision; a ``POINT`` there is read as the location when latitude and
longitude are empty).  ``aliases`` and ``groups`` (group refs) are joined with ``;``,
or written as a JSON list when a value itself holds a ``;``.  Columns of no known
meaning are the unit's ``extra_fields`` (text); the writer writes each extra field as
a column of its own after the parent columns (``extra.<key>`` when the key would
clash with a known column).

**Iaso headers** (``--iaso-headers``): the columns of Iaso's org-unit export
(``ID, Nom, Type, Latitude, Longitude, Code, Date d'ouverture, Date de fermeture,
Date de création, Date de modification, Créé par, Source, Validé, Référence externe,
parent 1..N, Ref Ext parent 1..N``, then one 0/1 column per group, headed by the
group's name).  ``ID`` is written as the unit's uuid; read back it is the uuid when
it holds one, else kept as ``extra_fields["iaso_id"]`` (an Iaso primary key).  The
reader recognises Iaso's headers by itself (a ``Nom`` column and no ``name``);
``--iaso-headers`` forces it.  Iaso columns after the known ones whose values are all
0/1 (or empty) are groups (ref = name = the header); ``Total de soumissions …`` is
ignored; anything else is an extra field.

**Parents**, row by row: the ``parent_ref`` column; else ``parent_1_ref`` (``Ref Ext
parent 1``).  A file with neither column but with parent *name* columns builds the
tree from the names: each distinct name path (``Kinshasa/Lukunga``) is one unit.
A row is that unit when its own name path matches (its ``ref``, or the path as ref
when it has none); ancestors that no row describes are created from the names
(no type, no geometry).  Name-built trees need a first pass over the file; every
file gets one anyway (see below).  Refs written ``iaso#N`` (Iaso's legacy spelling)
are read as ``iaso:N``, as the GeoPackage reader does.

**Text files.**  The encoding is UTF-8 (with or without BOM), or UTF-16/UTF-32 when
the file starts with their BOM (Excel's "Unicode text"), unless ``--encoding``
says otherwise (``latin-1``, ``cp1252`` …).  We do **not** guess Latin-1: a byte that
is not UTF-8 is an error naming the file, row, column and byte offset, with the hint
to pass ``--encoding latin-1`` — a guess would silently turn a broken UTF-8 file into
mojibake.  The delimiter is ``,``, ``;`` or tab, whichever splits the header line into
the most columns (``--delimiter`` overrides).  Numbers may use a decimal comma
(``12,5``).  ``NULL``/``NA``/``N/A`` in a number column count as empty.

**Dates** are ``YYYY-MM-DD`` (or an ISO date-time: its date part; see
``storage.bulk.parse_date``); XLSX date cells are dates.  Slash (or dot) dates are
read in the order the file shows: day first when one of its slash dates has a first
number above 12 (``31/12/2020``), month first when one has a second number above 12
(``12/31/2020``); a file showing both orders is refused, and so is a file whose every
such date reads both ways (``01/02/2003``) — no guess.  ``05/05/2020`` reads one way.

**Formula guard (CSV).**  A text cell that starts with ``=``, ``+``, ``-``, ``@``, tab
or carriage return — after any number of ``'`` — is written with one ``'`` before it,
so that Excel or LibreOffice show it as text instead of running it (CSV injection);
the reader drops that one ``'`` from any cell starting with ``'`` followed by (more
``'`` and) one of those characters, so a Georeg CSV reads back to the same values.

**Two passes.**  ``read_file`` reads the whole file once (checking the encoding and
the numbers, counting rows, collecting types, groups and warnings — which the import
job needs before the first unit) and the units then stream in a second pass, so a
100k-row file is never held in memory.  XLSX files are read with openpyxl in
read-only mode (cached formula values, first sheet unless ``--layer``).

**A row's bad cells are the row's problem, not the file's.**  Coordinates that cannot
be read (a latitude that is not a number, a longitude without its latitude) and a
``wkt`` cell that is not WKT (or not a point or polygon) come to the import job as a
record with ``problem`` (see ``storage.bulk.ROW_PROBLEMS``): the job lists them with
the other rows' problems and refuses the file, or with ``--skip-invalid`` imports the
other rows.  Read outside the job, rows with unreadable coordinates stop the reading
before the first unit, all listed (a bad ``wkt`` cell: at its row).

**Writing** spools the units to a temporary file first (the parent columns depend on
the deepest unit), then writes the file under a temporary name and renames it.  CSV
numbers and WKT are exact (shortest round-trip floats); XLSX numbers carry the 16
significant digits Excel stores, text starting with ``=`` stays text (never a
formula), and a territory longer than an Excel cell (32,767 characters) is left out
with a warning.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import json
import math
import os
import re
import tempfile
import unicodedata
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import shapely
from shapely.errors import GEOSException
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from storage import geometry
from storage.bulk import ROW_PROBLEMS, UnitRecord
from storage.errors import InvalidInput
from sync.exchange import ExportUnit, GroupDef, ImportPayload, ReadOptions, TypeDef, VersionData

#: English columns, in the order they are written (parent and extra columns follow)
COLUMNS = ("ref", "name", "type", "level", "parent_ref", "code", "latitude", "longitude", "wkt",
           "opening_date", "closed_date", "validation_status", "uuid", "aliases", "groups")
#: Iaso's export columns (``iaso/api/org_units.py``), before the parent and group columns
IASO_COLUMNS = ("ID", "Nom", "Type", "Latitude", "Longitude", "Code", "Date d'ouverture",
                "Date de fermeture", "Date de création", "Date de modification", "Créé par",
                "Source", "Validé", "Référence externe")
#: Iaso header (normalised) → our field; None: known, not imported
_IASO_FIELDS: dict[str, str | None] = {
    "id": "iaso_id", "nom": "name", "type": "type", "latitude": "latitude",
    "longitude": "longitude", "code": "code", "date d'ouverture": "opening_date",
    "date de fermeture": "closed_date", "validé": "validation_status",
    "référence externe": "ref", "date de création": None, "date de modification": None,
    "créé par": None, "source": None,
}
_SYNONYMS = {"source_ref": "ref", "lat": "latitude", "lon": "longitude", "lng": "longitude",
             "territory": "wkt", "geometry": "wkt", "status": "validation_status",
             "depth": "level", "group_refs": "groups", "type_name": "type"}
_PARENT_EN = re.compile(r"^parent_(\d+)_(name|ref)$")
_PARENT_IASO = re.compile(r"^(ref ext )?parent (\d+)$")
_IASO_REF = re.compile(r"^iaso[#:](.+)$")
_NULLS = {"null", "none", "na", "n/a", "nan", "-"}
_TRUE = {"1", "1.0", "true", "vrai", "oui", "yes", "x"}
_FALSE = {"0", "0.0", "false", "faux", "non", "no", ""}
_BOOL = _TRUE | _FALSE
_STATUS = {"valid": "valid", "valide": "valid", "validé": "valid", "new": "new",
           "nouveau": "new", "rejected": "rejected", "rejeté": "rejected"}
_DMY = re.compile(r"^(\d{1,2})[/.](\d{1,2})[/.](\d{4})$")
XLSX_SUFFIXES = (".xlsx", ".xlsm")
XLSX_CELL_MAX = 32_767  # characters in one Excel cell
MAX_LISTED = 10  # problems listed in one message


# --- reading the rows of a file ---------------------------------------------------------


def _codec(name: str | None) -> str:
    """The Python codec for ``--encoding`` (UTF-8 always drops a BOM)."""
    if not name:
        return "utf-8-sig"
    try:
        found = codecs.lookup(name).name
    except LookupError:
        raise InvalidInput(f"Unknown encoding {name!r}; use utf-8, latin-1 or cp1252.") from None
    return "utf-8-sig" if found in ("utf-8", "utf-8-sig") else found


def _bom_codec(path: Path) -> str:
    """UTF-8 (with or without BOM) unless a UTF-16 or UTF-32 BOM says otherwise: Excel's
    "Unicode text" is UTF-16 with a BOM, which a BOM settles without guessing."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return "utf-8-sig"  # the caller says what is wrong with the file
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig"


def _field_limit() -> None:
    """Territories as WKT easily pass csv's default 128 kB per field."""
    limit = 2**31 - 1
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)


@dataclass
class TextTable:
    """A delimited text file, read row by row with the encoding checked on the way."""

    path: Path
    encoding: str
    delimiter: str
    given_encoding: bool

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """(spreadsheet row number — the header is row 1 —, cells) of every record."""
        _field_limit()
        with self.path.open(encoding=self.encoding, errors="surrogateescape", newline="") as fh:
            for n, row in enumerate(csv.reader(fh, delimiter=self.delimiter), start=1):
                joined = "".join(row)
                try:
                    joined.encode("utf-8")
                except UnicodeEncodeError:
                    raise self._broken(n, row) from None
                if "'" in joined:  # (rare: the per-cell look only then)
                    row = [_unguard(c) if c[:1] == "'" else c for c in row]
                yield n, row

    def _broken(self, n: int, row: list[str]) -> InvalidInput:
        """A row holding a byte the encoding cannot decode (kept as a lone surrogate)."""
        i, cell = next((i, c) for i, c in enumerate(row) if _has_surrogate(c))
        byte = next(ord(ch) - 0xDC00 for ch in cell if "\udc80" <= ch <= "\udcff")
        header = next(csv.reader([_first_line(self)], delimiter=self.delimiter), [])
        what = (f"column {i + 1} of the header" if n == 1 else
                f"field {header[i].strip()!r}" if i < len(header) and header[i].strip() else
                f"column {i + 1}")
        label = "UTF-8" if self.encoding == "utf-8-sig" else self.encoding
        snippet = "".join("\ufffd" if "\udc80" <= ch <= "\udcff" else ch for ch in cell)[:60]
        offset = _first_bad_offset(self.path, self.encoding)
        at = f" at byte offset {offset} of the file" if offset is not None else ""
        hint = ("; import it with --encoding latin-1 (or cp1252) if it is a Latin-1/Windows "
                "file, or save it again as UTF-8" if not self.given_encoding else "")
        return InvalidInput(
            f"{self.path.name}, row {n}: {what} is not valid {label} (byte 0x{byte:02X}{at}, "
            f"in {snippet!r}){hint}.", row=n, column=i + 1, byte=byte, offset=offset)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first_line(table: TextTable) -> str:
    with table.path.open(encoding=table.encoding, errors="replace", newline="") as fh:
        head = fh.read(1 << 16)
    lines = head.splitlines()
    return lines[0] if lines else ""


def _first_bad_offset(path: Path, encoding: str) -> int | None:
    """Byte offset of the first undecodable byte (only on the error path: reads it all)."""
    try:
        path.read_bytes().decode("utf-8" if encoding == "utf-8-sig" else encoding)
    except UnicodeDecodeError as error:
        return error.start
    return None


def open_text(path: Path, opts: ReadOptions, *, default_delimiter: str | None = None
              ) -> TextTable:
    """A CSV file's encoding and delimiter; refuses a missing or empty file."""
    if not path.exists():
        raise InvalidInput(f"{path}: file not found.")
    encoding = _codec(opts.encoding) if opts.encoding else _bom_codec(path)
    with path.open(encoding=encoding, errors="replace", newline="") as fh:
        head = fh.read(1 << 16)
    if not head.strip("\ufeff \t\r\n"):
        raise InvalidInput(f"{path.name} is empty.")
    table = TextTable(path, encoding, ",", bool(opts.encoding))
    if opts.delimiter:
        table.delimiter = _delimiter(opts.delimiter)
    else:
        first = head.lstrip("\ufeff").splitlines()[0]
        candidates = (",", ";", "\t")
        counts = {d: len(next(csv.reader([first], delimiter=d))) for d in candidates}
        best = max(counts.values())
        if default_delimiter and counts.get(default_delimiter, 1) == best:
            table.delimiter = default_delimiter  # ties (a one-column header) go to the default
        else:
            table.delimiter = next(d for d in candidates if counts[d] == best)
    return table


def _delimiter(text: str) -> str:
    value = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}.get(text.lower(), text)
    if len(value) != 1:
        raise InvalidInput(f"--delimiter must be one character (',', ';' or 'tab'); got {text!r}.")
    return value


@dataclass
class XlsxTable:
    """One sheet of a workbook (openpyxl, read-only, cached formula values)."""

    path: Path
    sheet: str | None

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        wb = _open_workbook(self.path)
        try:
            ws = _sheet(wb, self.path, self.sheet)
            for n, row in enumerate(ws.iter_rows(values_only=True), start=1):
                yield n, [_cell_text(v) for v in row]
        finally:
            wb.close()


def _open_workbook(path: Path) -> Any:
    import zipfile

    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    if not path.exists():
        raise InvalidInput(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{path.name} is empty.")
    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as error:
        raise InvalidInput(f"{path.name}: not a readable Excel .xlsx workbook ({error}); "
                           "old .xls files must be saved as .xlsx first.") from None


def _other_sheets(table: TextTable | XlsxTable) -> str | None:
    """For a workbook read at its first sheet (no ``--layer``) that holds others: which,
    and how to pick one (the first sheet is often a notes or cover sheet)."""
    if not isinstance(table, XlsxTable) or table.sheet is not None:
        return None
    wb = _open_workbook(table.path)
    try:
        names = list(wb.sheetnames)
    finally:
        wb.close()
    if len(names) < 2:
        return None
    return (f"That is the first sheet, {names[0]!r}; the workbook's sheets are "
            f"{', '.join(repr(n) for n in names)}: give the one to read with --layer SHEET.")


def _sheet(wb: Any, path: Path, name: str | None) -> Any:
    if name is None:
        return wb.worksheets[0]
    if name not in wb.sheetnames:
        raise InvalidInput(f"{path.name}: no sheet {name!r}; sheets: {', '.join(wb.sheetnames)}.")
    return wb[name]


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def open_table(path: Path, opts: ReadOptions, *, default_delimiter: str | None = None
               ) -> TextTable | XlsxTable:
    """A CSV or XLSX file (told apart by its name, or a zip signature)."""
    path = Path(path)
    if path.suffix.lower() in XLSX_SUFFIXES or _is_zip(path):
        return XlsxTable(path, opts.layer)
    return open_text(path, opts, default_delimiter=default_delimiter)


def _is_zip(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def data_rows(table: TextTable | XlsxTable) -> Iterator[tuple[int, list[str]]]:
    """The rows after the header, blank ones skipped."""
    rows = table.rows()
    next(rows, None)
    for n, cells in rows:
        if any(c.strip() for c in cells):
            yield n, cells


def header_of(table: TextTable | XlsxTable) -> list[str]:
    rows = table.rows()
    try:
        first = next(rows, None)
    finally:
        rows.close()  # type: ignore[attr-defined]
    if first is None or not any(c.strip() for c in first[1]):
        raise InvalidInput(f"{table.path.name} is empty." if first is None else
                           f"{table.path.name}: the first row has no column names.")
    return [unicodedata.normalize("NFC", c).replace("\ufeff", "").strip() for c in first[1]]


# --- values --------------------------------------------------------------------------


def number(text: str, where: str, column: str) -> float | None:
    """A number from a cell: ``12.5``, ``12,5`` (decimal comma), empty/NULL → None."""
    s = text.strip().replace("\u00a0", "").replace(" ", "")
    if not s or s.casefold() in _NULLS:
        return None
    if "," in s and "." not in s and s.count(",") == 1:
        s = s.replace(",", ".")
    try:
        value = float(s)
    except ValueError:
        raise InvalidInput(f"{where}: field {column!r} is {text.strip()!r}, not a number "
                           "(e.g. 12.5 or 12,5).") from None
    if not math.isfinite(value):
        raise InvalidInput(f"{where}: field {column!r} is {text.strip()!r}, not a number.")
    return value


def point(lat_text: str, lon_text: str, where: str, lat_col: str, lon_col: str
          ) -> Point | None:
    lat = number(lat_text, where, lat_col)
    lon = number(lon_text, where, lon_col)
    if lat is None and lon is None:
        return None
    if lat is None or lon is None:
        given, empty = (lat_col, lon_col) if lon is None else (lon_col, lat_col)
        raise InvalidInput(f"{where}: field {empty!r} is empty but {given!r} is given; "
                           "give both coordinates or neither.")
    return Point(lon, lat)


def slash_date(text: str, day_first: bool) -> str:
    """``31/12/2020`` (``31.12.2020``) → ``2020-12-31``, day or month first as the file
    says (see :meth:`_Reader._date_order`); anything else is returned as it is, for the
    import job to take (ISO) or refuse with the row."""
    m = _DMY.match(text)
    if m is None:
        return text
    a, b = int(m.group(1)), int(m.group(2))
    day, month = (a, b) if day_first else (b, a)
    try:
        return dt.date(int(m.group(3)), month, day).isoformat()
    except ValueError:
        return text  # 31/31/2020: refused by the import job, as written


def split_list(text: str) -> list[str]:
    """``a;b`` or a JSON list (written when a value holds a ``;``)."""
    s = text.strip()
    if not s:
        return []
    if s.startswith("["):
        try:
            value = json.loads(s)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return [p.strip() for p in s.split(";") if p.strip()]


def join_list(values: list[str]) -> str:
    if not values:
        return ""
    if any(";" in v or v != v.strip() or not v for v in values) or values[0].startswith("["):
        return json.dumps(values, ensure_ascii=False)
    return ";".join(values)


def _uuid(text: str) -> str | None:
    try:
        return str(uuidlib.UUID(text.strip()))
    except ValueError:
        return None


def ascii_fold(text: str) -> str:
    """``Néant`` → ``Neant`` (what unidecode does for Latin letters)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c))


# --- reading: which column is what ------------------------------------------------------


def _key(header: str) -> str:
    return re.sub(r"[\s\-]+", "_", header.casefold())


def _iaso_key(header: str) -> str:
    return " ".join(header.replace("’", "'").casefold().split())


@dataclass
class _Layout:
    headers: list[str]
    iaso: bool
    fields: dict[str, int] = field(default_factory=dict)
    #: depth above the unit (1 = parent) → [name column, ref column]
    parents: dict[int, list[int | None]] = field(default_factory=dict)
    #: Iaso columns of no known meaning: groups when all 0/1, else extra fields
    unknown: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    extras: dict[int, str] = field(default_factory=dict)

    def col(self, f: str) -> str:
        return self.headers[self.fields[f]]

    @property
    def mode(self) -> str:
        """How parents are found: by ref, by the parent names, or none (all roots)."""
        if "parent_ref" in self.fields or any(p[1] is not None for p in self.parents.values()):
            return "ref"
        if any(p[0] is not None for p in self.parents.values()):
            return "names"
        return "none"


def _layout(path: Path, headers: list[str], opts: ReadOptions) -> _Layout:
    mapping = dict(opts.mapping or {})
    mapping.pop("leaf_type", None)
    unknown_keys = [k for k in mapping if k not in COLUMNS]
    if unknown_keys:
        raise InvalidInput(f"--mapping: unknown field(s) {', '.join(unknown_keys)}; "
                           f"fields: {', '.join(COLUMNS)}.")
    keys = [_key(h) for h in headers]
    iaso = opts.iaso_headers or (
        "name" not in keys and "name" not in mapping
        and any(_iaso_key(h) == "nom" for h in headers))
    lay = _Layout(headers, iaso)
    taken: set[int] = set()
    for f, column in mapping.items():
        idx = next((i for i, h in enumerate(headers) if h.casefold() == str(column).casefold()),
                   None)
        if idx is None:
            raise InvalidInput(f"{path.name}: --mapping names column {column!r} for {f!r}, but "
                               f"the file has no such column; columns: {_listing(headers)}.")
        lay.fields[f] = idx
        taken.add(idx)
    for i, h in enumerate(headers):
        if i in taken or not h:
            continue
        if iaso:
            k = _iaso_key(h)
            m = _PARENT_IASO.match(k)
            if k in _IASO_FIELDS:
                target = _IASO_FIELDS[k]
                if target is not None:
                    lay.fields.setdefault(target, i)
            elif m:
                lay.parents.setdefault(int(m.group(2)), [None, None])[1 if m.group(1) else 0] = i
            elif not k.startswith("total de soumissions"):
                lay.unknown.append(i)
            continue
        k = _SYNONYMS.get(keys[i], keys[i])
        m = _PARENT_EN.match(k)
        if k in COLUMNS and k not in lay.fields:
            lay.fields[k] = i
        elif m:
            lay.parents.setdefault(int(m.group(1)), [None, None])[m.group(2) == "ref"] = i
        else:
            lay.extras[i] = h[len("extra."):] if h.startswith("extra.") else h
    if "name" not in lay.fields:
        wanted = "'Nom' (Iaso headers)" if iaso else "'name' (or Iaso's 'Nom')"
        raise InvalidInput(f"{path.name}: no {wanted} column; columns found: "
                           f"{_listing(headers)}.")
    return lay


def _listing(headers: list[str]) -> str:
    named = [h for h in headers if h]
    shown = ", ".join(repr(h) for h in named[:40])
    return shown + (f" … ({len(named)} in all)" if len(named) > 40 else "") if named else "none"


# --- reading: records -------------------------------------------------------------------


class _RefBook:
    """Hands out refs no other unit of the file uses (``A/B``, then ``A/B #2`` …)."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    def new(self, preferred: str) -> str:
        ref, i = preferred, 2
        while ref in self.taken:
            ref, i = f"{preferred} #{i}", i + 1
        self.taken.add(ref)
        return ref


@dataclass
class _Row:
    """What both passes read from one row."""

    n: int
    cells: list[str]
    lay: _Layout

    def get(self, f: str) -> str:
        i = self.lay.fields.get(f)
        return self.cells[i].strip() if i is not None and i < len(self.cells) else ""

    def at(self, i: int | None) -> str:
        return self.cells[i].strip() if i is not None and i < len(self.cells) else ""

    def ref(self) -> str | None:
        ref = _iaso_ref(self.get("ref"))
        if ref is None and self.lay.iaso and self.get("iaso_id"):
            ref = f"iaso:{self.get('iaso_id')}"
        return ref

    def parent_ref(self) -> str | None:
        ref = self.get("parent_ref")
        if not ref and 1 in self.lay.parents:
            ref = self.at(self.lay.parents[1][1])
        return _iaso_ref(ref)

    def parent_names(self) -> tuple[str, ...]:
        """Names of the ancestors, top first (the columns are nearest first)."""
        names = [self.at(self.lay.parents[k][0]) for k in sorted(self.lay.parents, reverse=True)]
        return tuple(n for n in names if n)

    def ancestor_count(self) -> int:
        return sum(1 for name_i, ref_i in self.lay.parents.values()
                   if self.at(name_i) or self.at(ref_i))


def _rows(rows: list[int], total: int) -> str:
    return ", ".join(map(str, rows)) + (" …" if total > len(rows) else "")


def _iaso_ref(ref: str | None) -> str | None:
    if not ref:
        return None
    m = _IASO_REF.match(ref)
    return f"iaso:{m.group(1)}" if m else ref


class _Reader:
    def __init__(self, path: Path, table: TextTable | XlsxTable, lay: _Layout) -> None:
        self.path, self.table, self.lay = path, table, lay
        self.warnings: list[str] = []
        self.types: dict[str, TypeDef] = {}
        self.groups: dict[str, GroupDef] = {}
        self.count = 0
        #: names mode: name path → (row that is that unit, its ref); synthesised ancestors
        self.claims: dict[tuple[str, ...], tuple[int, str]] = {}
        self.ancestors: dict[tuple[str, ...], tuple[str, int]] = {}
        #: names mode: refs of rows without one whose name path an earlier row has
        self.row_refs: dict[int, str] = {}
        #: how the file writes slash dates (31/12/2020): day first unless it shows
        #: otherwise (see ``_date_order``)
        self.day_first = True
        #: rows whose coordinates cannot be read (a latitude that is not a number, a
        #: longitude without its latitude): how many, and the first ``MAX_LISTED``
        #: messages — rows the import job rejects, or a read outside it refuses
        self.bad_points = 0
        self.point_problems: list[str] = []

    def where(self, n: int) -> str:
        return f"{self.path.name}, row {n}"

    # first pass: everything the import needs before the first unit
    def scan(self) -> None:
        lay = self.lay
        extra_cells = orphans = 0
        orphan_rows: list[int] = []
        is_bool = {i: True for i in lay.unknown}
        uuids: dict[str, int] = {}
        own: list[tuple[tuple[str, ...], int, str | None]] = []
        needed: dict[tuple[str, ...], int] = {}
        date_fields = [f for f in ("opening_date", "closed_date") if f in lay.fields]
        slashed: dict[str, tuple[int, str]] = {}  # slash date → (first row, field)
        for n, cells in data_rows(self.table):
            self.count += 1
            row = _Row(n, cells, lay)
            for f in date_fields:
                d = row.get(f)
                if d and ("/" in d or "." in d) and d not in slashed:
                    slashed[d] = (n, f)
            if len(cells) > len(lay.headers) and any(c.strip() for c in cells[len(lay.headers):]):
                extra_cells += 1
            try:
                self._point(row)
                placed = True
            except InvalidInput as error:  # the row's problem, not the file's (see records)
                placed = False
                self.bad_points += 1
                if len(self.point_problems) < MAX_LISTED:
                    self.point_problems.append(error.message)
            for i in lay.unknown:
                if is_bool[i] and row.at(i).casefold() not in _BOOL:
                    is_bool[i] = False
            if lay.mode == "ref" and not row.parent_ref() and row.ancestor_count():
                orphans += 1
                if len(orphan_rows) < MAX_LISTED:
                    orphan_rows.append(n)
            type_name = row.get("type")
            if type_name and placed:  # (a rejected row's type is not made)
                self._type(type_name, self._depth(row), n)
            if "groups" in lay.fields:
                for g in split_list(row.get("groups")):
                    self.groups.setdefault(g, GroupDef(g, g))
            text = row.get("uuid") or (row.get("iaso_id") if lay.iaso else "")
            if text:
                u = _uuid(text)
                if u is None and not lay.iaso:
                    self.warnings.append(f"{self.where(n)}: field {lay.col('uuid')!r} "
                                         f"{text!r} is not a UUID; the unit gets a new one.")
                elif u is not None and u in uuids:
                    self.warnings.append(f"{self.where(n)}: uuid {u} is also on row {uuids[u]}; "
                                         "the unit gets a new one.")
                elif u is not None:
                    uuids[u] = n
            if lay.mode == "names":
                parents = row.parent_names()
                own.append((parents + (row.get("name"),), n, row.ref()))
                for i in range(1, len(parents) + 1):
                    needed.setdefault(parents[:i], n)
        if self.count == 0:
            raise InvalidInput(f"{self.path.name} has a header but no rows.")
        if slashed:
            self.day_first = self._date_order(slashed)
        if orphans:
            self.warnings.append(
                f"{self.path.name}: {orphans} row(s) name a parent but give no parent ref "
                f"(rows {_rows(orphan_rows, orphans)}); they are placed at the top of the tree.")
        if extra_cells:
            self.warnings.append(f"{self.path.name}: {extra_cells} row(s) have more cells than "
                                 "the header has columns; the extra cells were ignored.")
        for i in lay.unknown:
            if is_bool[i]:
                lay.groups.append(i)
                name = lay.headers[i]
                self.groups.setdefault(name, GroupDef(name, name))
            else:
                lay.extras[i] = lay.headers[i]
        if lay.mode == "names":
            self._assign_paths(own, needed)

    def _date_order(self, slashed: dict[str, tuple[int, str]]) -> bool:
        """Whether the file's slash dates are day first (``31/12/2020``) or month first
        (``12/31/2020``), from the dates that can only be read one way; refuses a file
        that mixes both, and a file whose every slash date reads both ways (``01/02/2003``:
        1 February or January 2?) rather than guess."""
        day: tuple[str, int, str] | None = None  # (date, row, field) showing each order
        month: tuple[str, int, str] | None = None
        unsure: list[tuple[int, str, str]] = []
        for text, (n, f) in slashed.items():
            m = _DMY.match(text)
            if m is None:
                continue  # not a slash date: the import job judges it
            a, b = int(m.group(1)), int(m.group(2))
            if a > 12 >= b:
                day = day or (text, n, f)
            elif b > 12 >= a:
                month = month or (text, n, f)
            elif a != b and a <= 12 and b <= 12:
                unsure.append((n, f, text))
        if day and month:
            raise InvalidInput(
                f"{self.path.name}: the dates mix day-first ({self._at(day)}) and month-first "
                f"({self._at(month)}) orders; write them as YYYY-MM-DD. Nothing was imported.")
        if day or month or not unsure:
            return month is None
        unsure.sort()
        listed = "\n".join(f"  - {self.where(n)}: field {self.lay.col(f)!r} is {t!r}"
                           for n, f, t in unsure[:MAX_LISTED])
        more = len(unsure) - MAX_LISTED
        raise InvalidInput(
            f"{self.path.name}: {len(unsure)} date(s) can be read day/month or month/day, and "
            "no date of the file settles which (a day above 12, as in 31/12/2020 or "
            "12/31/2020); write dates as YYYY-MM-DD. Nothing was imported:\n" + listed
            + (f"\n  … and {more} more." if more > 0 else ""))

    def _at(self, found: tuple[str, int, str]) -> str:
        text, n, f = found
        return f"row {n}, field {self.lay.col(f)!r}: {text!r}"

    def _date(self, text: str) -> str | None:
        if not text:
            return None
        if "/" in text or "." in text:
            return slash_date(text, self.day_first)
        return text  # ISO, or an error the import job reports with the row

    def _assign_paths(self, own: list[tuple[tuple[str, ...], int, str | None]],
                      needed: dict[tuple[str, ...], int]) -> None:
        book = _RefBook({ref for _, _, ref in own if ref})
        for path, n, ref in own:
            if path not in self.claims:
                self.claims[path] = (n, ref or book.new("/".join(path)))
            elif ref is None:
                self.row_refs[n] = book.new("/".join(path))
        for path, n in needed.items():
            if path not in self.claims:
                self.ancestors[path] = (book.new("/".join(path)), n)

    def _depth(self, row: _Row) -> int | None:
        level = row.get("level")
        if level:
            try:
                return int(float(level.replace(",", ".")))
            except ValueError:
                return None
        if self.lay.mode == "names":
            return len(row.parent_names()) + 1
        if self.lay.parents:
            return row.ancestor_count() + 1
        return None

    def _type(self, name: str, depth: int | None, n: int) -> None:
        seen = self.types.get(name)
        if seen is None:
            self.types[name] = TypeDef(name, depth)
        elif seen.depth is None:
            seen.depth = depth
        elif depth is not None and depth != seen.depth:
            self.warnings.append(f"{self.where(n)}: type {name!r} at level {depth}, but at "
                                 f"level {seen.depth} on an earlier row; one type is kept.")

    def _point(self, row: _Row) -> Point | None:
        lay = self.lay
        if "latitude" not in lay.fields and "longitude" not in lay.fields:
            return None
        lat_col = lay.col("latitude") if "latitude" in lay.fields else "latitude"
        lon_col = lay.col("longitude") if "longitude" in lay.fields else "longitude"
        return point(row.get("latitude"), row.get("longitude"), self.where(row.n), lat_col,
                     lon_col)

    def _refuse_bad_points(self) -> None:
        """Read outside the import job (whose caller may not look at ``problem``): rows
        with unreadable coordinates stop the reading, all listed, before the first unit."""
        listed = "\n".join(f"  - {p}" for p in self.point_problems)
        more = self.bad_points - len(self.point_problems)
        raise InvalidInput(f"{self.bad_points} row(s) of {self.path.name} have unreadable "
                           f"coordinates; nothing was imported:\n{listed}"
                           + (f"\n  … and {more} more." if more > 0 else ""))

    # second pass: the units
    def records(self) -> Iterator[UnitRecord]:
        """The units; a row whose coordinates or WKT cannot be read comes with its
        ``problem``, for the import job to reject with the other rows' problems (see
        ``storage.bulk.ROW_PROBLEMS``)."""
        if self.bad_points and not ROW_PROBLEMS.get():
            self._refuse_bad_points()
        lay = self.lay
        seen_uuids: set[str] = set()
        emitted: set[tuple[str, ...]] = set()
        for n, cells in data_rows(self.table):
            row = _Row(n, cells, lay)
            where = self.where(n)
            ref, parent_ref = row.ref(), None
            if lay.mode == "ref":
                parent_ref = row.parent_ref()
            elif lay.mode == "names":
                parents = row.parent_names()
                yield from self._ancestors(parents, emitted)
                path = parents + (row.get("name"),)
                claim = self.claims.get(path)
                if claim is not None and claim[0] == n:
                    ref = claim[1]
                ref = ref or self.row_refs.get(n)
                if parents:
                    parent_ref = self._path_ref(parents)
            problem = None
            try:  # (free when nothing is raised)
                location = self._point(row)
            except InvalidInput as error:  # the job rejects the row (ROW_PROBLEMS)
                if not ROW_PROBLEMS.get():
                    raise
                location, problem = None, error.message
            territory = None
            if "wkt" in lay.fields and row.get("wkt"):
                try:
                    loc, territory = self._wkt(row.get("wkt"), where, lay.col("wkt"))
                except InvalidInput as error:  # the job rejects the row (ROW_PROBLEMS)
                    if not ROW_PROBLEMS.get():
                        raise
                    loc = None
                    problem = (error.message if problem is None else
                               f"{problem} Also {error.message.removeprefix(where + ': ')}")
                location = location or loc
            text = row.get("uuid") or (row.get("iaso_id") if lay.iaso else "")
            uid = _uuid(text) if text else None
            if uid is not None:
                if uid in seen_uuids:
                    uid = None
                else:
                    seen_uuids.add(uid)
            extra = {lay.extras[i]: row.at(i) for i in lay.extras if row.at(i)}
            if lay.iaso and row.get("iaso_id") and _uuid(row.get("iaso_id")) is None:
                extra["iaso_id"] = row.get("iaso_id")
            groups: list[str] | None = None
            if "groups" in lay.fields:
                groups = split_list(row.get("groups"))
            elif lay.groups:
                groups = [lay.headers[i] for i in lay.groups
                          if row.at(i).casefold() in _TRUE]
            status = row.get("validation_status")
            aliases = split_list(row.get("aliases")) if "aliases" in lay.fields else None
            yield UnitRecord(
                name=row.get("name"),
                source_ref=ref,
                parent_ref=parent_ref,
                type_name=row.get("type") or None,
                code=row.get("code") or None,
                opening_date=self._date(row.get("opening_date")),
                closed_date=self._date(row.get("closed_date")),
                aliases=aliases or None,
                extra_fields=extra or None,
                location=location,
                territory=territory,
                validation_status=_status(status) if status else "valid",
                uuid=uid,
                groups=groups,
                where=where,
                problem=problem,
            )

    def _path_ref(self, path: tuple[str, ...]) -> str:
        claim = self.claims.get(path)
        return claim[1] if claim is not None else self.ancestors[path][0]

    def _ancestors(self, parents: tuple[str, ...], emitted: set[tuple[str, ...]]
                   ) -> Iterator[UnitRecord]:
        for i in range(1, len(parents) + 1):
            path = parents[:i]
            if path in self.claims or path in emitted:
                continue
            emitted.add(path)
            ref, n = self.ancestors[path]
            yield UnitRecord(name=path[-1], source_ref=ref,
                             parent_ref=self._path_ref(path[:-1]) if i > 1 else None,
                             where=f"{self.where(n)}, parent {len(parents) - i + 1} "
                                   f"{path[-1]!r} (made from the parent names)")

    @staticmethod
    def _wkt(text: str, where: str, column: str
             ) -> tuple[BaseGeometry | None, BaseGeometry | None]:
        try:
            geom = shapely.from_wkt(text)
        except (GEOSException, ValueError) as error:
            raise InvalidInput(f"{where}: field {column!r} is not valid WKT ({error}).") from None
        if geom is None or geom.is_empty:
            return None, None
        try:
            return geometry.split_location_territory(shapely.force_2d(geom))
        except InvalidInput as error:
            raise InvalidInput(f"{where}: field {column!r}: {error.message}") from None


def _status(text: str) -> str:
    s = text.strip().casefold()
    if s in _TRUE:
        return "valid"
    if s in _FALSE:
        return "new"
    return _STATUS.get(s, s)  # anything else: the import job names the row and the field


def read_file(path: Path, opts: ReadOptions | None = None) -> ImportPayload:
    """A CSV or XLSX file, one row per unit (see the module docstring)."""
    opts = opts or ReadOptions()
    path = Path(path)
    table = open_table(path, opts)
    try:
        lay = _layout(path, header_of(table), opts)
    except InvalidInput as error:
        hint = _other_sheets(table)
        if hint:
            raise InvalidInput(f"{error.message} {hint}") from None
        raise
    reader = _Reader(path, table, lay)
    reader.scan()
    if lay.mode == "names" and reader.ancestors:
        reader.warnings.append(
            f"{path.name}: no parent_ref column; the tree was built from the parent names "
            f"({len(reader.ancestors)} ancestor unit(s) made from them, refs like "
            f"{next(iter(reader.ancestors.values()))[0]!r}).")
    return ImportPayload(
        units=reader.records(),
        types=sorted(reader.types.values(), key=lambda t: (t.depth is None, t.depth or 0,
                                                            t.name)),
        groups=list(reader.groups.values()),
        warnings=reader.warnings,
        total=reader.count + len(reader.ancestors),
        description=f"Imported from {path.name}",
    )


# --- writing ---------------------------------------------------------------------------


def _stacked(data: VersionData) -> Iterator[tuple[ExportUnit, list[tuple[str, str | None]]]]:
    """Each unit with its ancestors as (name, ref), nearest first.

    Units come in path order (depth-first), so the ancestors are a stack: the root
    down to the last unit seen.
    """
    stack: list[tuple[str, str | None]] = []
    for u in data.units:
        above_count = max(u.depth - 1, 0)
        del stack[above_count:]
        if len(stack) != above_count or (stack[-1][1] if stack else None) != u.parent_ref:
            # not in path order: the names the unit carries, and its parent's ref
            stack = [(name, None) for name in u.ancestors]
            if stack:
                stack[-1] = (stack[-1][0], u.parent_ref)
        above = list(stack)
        stack.append((u.name, u.ref))
        yield u, above[::-1]


def _xy(g: BaseGeometry | None) -> tuple[float | None, float | None]:
    if g is None or g.is_empty:
        return None, None
    return float(g.y), float(g.x)


def exact_wkt(geom: BaseGeometry) -> str | None:
    """WKT with Python's shortest round-trip floats (GEOS writes 16 significant digits)."""
    if geom.is_empty:
        return None

    def ring(coords: Any) -> str:
        return "(" + ", ".join(f"{c[0]!r} {c[1]!r}" for c in coords) + ")"

    def poly(p: Any) -> str:
        return "(" + ", ".join(ring(r.coords) for r in (p.exterior, *p.interiors)) + ")"

    if geom.geom_type == "Polygon":
        return f"POLYGON {poly(geom)}"
    if geom.geom_type == "MultiPolygon":
        return "MULTIPOLYGON (" + ", ".join(poly(p) for p in geom.geoms) + ")"
    return str(shapely.to_wkt(geom, rounding_precision=-1))


def _extra_value(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _spool(data: VersionData, spool: TextIO) -> dict[str, Any]:
    """Pass 1: every unit as a JSON line; how many parent levels, which extra fields."""
    depth, count, territories = 0, 0, 0
    keys: dict[str, None] = {}
    for u, above in _stacked(data):
        lat, lon = _xy(u.location)
        wkt = exact_wkt(u.territory) if u.territory is not None else None
        territories += wkt is not None
        extra = {k: _extra_value(v) for k, v in (u.extra_fields or {}).items()}
        for k in extra:
            keys.setdefault(k, None)
        depth = max(depth, len(above))
        spool.write(json.dumps({
            "ref": u.ref, "name": u.name, "type": u.type, "level": u.depth,
            "parent_ref": u.parent_ref, "code": u.code, "latitude": lat, "longitude": lon,
            "wkt": wkt, "opening_date": u.opening_date, "closed_date": u.closed_date,
            "validation_status": u.validation_status, "uuid": u.uuid, "aliases": u.aliases,
            "groups": u.groups, "above": above, "extra": extra}, ensure_ascii=False))
        spool.write("\n")
        count += 1
    return {"depth": depth, "extras": list(keys), "count": count, "territories": territories}


def _english(info: dict[str, Any]) -> tuple[list[str], Callable[[dict[str, Any]], list[Any]]]:
    k = info["depth"]
    parents = [f"parent_{i}_{part}" for i in range(1, k + 1) for part in ("name", "ref")]
    known = {*COLUMNS, *parents}
    extras = [(key, f"extra.{key}" if _key(key) in known or _key(key) in _SYNONYMS
               or _PARENT_EN.match(_key(key)) or key.startswith("extra.") or not key.strip()
               else key) for key in info["extras"]]
    header = [*COLUMNS, *parents, *(col for _, col in extras)]

    def row(r: dict[str, Any]) -> list[Any]:
        out = [r[c] for c in COLUMNS]
        out[COLUMNS.index("aliases")] = join_list(r["aliases"] or [])
        out[COLUMNS.index("groups")] = join_list(r["groups"] or [])
        above = r["above"] + [[None, None]] * (k - len(r["above"]))
        out.extend(v for pair in above for v in pair)
        out.extend(r["extra"].get(key) for key, _ in extras)
        return out

    return header, row


def _iaso(info: dict[str, Any], data: VersionData
          ) -> tuple[list[str], Callable[[dict[str, Any]], list[Any]]]:
    k = info["depth"]
    names: dict[str, str] = {}
    for g in data.groups:
        title = g.name if g.name not in names.values() else f"{g.name} ({g.ref})"
        names[g.ref] = title
    header = [*IASO_COLUMNS, *(f"parent {i}" for i in range(1, k + 1)),
              *(f"Ref Ext parent {i}" for i in range(1, k + 1)), *names.values()]
    source = data.version.source

    def row(r: dict[str, Any]) -> list[Any]:
        above = r["above"] + [[None, None]] * (k - len(r["above"]))
        member = set(r["groups"] or [])
        return [r["uuid"], r["name"], r["type"], r["latitude"], r["longitude"], r["code"],
                r["opening_date"], r["closed_date"], None, None, None, source,
                (r["validation_status"] or "").upper(), r["ref"],
                *(a[0] for a in above), *(a[1] for a in above),
                *(1 if ref in member else 0 for ref in names)]

    return header, row


def write_file(data: VersionData, out: Path, opts: ReadOptions | None = None) -> dict[str, Any]:
    """Write a version as CSV (``.csv``, or any name) or XLSX (``.xlsx``).

    CSV: UTF-8 with a BOM (so Excel reads the accents; ``opts.encoding`` overrides),
    ``,`` unless ``opts.delimiter``.  XLSX: one sheet (``opts.layer`` or ``org_units``).
    The file is written next to ``out`` and renamed into place when complete.
    """
    opts = opts or ReadOptions()
    out = Path(out)
    warns: list[str] = []
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        info = _spool(data, spool)
        spool.seek(0)
        header, to_row = _iaso(info, data) if opts.iaso_headers else _english(info)
        if opts.iaso_headers and info["territories"]:
            warns.append(f"{info['territories']} territories are not written: Iaso's columns "
                         "have no place for polygons (export without --iaso-headers, or to "
                         "GeoPackage or GeoJSON, to keep them).")
        rows = (to_row(json.loads(line)) for line in spool)
        tmp = out.with_name(f".{out.name}.part")
        try:
            if out.suffix.lower() in XLSX_SUFFIXES:
                _write_xlsx(tmp, header, rows, opts.layer or "org_units", warns)
            else:
                _write_csv(tmp, header, rows, opts)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return {"file": str(out), "units": info["count"], "columns": len(header),
            "parent_levels": info["depth"], "warnings": warns}


def _write_csv(path: Path, header: list[str], rows: Iterator[list[Any]],
               opts: ReadOptions) -> None:
    encoding = _codec(opts.encoding) if opts.encoding else "utf-8-sig"
    if opts.encoding and codecs.lookup(opts.encoding).name == "utf-8":
        encoding = "utf-8"  # asked for plain UTF-8: no BOM
    delimiter = _delimiter(opts.delimiter) if opts.delimiter else ","
    with path.open("w", encoding=encoding, newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow([_csv_value(h) for h in header])
        for r in rows:
            writer.writerow(["" if v is None else _csv_value(v) for v in r])


def _csv_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if type(value) is str:
        return "'" + value if value and value[0] in _GUARDED_FIRST and _guarded(value) \
            else value
    return str(value)


#: a text cell starting with one of these is a formula to Excel, LibreOffice and Google
#: Sheets (CSV injection, OWASP): written with a ``'`` before it, which they show as text
_FORMULA_START = "=+-@\t\r"
_GUARDED_FIRST = _FORMULA_START + "'"


def _guarded(value: str) -> bool:
    """Whether a CSV cell is written with a guarding ``'``: it starts with a formula
    character after zero or more ``'`` — so that reading (:func:`_unguard`, which drops
    one ``'`` before one or more ``'`` and a formula character) gives every value back."""
    rest = value.lstrip("'")
    return bool(rest) and rest[0] in _FORMULA_START


def _unguard(cell: str) -> str:
    """A CSV cell as written by :func:`_csv_value`: ``'=SUM(1)`` → ``=SUM(1)``,
    ``''=x`` → ``'=x``; any other cell as it is."""
    return cell[1:] if _guarded(cell[1:]) else cell


def _write_xlsx(path: Path, header: list[str], rows: Iterator[list[Any]], sheet: str,
                warns: list[str]) -> None:
    import openpyxl
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    if len(sheet) > 31 or any(c in sheet for c in "[]:*?/\\"):
        raise InvalidInput(f"Sheet name {sheet!r}: at most 31 characters, none of []:*?/\\.")
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet(sheet)
    ws.freeze_panes = "A2"
    ws.append(header)
    wkt_col = header.index("wkt") if "wkt" in header else -1
    cleaned = too_long = dropped_wkt = 0
    for r in rows:
        cells: list[Any] = []
        for i, v in enumerate(r):
            if isinstance(v, str):
                if ILLEGAL_CHARACTERS_RE.search(v):
                    v, cleaned = ILLEGAL_CHARACTERS_RE.sub("", v), cleaned + 1
                if len(v) > XLSX_CELL_MAX:
                    if i == wkt_col:
                        v, dropped_wkt = None, dropped_wkt + 1
                    else:
                        v, too_long = v[:XLSX_CELL_MAX], too_long + 1
                if isinstance(v, str) and v.startswith("="):
                    cell = WriteOnlyCell(ws, v)
                    cell.data_type = "s"  # text, not a formula
                    v = cell
            cells.append(v)
        ws.append(cells)
    wb.save(path)
    if dropped_wkt:
        warns.append(f"{dropped_wkt} territories are longer than an Excel cell holds "
                     f"({XLSX_CELL_MAX} characters) and were left out; export to CSV, "
                     "GeoPackage or GeoJSON to keep them.")
    if too_long:
        warns.append(f"{too_long} values longer than {XLSX_CELL_MAX} characters were cut.")
    if cleaned:
        warns.append(f"{cleaned} values held control characters Excel does not allow; "
                     "they were removed.")
