"""Backing up a registry while the LAN server writes to it.

The district data manager copies the registry every evening. With the server running,
recent work is still in ``REG-wal`` beside the file: a plain copy of the file misses it
(the field review found half a day's submissions missing from such a copy).
``georeg backup`` gives the registry as it was at one instant, in one checked file that
GDAL and Georeg open, while writers go on.
"""

from __future__ import annotations

import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from georeg.cli import main
from storage import units
from storage.backup import BackupJob
from storage.errors import Cancelled
from storage.registry import Registry
from tests.conftest import DEMO_FILES


def _units(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM org_unit").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def busy_registry(tmp_path: Path) -> tuple[Path, int]:
    """The demo registry with 30 units added while another connection stays open (as
    the server's does): they are committed, and still only in the -wal file."""
    from sync.dhis2_json import import_dhis2_files

    path = tmp_path / "district.gpkg"
    with Registry.create(path) as reg:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
    holder = sqlite3.connect(path)  # the server's connection: no checkpoint on close
    holder.execute("SELECT count(*) FROM org_unit").fetchone()
    with Registry.open(path) as reg:
        for i in range(30):
            units.add_unit(reg, "SL", name=f"New CHP {i}", parent="O6uvpzGd5pu")
    assert Path(f"{path}-wal").stat().st_size > 0
    total = _units(path)
    yield path, total
    holder.close()


def test_backup_has_what_a_file_copy_misses(busy_registry: tuple[Path, int],
                                            tmp_path: Path) -> None:
    path, total = busy_registry
    shutil.copy(path, tmp_path / "copied.gpkg")  # what 'cp' or a file manager does
    assert _units(tmp_path / "copied.gpkg") < total

    out = tmp_path / "backups" / "district-evening.gpkg"
    out.parent.mkdir()
    res = CliRunner().invoke(main, ["backup", str(path), str(out)])
    assert res.exit_code == 0, res.output
    assert "Backed up" in res.output and "checked" in res.output
    assert _units(out) == total
    assert not Path(f"{out}-wal").exists()  # one self-contained file
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds password hashes
    assert list(out.parent.iterdir()) == [out]  # no part file left
    with Registry.open(out) as copy:  # Georeg and GDAL open it as the registry it was
        with copy.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM org_unit WHERE name LIKE "
                                     "'New CHP %'")).scalar_one() == 30
    info = subprocess.run(["ogrinfo", "-ro", "-so", str(out), "org_unit"],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and f"Feature Count: {total}" in info.stdout, info.stderr


def test_a_backup_while_someone_writes_is_one_instant(tmp_path: Path) -> None:
    """A writer commits all the while: the backup is neither torn nor endless."""
    path = tmp_path / "busy.gpkg"
    Registry.create(path).close()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE scratch (id INTEGER PRIMARY KEY, b BLOB)")
    db.executemany("INSERT INTO scratch (b) VALUES (randomblob(4000))", [()] * 5000)
    db.commit()
    db.close()
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], timeout=30)\n"
        "for i in range(1500):\n"
        "    c.execute('INSERT INTO scratch (b) VALUES (randomblob(4000))'); c.commit()\n"),
        str(path)])
    try:
        job = BackupJob(path, tmp_path / "copy.gpkg", step_pages=64)
        steps: list[int] = []
        job.on_progress(lambda p: steps.append(p.done))
        result = job.run()
    finally:
        writer.wait(timeout=120)
    copy = sqlite3.connect(result["backup"])
    rows = copy.execute("SELECT count(*) FROM scratch").fetchone()[0]
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    copy.close()
    assert 5000 <= rows <= 6500 and len(steps) > 10  # in steps, with progress


def test_refusals_leave_everything_as_it_was(busy_registry: tuple[Path, int],
                                            tmp_path: Path) -> None:
    path, _total = busy_registry
    def run(*args: str) -> tuple[int, str]:
        res = CliRunner().invoke(main, list(args))
        return res.exit_code, " ".join(res.output.split())

    same = run("backup", str(path), str(path))
    assert same[0] == 2 and "is the registry itself" in same[1]
    wal = run("backup", str(path), f"{path}-wal")
    assert wal[0] == 2 and "is the registry itself" in wal[1]
    old = tmp_path / "old.gpkg"
    old.write_bytes(b"yesterday")
    again = run("backup", str(path), str(old))
    assert again[0] == 5 and "--force" in again[1]  # a conflict, as docs/cli.md says
    assert old.read_bytes() == b"yesterday"
    assert run("backup", str(path), str(old), "--force")[0] == 0
    assert _units(old) == _total
    nowhere = run("backup", str(path), str(tmp_path / "no" / "such" / "b.gpkg"))
    assert nowhere[0] == 2 and "does not exist" in nowhere[1]
    pg = run("backup", "postgresql://u@127.0.0.1:9/db?schema=s", str(tmp_path / "x"))
    assert pg[0] == 2 and "pg_dump" in pg[1]


def test_a_cancelled_backup_writes_nothing(busy_registry: tuple[Path, int],
                                           tmp_path: Path) -> None:
    path, _total = busy_registry
    out = tmp_path / "b.gpkg"
    job = BackupJob(path, out)
    job.on_progress(lambda p: job.cancel())
    with pytest.raises(Cancelled):
        job.run()
    assert not out.exists() and not list(tmp_path.glob(".b.gpkg.part-*"))
