"""Pick the storage backend from the registry location, once, in one factory.

``*.gpkg`` → OGC GeoPackage (the default), ``*.sqlite`` → SpatiaLite,
``postgresql://…`` → PostGIS.  All connection set-up lives in ``connect``
listeners so every connection of an engine behaves the same.
"""

from __future__ import annotations

import enum
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

from sqlalchemy import Engine, create_engine, event

from storage.errors import InvalidInput, SetupError

BUSY_TIMEOUT_MS = 30_000
SPATIALITE_HELP = (
    "Georeg needs the SpatiaLite extension and a Python that may load SQLite extensions. "
    "On Debian: 'apt-get install libsqlite3-mod-spatialite' and run Georeg from the "
    "virtualenv built on /usr/bin/python3 ('make setup' does both). Python builds made "
    "without --enable-loadable-sqlite-extensions (pyenv's default) cannot load it."
)


class Backend(enum.Enum):
    GEOPACKAGE = "gpkg"
    SPATIALITE = "spatialite"
    POSTGIS = "postgis"

    @property
    def is_sqlite(self) -> bool:
        return self is not Backend.POSTGIS


@dataclass(frozen=True)
class Location:
    """Where a registry lives: a file path or a PostgreSQL URL (+ schema)."""

    backend: Backend
    path: Path | None = None
    url: str | None = None
    schema: str = "public"

    @classmethod
    def parse(cls, location: str | Path) -> Location:
        text = str(location)
        if is_pg_url(text):
            parts = split_pg_url(text)
            query = dict(parse_qsl(parts.query))
            schema = check_schema_name(query.pop("schema", "public"))
            scheme = "postgresql+psycopg"
            url = join_pg_url(scheme, parts, query)
            return cls(Backend.POSTGIS, url=url, schema=schema)
        path = Path(text)
        suffix = path.suffix.lower()
        if suffix == ".gpkg":
            return cls(Backend.GEOPACKAGE, path=path)
        if suffix in (".sqlite", ".spatialite", ".db"):
            return cls(Backend.SPATIALITE, path=path)
        raise InvalidInput(
            f"Cannot tell the registry kind from {text!r}: use a path ending in .gpkg "
            "(GeoPackage), .sqlite (SpatiaLite) or a postgresql:// URL."
        )

    def display(self) -> str:
        """The location with any password removed, safe to print."""
        if self.path is not None:
            return str(self.path)
        parts = urlsplit(self.url or "")
        netloc = parts.netloc
        if "@" in netloc:
            creds, host = netloc.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            netloc = f"{user}@{host}"
        # (connection tuning — timeouts, keepalives — is not part of where it is)
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query)
                           if k not in ("connect_timeout", "keepalives", "keepalives_idle",
                                        "keepalives_interval", "keepalives_count")])
        shown = f"postgresql://{netloc}{parts.path}" + (f"?{query}" if query else "")
        return shown + ("" if self.schema == "public" else f" (schema {self.schema})")

    def holds_file(self, target: Path) -> bool:
        """Whether ``target`` is this file registry or one of its SQLite companions
        (``-wal``, ``-shm``, ``-journal``): what a command writing a file (an export, a
        backup) must never write over."""
        import os

        if self.path is None:
            return False
        for own in (Path(f"{self.path}{suffix}") for suffix in ("", "-wal", "-shm",
                                                                 "-journal")):
            if target.resolve() == own.resolve() or (
                    target.exists() and own.exists() and os.path.samefile(target, own)):
                return True
        return False


def is_pg_url(text: str | None) -> bool:
    """Whether ``text`` is a PostgreSQL URL (postgres://, postgresql://, +driver)."""
    return bool(re.match(r"^postgres(ql)?(\+\w+)?://", text or ""))


def check_schema_name(schema: str) -> str:
    """``schema`` when it is a plain SQL identifier PostgreSQL keeps whole, else a clear
    error (a longer name would be cut to 63 characters, silently)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
        raise InvalidInput(
            f"Schema name {schema!r} is not a plain SQL identifier: a schema name is "
            "letters, digits and _ (not starting with a digit), at most 63 characters — "
            "e.g. district_bo.")
    return schema


_URL_HELP = ("percent-encode it in the URL (@ is %40, # is %23, / is %2F, ? is %3F, "
             "% is %25), or keep the password out of the URL: ~/.pgpass, or --target NAME "
             "with the URL in the secrets file")


def split_pg_url(text: str) -> SplitResult:
    """A PostgreSQL URL split into its parts, with a password typed as it is — ``@`` in
    it included — encoded as a URL needs it; a clear error for what cannot be told apart
    (``#``, ``/`` or ``?`` in a password) and never the password in a message."""
    scheme, _, rest = text.partition("://")
    if "#" in rest:
        raise InvalidInput(f"A PostgreSQL URL cannot hold '#' (a password with one?): {_URL_HELP}.")
    # the user information ends at the last '@' (a password may hold '@', '/' or '?'),
    # unless that '@' is in a query parameter's value
    at = rest.rfind("@")
    query_at = rest.find("?")
    if at != -1 and query_at != -1 and "=" in rest[query_at:at]:
        at = rest.rfind("@", 0, query_at)
    authority_end = len(rest)
    for sep in "/?":
        end = rest.find(sep, at + 1)
        if end != -1:
            authority_end = min(authority_end, end)
    authority, tail = rest[:authority_end], rest[authority_end:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, colon, password = userinfo.partition(":")
        if "/" in user or "?" in user:
            raise InvalidInput(f"The user name in a PostgreSQL URL has '/' or '?': {_URL_HELP}.")
        authority = (f"{quote(unquote(user), safe='')}{colon}"
                     f"{quote(unquote(password), safe='')}@{host}")
    else:
        host = authority
    try:
        parts = urlsplit(f"{scheme}://{authority}{tail}")
    except ValueError as error:  # e.g. "Invalid IPv6 URL": a '[' without its ']'
        raise InvalidInput(f"postgresql://{host}…: {error} (an IPv6 address is written "
                           "in brackets, [::1]).") from None
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise InvalidInput(
            f"The port in postgresql://{host.rpartition(':')[0] or host}:… is not a port "
            f"number, 1 to 65535 (or the password has '/' or '?'): {_URL_HELP}."
        ) from None
    return parts


def join_pg_url(scheme: str, parts: SplitResult, query: dict[str, str]) -> str:
    """The URL of ``parts`` with ``scheme`` and ``query`` (not ``urlunsplit``: it drops the
    ``//`` of a URL with no host, ``postgresql:///registry`` on the local socket)."""
    return f"{scheme}://{parts.netloc}{parts.path}" + (f"?{urlencode(query)}" if query else "")


def load_spatialite(dbapi_conn: sqlite3.Connection) -> None:
    """Load mod_spatialite or explain how to get it."""
    if not hasattr(dbapi_conn, "enable_load_extension"):
        raise SetupError(SPATIALITE_HELP)
    try:
        dbapi_conn.enable_load_extension(True)
        dbapi_conn.load_extension("mod_spatialite")
        dbapi_conn.enable_load_extension(False)
    except (sqlite3.OperationalError, AttributeError) as exc:
        raise SetupError(f"{SPATIALITE_HELP} (SQLite said: {exc})") from exc


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    load_spatialite(dbapi_conn)
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA recursive_triggers = OFF")
    cur.close()


def _sqlite_checkin(dbapi_conn: Any, _record: Any) -> None:
    """A connection back in the pool: files a bulk load attached (``FileRows``) are
    detached — SQLite refuses that inside the transaction that read them."""
    if dbapi_conn is None:  # invalidated
        return
    try:
        names = [row[1] for row in dbapi_conn.execute("PRAGMA database_list")]
        for name in names:
            if name not in ("main", "temp"):
                dbapi_conn.execute(f'DETACH DATABASE "{name}"')
    except sqlite3.Error:
        pass  # still in use somewhere: the next load attaches under another name


def _sqlite_begin(conn: Any) -> None:
    # pysqlite runs in autocommit mode (isolation_level=None); we emit BEGIN
    # ourselves so DDL is transactional and writers take the lock up front.
    write = conn.get_execution_options().get("georeg_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


#: sets a PostGIS registry's ``search_path``: its schema, ``public``, then the schema of
#: the ``postgis`` extension when that is another one (``CREATE EXTENSION postgis SCHEMA
#: postgis`` is a common DBA choice)
PG_SEARCH_PATH = (
    "SELECT set_config('search_path', format('%%I, public', CAST(%(s)s AS text)) || "
    "COALESCE((SELECT ', ' || quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n "
    "ON n.oid = e.extnamespace WHERE e.extname = 'postgis' "
    "AND n.nspname NOT IN (CAST(%(s)s AS text), 'public')), ''), false)"
)


def make_engine(location: Location) -> Engine:
    """One engine per registry location, configured for its backend."""
    if location.backend is Backend.POSTGIS:
        assert location.url is not None
        schema = location.schema
        engine = create_engine(location.url, pool_pre_ping=True, future=True)

        @event.listens_for(engine, "connect")
        def _pg_connect(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                # the registry's schema, public, and PostGIS's schema where a DBA put it
                # elsewhere (one round trip, as the plain SET was)
                cur.execute(PG_SEARCH_PATH, {"s": schema})
            dbapi_conn.commit()

        engine.dialect.georeg_backend = Backend.POSTGIS  # type: ignore[attr-defined]
        return engine

    assert location.path is not None
    engine = create_engine(
        f"sqlite:///{location.path}",
        # (uri: a bulk load attaches files read-only by ``file:`` URI; a plain path is
        # still a plain path)
        connect_args={"isolation_level": None, "check_same_thread": False, "uri": True},
        future=True,
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    event.listen(engine, "checkin", _sqlite_checkin)
    engine.dialect.georeg_backend = location.backend  # type: ignore[attr-defined]
    return engine
