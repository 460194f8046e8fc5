"""Bad input gets an error naming the item and field, and loses nothing.

Every case runs the real command line against a registry holding the demo, and
checks the registry afterwards is exactly what it was: the same bytes for a
file, the same rows for a PostGIS schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from georeg.cli import main
from storage.registry import Registry
from tests.conftest import DEMO_DATA, DEMO_FILES

PAGE1 = json.loads((DEMO_DATA / "organisationUnits-page1.json").read_text())
LEVELS = DEMO_DATA / "filledOrganisationUnitLevels.json"


def snapshot(location: str) -> Any:
    """Bytes of a registry file, or every row of a PostGIS registry."""
    if not location.startswith("postgresql"):
        return hashlib.sha256(Path(location).read_bytes()).hexdigest()
    with Registry.open(location) as reg, reg.read() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = :s "
            "ORDER BY table_name"), {"s": reg.location.schema})]
        return {t: conn.execute(text(f'SELECT * FROM "{t}" ORDER BY 1')).all() for t in tables}


def page(units: list[dict[str, Any]]) -> dict[str, Any]:
    return {"pager": {"page": 1, "pageCount": 1, "total": len(units)},
            "organisationUnits": units}


ROOT = {"id": "root000001", "name": "Country", "level": 1, "path": "/root000001"}


def unit(uid: str, name: str | None, parent: str, level: int = 2) -> dict[str, Any]:
    u: dict[str, Any] = {"id": uid, "level": level, "parent": {"id": parent},
                         "path": f"/root000001/{uid}"}
    if name is not None:
        u["name"] = name
    return u


BAD_INPUTS = {
    "malformed JSON": ('{"organisationUnits": [{"id": "a", "name": "A"', 2,
                       r"not valid JSON \(line 1, column \d+"),
    "unknown parent": (page([ROOT, unit("aaaaaaaaaa1", "A", "zzzzzzzzzzz")]), 2,
                       r"item 2 \(id aaaaaaaaaa1\): parent 'zzzzzzzzzzz' not found"),
    "cycle": (page([ROOT, unit("aaaaaaaaaa1", "A", "aaaaaaaaaa2"),
                    unit("aaaaaaaaaa2", "B", "aaaaaaaaaa1")]), 5,
              r"2 units are their own ancestors.*aaaaaaaaaa1"),
    "duplicate source_ref": (page([ROOT, unit("aaaaaaaaaa1", "A", "root000001"),
                                   unit("aaaaaaaaaa1", "B", "root000001")]), 2,
                             r"item 3 \(id aaaaaaaaaa1\): source ref 'aaaaaaaaaa1' is used twice"),
    "missing name": (page([ROOT, unit("aaaaaaaaaa1", None, "root000001")]), 2,
                     r"item 2 \(id aaaaaaaaaa1\): field 'name' is missing"),
    # (a geometry that is not GeoJSON no longer refuses a DHIS2 file: the unit comes
    # without it, with a warning — test_export_and_parsing_safety)
    "not a DHIS2 document": ({"hello": "world"}, 2, r"not a DHIS2 organisationUnits"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_dhis2_input_is_refused_and_changes_nothing(
    case: str, location: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["demo", location]).exit_code == 0
    content, exit_code, message = BAD_INPUTS[case]
    bad = tmp_path / "bad.json"
    bad.write_text(content if isinstance(content, str) else json.dumps(content))
    before = snapshot(location)
    result = runner.invoke(main, ["import", location, str(bad), str(LEVELS), "--source", "SL",
                                  "--format", "dhis2-json"])
    assert result.exit_code == exit_code, result.output
    import re

    assert re.search(message, " ".join(result.output.split())), result.output
    assert "Traceback" not in result.output
    assert snapshot(location) == before


def test_a_good_import_after_a_bad_one_still_works(location: str, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["init", location]).exit_code == 0
    files = [str(f) for f in DEMO_FILES]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(page([ROOT, unit("aaaaaaaaaa1", "A", "nope")])))
    assert runner.invoke(main, ["import", location, str(bad), "--source", "SL"]).exit_code == 2
    ok = runner.invoke(main, ["import", location, *files, "--source", "SL", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["version"]["number"] == 1 and data["created"] == 1332 and data["rejected"] == 0


def big_page(n: int) -> dict[str, Any]:
    """A country with n facilities under 100 districts (cheap to build, slow enough to kill)."""
    units = [ROOT]
    for d in range(100):
        units.append(unit(f"dist{d:07d}", f"District {d}", "root000001"))
    for i in range(n):
        d = f"dist{i % 100:07d}"
        units.append({"id": f"fac{i:08d}", "name": f"Facility {i}", "level": 3,
                      "parent": {"id": d}, "geometry": {"type": "Point",
                      "coordinates": [10 + (i % 1000) / 1000, 5 + (i // 1000) / 1000]}})
    return page(units)


@pytest.mark.slow
def test_kill_9_during_a_large_import_leaves_no_partial_version(tmp_path: Path) -> None:
    reg_path = tmp_path / "reg.gpkg"
    CliRunner().invoke(main, ["demo", str(reg_path)])
    before = snapshot(str(reg_path))
    big = tmp_path / "big.json"
    big.write_text(json.dumps(big_page(300_000)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "georeg.cli", "import", str(reg_path), str(big), "--source", "Big"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
    )
    wal = Path(str(reg_path) + "-wal")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until rows are being written
        if wal.exists() and wal.stat().st_size > 4_000_000:
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    else:
        pytest.fail("the import never started writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with Registry.open(reg_path) as reg, reg.read() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        assert conn.execute(text("SELECT count(*) FROM data_source WHERE name = 'Big'")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM source_version")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM org_unit")).scalar() == 1332
    assert snapshot(str(reg_path)) == before
