"""The file formats Georeg reads and writes, and how a file's format is recognised.

Each format module offers ``read_file(path, opts) -> ImportPayload`` and/or
``write_file(data, out, opts) -> dict`` (see :mod:`sync.exchange`); formats that
take several files at once (one per level, DHIS2 pages) also offer ``read_files``.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from storage.errors import InvalidInput

#: format name → (module, what it is)
FORMATS: dict[str, tuple[str, str]] = {
    "iaso-gpkg": ("sync.formats.iaso_gpkg", "Iaso GeoPackage: one level-N-Type layer per type"),
    "geojson": ("sync.formats.geojson", "GeoJSON FeatureCollection with ref, name, parent_ref …"),
    "csv": ("sync.formats.tabular", "CSV, one row per unit (English or --iaso-headers)"),
    "xlsx": ("sync.formats.tabular", "Excel workbook, one row per unit"),
    "tree-csv": ("sync.formats.tree_csv", "Iaso tree-importer CSV + data dictionary (--data-dict)"),
    "vector": ("sync.formats.vector", "any vector file GDAL reads (Shapefile, GPKG, KML, FGB …)"),
    "dhis2-json": ("sync.dhis2_json", "DHIS2 Web API JSON (organisationUnits pages, levels …)"),
}
VECTOR_SUFFIXES = {".shp", ".zip", ".fgb", ".kml", ".kmz", ".gml", ".tab", ".mif", ".gdb",
                   ".sqlite", ".parquet"}


def available() -> list[str]:
    """The formats this installation has (every module present)."""
    return [name for name, (mod, _) in FORMATS.items() if importlib.util.find_spec(mod)]


def module(name: str) -> ModuleType:
    if name not in available():
        raise InvalidInput(
            f"Unknown or unavailable format {name!r}; formats here: {', '.join(available())}."
        )
    return importlib.import_module(FORMATS[name][0])


def _looks_like_dhis2(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8-sig") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    if '"FeatureCollection"' in head:
        return False
    if head.lstrip().startswith("["):  # /api/filledOrganisationUnitLevels is a bare list
        return True
    return any(key in head for key in ('"organisationUnits"', '"organisationUnitLevels"',
                                       '"organisationUnitGroups"', '"organisationUnitGroupSets"'))


def _gpkg_has_iaso_layers(path: Path) -> bool:
    """Whether a GeoPackage registers level-N-Type layers (read with SQLite: no GDAL)."""
    import sqlite3

    from sync.formats.gpkg_sql import open_readonly

    try:
        conn = open_readonly(path)
        try:
            names = [str(r[0]) for r in conn.execute("SELECT table_name FROM gpkg_contents")]
        finally:
            conn.close()
    except sqlite3.Error:
        return True  # unreadable files are the reader's to explain
    return any(name.startswith("level-") for name in names)


def detect(path: Path, *, data_dict: str | None = None, for_export: bool = False) -> str:
    """The format of a file from its name (and, for .json and .gpkg, a look inside)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "tree-csv" if data_dict else "csv"
    if suffix in (".xlsx", ".xlsm"):
        return "xlsx"
    if suffix == ".geojson":
        return "geojson"
    if suffix == ".json":
        if for_export or not _looks_like_dhis2(path):
            return "geojson"
        return "dhis2-json"
    if suffix == ".gpkg":
        if for_export or not path.exists() or _gpkg_has_iaso_layers(path):
            return "iaso-gpkg"
        return "vector"
    if suffix in VECTOR_SUFFIXES:
        return "vector"
    raise InvalidInput(
        f"{path.name}: cannot tell the format from the name; give --format "
        f"({', '.join(FORMATS)})."
    )
