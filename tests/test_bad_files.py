"""Bad files, through the real command line: a clear error naming where, and nothing changed.

Each case imports a broken file into a registry that holds the demo, then checks the
registry file has exactly the bytes it had.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from georeg.cli import main

DATA = Path(__file__).parent / "data" / "iaso_gpkg"


def make_truncated_gpkg(tmp: Path) -> Path:
    src = (DATA / "minimal.gpkg").read_bytes()
    out = tmp / "truncated.gpkg"
    out.write_bytes(src[: len(src) // 3])
    return out


def make_missing_column(tmp: Path) -> Path:
    out = tmp / "missing_column_name.gpkg"
    shutil.copy(DATA / "missing_column_name.gpkg", out)
    return out


def make_csv(tmp: Path, name: str, body: bytes) -> Path:
    out = tmp / name
    out.write_bytes(body)
    return out


CASES = {
    "truncated GeoPackage": (make_truncated_gpkg, r"truncated\.gpkg"),
    "missing required column": (make_missing_column,
                                r"missing_column_name\.gpkg.*level-3-DS.*'name'"),
    "latitude 200": (lambda t: make_csv(
        t, "lat.csv", b"ref,name,latitude,longitude\nA1,Alpha,200,10\n"),
        r"lat\.csv, row 2: field 'latitude' is 200"),
    "unknown parent ref": (lambda t: make_csv(
        t, "parent.csv", b"ref,name,parent_ref\nA1,Alpha,\nB1,Beta,ZZ9\n"),
        r"parent\.csv, row 3.*ZZ9"),
    "broken encoding": (lambda t: make_csv(
        t, "enc.csv", b"ref,name\nA1,Alpha\nB1,B\xe9ta\n"),
        r"enc\.csv, row 3.*name"),
    "polygon crossing itself": (lambda t: make_csv(
        t, "bowtie.csv", b"ref,name,wkt\nA1,Alpha,\"POLYGON ((0 0, 1 1, 1 0, 0 1, 0 0))\"\n"),
        r"bowtie\.csv, row 2: field 'territory' is not a valid polygon"),
    "empty file": (lambda t: make_csv(t, "empty.csv", b""), r"empty\.csv.*empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_file_is_refused_and_the_registry_is_unchanged(case: str, tmp_path: Path) -> None:
    reg = tmp_path / "reg.gpkg"
    runner = CliRunner()
    assert runner.invoke(main, ["demo", str(reg)]).exit_code == 0
    before = hashlib.sha256(reg.read_bytes()).hexdigest()
    make, message = CASES[case]
    bad = make(tmp_path)
    result = runner.invoke(main, ["import", str(reg), str(bad), "--source", "Field list"])
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert "Traceback" not in result.output
    assert hashlib.sha256(reg.read_bytes()).hexdigest() == before
