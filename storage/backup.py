"""A consistent copy of a file registry, safe while ``georeg serve`` writes to it.

A GeoPackage or SpatiaLite registry is in WAL mode: what was committed lately (new
submissions, photos, users) can still be in ``REG-wal`` beside it, so copying the
file alone — with ``cp``, a file manager or a backup tool that skips open files —
loses it.  :class:`BackupJob` copies with SQLite's online backup API inside one read
transaction: the copy is the registry as it was at one instant, writers are not
blocked (WAL readers never block them), and it is done in steps, so it shows
progress and can be cancelled.  The result is one self-contained file (rollback
journal, no ``-wal`` needed), checked with ``PRAGMA quick_check``, written beside
the target and moved in only when complete, readable by its owner only (it holds
the users' password hashes, see docs/server.md).

A PostgreSQL registry is backed up with ``pg_dump``: :func:`backup_registry` says so.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from storage.backends import Location
from storage.errors import Cancelled, ConflictError, GeoregError, InvalidInput
from storage.jobs import Job

#: Pages copied per step (4 MiB with GeoPackage's 4 KiB pages): fine enough for a
#: progress bar, coarse enough that the steps cost nothing.
STEP_PAGES = 1024


class BackupJob(Job[dict[str, Any]]):
    """Copy the registry file ``source`` to ``out`` (see the module doc)."""

    title = "Backing up the registry"

    def __init__(self, source: Path, out: Path, step_pages: int = STEP_PAGES) -> None:
        super().__init__()
        self.source = Path(source)
        self.out = Path(out)
        self.step_pages = step_pages

    def execute(self) -> dict[str, Any]:
        part = self.out.with_name(f".{self.out.name}.part-{os.getpid()}")
        part.unlink(missing_ok=True)
        src = sqlite3.connect(f"file:{self.source}?mode=ro", uri=True, isolation_level=None)
        try:
            src.execute("BEGIN")  # one snapshot for every step, whatever writers do
            dst = sqlite3.connect(part)
            try:
                os.chmod(part, 0o600)

                def step(_status: int, remaining: int, total: int) -> None:
                    self.report(total - remaining, total, "Copying the registry")

                src.backup(dst, pages=self.step_pages, progress=step)
                self.report(message="Checking the copy")
                # one file, no -wal beside it: what a backup must be
                dst.execute("PRAGMA journal_mode = DELETE")
                problems = [r[0] for r in dst.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise GeoregError(f"The copy of {self.source} does not check out "
                                      f"({'; '.join(problems[:3])}); {self.out} was not "
                                      "written. Check the registry with 'georeg check'.")
                pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
                size = pages * int(dst.execute("PRAGMA page_size").fetchone()[0])
            finally:
                dst.close()
            src.execute("COMMIT")
        except sqlite3.Error as error:
            part.unlink(missing_ok=True)
            raise GeoregError(f"Backing up {self.source} failed: {error}; {self.out} was not "
                              "written.") from error
        except (Cancelled, GeoregError):
            part.unlink(missing_ok=True)
            raise
        finally:
            src.close()
        os.replace(part, self.out)
        return {"registry": str(self.source), "backup": str(self.out), "bytes": size,
                "pages": pages}


def backup_job(location: str | Path, out: str | Path, *, force: bool = False) -> BackupJob:
    """The job copying the registry at ``location`` to ``out``, after the checks that
    need no copying: a file registry that exists, an output that is not the registry
    (nor its ``-wal``/``-shm``) and is not there already unless ``force``."""
    where = Location.parse(location)
    if where.path is None:
        raise InvalidInput(
            f"{where.display()} is a PostgreSQL registry: back it up with PostgreSQL's own "
            f"tools, e.g. pg_dump --schema {where.schema} --format custom --file OUT DB "
            "(see docs/server.md, 'Backups').")
    source = where.path
    if not source.is_file():
        raise InvalidInput(f"{source}: no such registry file.")
    target = Path(out)
    if where.holds_file(target):
        raise InvalidInput(f"{target} is the registry itself (or one of its files); give "
                           "the backup another name. Nothing was written.")
    if target.is_dir():
        raise InvalidInput(f"{target} is a folder; give a file name for the backup.")
    if not target.parent.is_dir():
        raise InvalidInput(f"{target}: the folder {target.parent} does not exist.")
    if target.exists() and not force:  # a conflict (exit code 5), as for export and init
        raise ConflictError(f"{target} exists; give --force to replace it (the old file is "
                           "replaced only once the new copy is complete).")
    return BackupJob(source, target)
