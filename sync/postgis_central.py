"""Where the central schema is, whether it is there, and the lock a push or pull holds on it."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlsplit

# the PostgreSQL dialect is loaded with this module (at the command's start-up), not by
# the first connection inside a push or pull (~20 ms of imports)
import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401
from sqlalchemy import create_engine, exc, text

from storage.backends import Location, is_pg_url, join_pg_url, split_pg_url
from storage.errors import ConflictError, GeoregError, InvalidInput, RegistryNotFound
from storage.registry import Registry

CONNECT_TIMEOUT = 10


class UpstreamUnavailable(GeoregError):
    """The central database cannot be reached (down, wrong address, refused)."""

    code = "upstream_unavailable"
    exit_code = 1
    http_status = 502


# --- locations -----------------------------------------------------------------------


def central_location(url: str, schema: str | None = None) -> str:
    """``url`` with ``schema`` put into its query (``?schema=S``) and a connect timeout."""
    if not is_pg_url(url):
        raise InvalidInput(
            f"--url {url!r} is not a PostgreSQL URL (postgresql://user@host:port/database)."
        )
    parts = split_pg_url(url)
    query = dict(parse_qsl(parts.query))
    if schema:
        query["schema"] = schema
    query.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    # TCP keepalives: a long push keeps one connection idle (the lock's); firewalls and
    # NAT routers drop connections silent for a few minutes
    for name, value in (("keepalives", "1"), ("keepalives_idle", "60"),
                        ("keepalives_interval", "10"), ("keepalives_count", "6")):
        query.setdefault(name, value)
    return join_pg_url(parts.scheme, parts, query)


def target_name(location: str) -> str:
    """The stable name of a central schema in ``sync_state`` (no user, no password)."""
    loc = Location.parse(location)
    parts = urlsplit(loc.url or "")
    query = dict(parse_qsl(parts.query))  # postgresql:///db?host=…&port=… names it there
    host = parts.hostname or query.get("host") or "localhost"
    port = parts.port or query.get("port")
    return f"postgis://{host}{f':{port}' if port else ''}{parts.path}?schema={loc.schema}"


def _short(target: str) -> str:
    return hashlib.sha1(target.encode()).hexdigest()[:12]


def _probe(location: str) -> tuple[bool, bool]:
    """(schema exists, holds a registry) — and a clear error when unreachable."""
    loc = Location.parse(location)
    engine = create_engine(loc.url or "", future=True)
    try:
        with engine.connect() as conn:
            schema = conn.execute(
                text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"),
                {"s": loc.schema},
            ).first()
            reg = conn.execute(
                text("SELECT to_regclass(format('%I.georeg_schema_version', CAST(:s AS text)))"),
                {"s": loc.schema},
            ).scalar()
            return schema is not None, reg is not None
    except exc.DBAPIError as error:
        msg = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        if re.search(r"password authentication failed|role .* does not exist|"
                     r"database .* does not exist|no pg_hba.conf entry|permission denied|"
                     r"no password supplied|password is required", msg):
            hint = (" (give the password: in the target's URL, with --user and "
                    "--password-stdin, or in ~/.pgpass)" if "password" in msg else "")
            raise InvalidInput(f"{loc.display()} refused the connection: {msg}{hint}") from error
        raise UpstreamUnavailable(f"Cannot reach {loc.display()}: {msg}") from error
    finally:
        engine.dispose()


def open_central(location: str, *, create: bool) -> tuple[Registry, bool]:
    """The central registry (upgraded to this schema version); (registry, created now)."""
    _schema, has_registry = _probe(location)
    if has_registry:
        return Registry.open(location), False
    if not create:
        raise RegistryNotFound(
            f"{Location.parse(location).display()} holds no registry yet: push to it first."
        )
    return Registry.create(location), True


@contextmanager
def exclusive(central: Registry, client: str) -> Iterator[None]:
    """One push or pull at a time per registry and central schema (a session-level
    advisory lock: a killed process releases it with its connection)."""
    key = int(hashlib.sha1(f"georeg-sync:{client}".encode()).hexdigest()[:15], 16)
    conn = central.engine.connect()
    try:
        # the lock's connection is idle for the whole push: a DBA's idle_session_timeout
        # (PostgreSQL 14+) would end it — and the lock with it — half-way
        conn.execute(text("SELECT set_config(name, '0', false) FROM pg_settings "
                          "WHERE name = 'idle_session_timeout'"))
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        conn.commit()
        if not got:
            raise ConflictError(
                "Another push or pull between this registry and the central schema is "
                "running; try again when it has finished."
            )
        try:
            yield
        finally:
            # a connection cut meanwhile (a firewall dropping idle connections) took the
            # lock with it: nothing to release, and the work done stands
            with contextlib.suppress(exc.DBAPIError):
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        with contextlib.suppress(exc.DBAPIError):
            conn.close()
