"""Open, create and write to a registry: one place for transactions and edit context.

Every write goes through :meth:`Registry.write`, which takes the write lock up
front (SQLite ``BEGIN IMMEDIATE``), tells the database triggers who is writing
(origin, author, operation) so the change log can say so, and translates
database errors into :mod:`storage.errors`.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, exc, inspect, text

from storage.backends import BUSY_TIMEOUT_MS, Backend, Location, make_engine
from storage.errors import (
    ConflictError,
    GeoregError,
    InvalidInput,
    RegistryNotFound,
    SetupError,
    from_database_error,
)

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "georeg_schema_version"


def _ensure_postgis(conn: Connection, loc: Location) -> None:
    """PostGIS in the database, in ``public`` when Georeg installs it.

    Installed without a schema it would land in the first schema of the search path —
    the new registry's — where the next registry (another district pushing to its own
    schema) does not see it, and where dropping that registry drops PostGIS from under
    every other one."""
    if conn.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'postgis'").first():
        return
    try:
        with conn.begin_nested():
            conn.exec_driver_sql("CREATE EXTENSION postgis SCHEMA public")
    except exc.DBAPIError as error:
        first = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise SetupError(
            f"{loc.display()}: the database has no PostGIS and this role cannot install it "
            f"({first}). Ask its administrator to run: CREATE EXTENSION postgis;"
        ) from error


def _refuse_extension_schema(conn: Connection, loc: Location) -> None:
    """Never drop a schema that holds an extension: with CASCADE, PostGIS would go, and
    every geometry column of every other registry in the database with it."""
    held = conn.execute(text(
        "SELECT e.extname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE n.nspname = :s"), {"s": loc.schema}).scalars().all()
    if held:
        raise ConflictError(
            f"{loc.display()}: schema {loc.schema!r} holds the {', '.join(held)} "
            "extension, which other schemas use; it cannot be replaced. Ask the database "
            f"administrator to move it (ALTER EXTENSION {held[0]} SET SCHEMA public) first."
        )


def _alembic_config(conn: Connection) -> Any:
    from alembic.config import Config  # Alembic only when the schema must change

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest migration: the chain is linear and numbered (``0005_data_export.py``),
    so the highest number is the head — read from the file names, without loading
    Alembic on every open (a test checks Alembic agrees)."""
    numbers = [p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py")]
    return max(numbers)


def translate_db_error(error: BaseException, where: str | None = None) -> GeoregError:
    """A database error → the user's terms.  ``where``: the registry (file or schema)
    being written, named in the message when another program holds its write lock."""
    ours = from_database_error(error)
    if ours is not None:
        return ours
    msg = str(getattr(error, "orig", error)).strip().splitlines()[0]
    low = msg.lower()
    if _lock_busy(low):
        return _busy(where, low)
    if "unique" in low and "source_ref" in low:
        return ConflictError(f"Another unit in this version already has that source ref ({msg}).")
    if "unique" in low or "duplicate key" in low:
        return ConflictError(f"That would duplicate an existing record ({msg}).")
    if "foreign key" in low:
        return ConflictError(
            f"That would leave a reference pointing at nothing, such as a unit whose parent "
            f"does not exist ({msg})."
        )
    if "not null" in low or "check constraint" in low or "violates check" in low:
        return InvalidInput(f"A required value is missing or not allowed ({msg}).")
    return GeoregError(f"The database refused the change: {msg}")


def _lock_busy(low: str) -> bool:
    """Did the write give up waiting for another writer?  SQLite: ``database is locked``
    (after ``busy_timeout``); PostgreSQL: a ``lock_timeout`` or a deadlock."""
    return ("database is locked" in low or "database table is locked" in low
            or "lock timeout" in low or "deadlock detected" in low)


def _busy(where: str | None, low: str) -> ConflictError:
    """Not "the database refused the change": the edit itself was fine, the registry was
    busy.  A registry file takes one writer at a time, and QGIS with unsaved edits, a
    running ``georeg serve``, a long import or another georeg command can hold it."""
    waited = (f"; Georeg waited {BUSY_TIMEOUT_MS // 1000} s for it to finish"
              if "database is locked" in low or "database table is locked" in low else "")
    return ConflictError(
        f"Another program is writing to {where or 'the registry'} (another georeg command, "
        f"QGIS with an edit session open, a running 'georeg serve', or an import){waited}. "
        "Nothing was changed. Try again when it is done (in QGIS: save or discard the "
        "layer's edits)."
    )


class Registry:
    """A registry file or database: the entry point of the storage API."""

    def __init__(self, location: Location, engine: Engine) -> None:
        self.location = location
        self.engine = engine

    # --- opening -------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self.location.backend

    @classmethod
    def create(cls, location: str | Path, *, overwrite: bool = False) -> Registry:
        loc = Location.parse(location)
        if loc.path is not None:
            if loc.path.exists():
                if not overwrite:
                    raise ConflictError(
                        f"{loc.path} already exists. Choose another name, or pass --force "
                        "to replace it."
                    )
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(str(loc.path) + suffix).unlink(missing_ok=True)
            loc.path.parent.mkdir(parents=True, exist_ok=True)
            _new_sqlite_file(loc.path)
        reg = cls(loc, make_engine(loc))
        if loc.backend is Backend.POSTGIS:
            with reg.engine.begin() as conn:
                _ensure_postgis(conn, loc)
                if overwrite:
                    _refuse_extension_schema(conn, loc)
                    conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{loc.schema}" CASCADE')
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{loc.schema}"')
                if reg._current_revision(conn) is not None:
                    raise ConflictError(
                        f"{loc.display()} already holds a registry. Choose another schema "
                        "(?schema=NAME), or pass --force to replace it (the schema is dropped "
                        "with everything in it).")
        reg.upgrade()
        return reg

    @classmethod
    def open(cls, location: str | Path, *, upgrade: bool = True) -> Registry:
        loc = Location.parse(location)
        if loc.path is not None and not loc.path.exists():
            raise RegistryNotFound(
                f"No registry at {loc.path}. Create one with 'georeg init {loc.path}' "
                "(or 'georeg demo' for the Sierra Leone demo)."
            )
        reg = cls(loc, make_engine(loc))
        try:
            with reg.engine.connect() as conn:
                current = reg._current_revision(conn)
        except exc.DBAPIError as error:
            reg.close()
            raise RegistryNotFound(
                f"{loc.display()} could not be opened as a registry: {error.orig}"
            ) from error
        if current is None:
            reg.close()
            raise RegistryNotFound(
                f"{loc.display()} is not a Georeg registry (no schema version). "
                "Import it into a registry with 'georeg import' instead."
            )
        if upgrade and current != head_revision():
            reg.upgrade()
        return reg

    def _current_revision(self, conn: Connection) -> str | None:
        """The schema's migration (what Alembic keeps in ``georeg_schema_version``)."""
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        revisions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        if len(revisions) > 1:
            raise ConflictError(f"{self.location.display()}: the schema version table holds "
                                f"several versions ({', '.join(revisions)}); it was edited by hand.")
        return str(revisions[0]) if revisions else None

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (in one transaction)."""
        from alembic import command

        with self.engine.connect() as conn:
            conn.execution_options(georeg_write=True)
            with conn.begin():
                command.upgrade(_alembic_config(conn), "head")

    def schema_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return self._current_revision(conn)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- transactions ----------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(
        self,
        *,
        origin: str = "api",
        author: str | None = None,
        operation: str | None = None,
        audit: bool = True,
        dry_run: bool = False,
    ) -> Iterator[Connection]:
        """One unit of work: all of it lands, or none of it does.

        With ``dry_run`` the work runs to the end (so every check and trigger has its
        say) and is then rolled back: nothing is written.
        """
        author = author if author is not None else _default_author()
        operation = operation or uuidlib.uuid4().hex
        try:
            with self.engine.connect() as conn:
                conn.execution_options(georeg_write=True)
                transaction = conn.begin()
                try:
                    self._set_context(conn, origin, author, operation, audit)
                    yield conn
                    if dry_run:
                        transaction.rollback()
                    else:
                        self._clear_context(conn)
                        transaction.commit()
                except BaseException:
                    if transaction.is_active:
                        transaction.rollback()
                    raise
        except exc.DBAPIError as error:
            raise translate_db_error(error, self.location.display()) from error

    def _set_context(
        self, conn: Connection, origin: str, author: str | None, operation: str, audit: bool
    ) -> None:
        if self.backend is Backend.POSTGIS:
            conn.execute(
                text(
                    "SELECT set_config('georeg.origin', :o, true), "
                    "set_config('georeg.author', :a, true), "
                    "set_config('georeg.operation', :op, true), "
                    "set_config('georeg.audit', :au, true)"
                ),
                {"o": origin, "a": author or "", "op": operation, "au": "1" if audit else "0"},
            )
        else:
            conn.execute(
                text(
                    "INSERT OR REPLACE INTO edit_context (fid, origin, author, operation, audit) "
                    "VALUES (1, :o, :a, :op, :au)"
                ),
                {"o": origin, "a": author, "op": operation, "au": 1 if audit else 0},
            )

    def set_audit(self, conn: Connection, enabled: bool) -> None:
        """Switch per-row audit triggers off for a set-based load (and back on)."""
        if self.backend is Backend.POSTGIS:
            conn.execute(
                text("SELECT set_config('georeg.audit', :au, true)"), {"au": "1" if enabled else "0"}
            )
        else:
            conn.execute(
                text("UPDATE edit_context SET audit = :au WHERE fid = 1"), {"au": 1 if enabled else 0}
            )

    def _clear_context(self, conn: Connection) -> None:
        if self.backend is not Backend.POSTGIS:
            conn.execute(text("DELETE FROM edit_context WHERE fid = 1"))


#: page size of a new registry file.  SQLite's default (4 KiB) costs a registry import
#: about 10% more than 16 KiB (fewer pages, B-tree splits and WAL frames for the same
#: data; ``benchmarks/bench_import.py``); an existing file keeps its own.
SQLITE_PAGE_SIZE = 16384


def _new_sqlite_file(path: Path) -> None:
    """Create the empty database file with our page size, before anything is written."""
    db = sqlite3.connect(path)
    try:
        db.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        db.execute("PRAGMA journal_mode = WAL")  # writes the header: the size is set
    finally:
        db.close()


def _default_author() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name is not an error
        return None


def json_value(value: Any) -> Any:
    """JSON columns come back as text from SQLite and as objects from PostgreSQL."""
    if value is None or isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value
