"""The ministry's PostgreSQL as it really is, not as the test cluster is.

The DBA gives Georeg an ordinary role, not a superuser: ``CREATE`` on the database (for
the schema) and PostGIS already installed.  People type passwords with ``@`` in URLs.
PostGIS may not be installed yet (Georeg installs it, in ``public``, so that every
district's schema sees it and none takes it along when dropped), or a DBA may have put
it in a schema of its own.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from sqlalchemy import text

from storage import tree, units
from storage.errors import ConflictError, InvalidInput, NotFound, SetupError
from storage.registry import Registry
from sync.dhis2_json import import_dhis2_files
from sync.postgis_sync import pull, push, status
from tests.conftest import DEMO_FILES

pytestmark = pytest.mark.postgis

BO_CHIEFDOM = "vWbkYPRmKyS"  # Baoma chiefdom, in Bo
WESTERN_AREA = "at6UHUQatSo"
FACILITY = "kbGqmM6ZWWV"  # Allen Town Health Post, Western Area / Freetown
ROLE = "georeg_district"


@pytest.fixture
def role_url(postgis_url: str) -> Iterator[str]:
    with psycopg.connect(postgis_url, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
        if not exists:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO {ROLE}')
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s",
                            (ROLE,)).fetchone() == (False,)
    yield postgis_url.replace("://postgres@", f"://{ROLE}@", 1)


def test_an_ordinary_role_pushes_and_pulls(role_url: str, postgis_url: str,
                                           tmp_path: Path) -> None:
    schema = f"role_{uuid.uuid4().hex[:10]}"
    reg = Registry.create(tmp_path / "district.gpkg")
    try:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        first = push(reg, role_url, schema)
        assert first["units_inserted"] == 1332 and not first["warnings"]
        units.move_unit(reg, "SL", BO_CHIEFDOM, WESTERN_AREA)
        second = push(reg, role_url, schema)
        assert second["units_moved"] == 1
        assert pull(reg, role_url, schema)["conflict_count"] == 0
        assert status(reg, role_url, schema, compare=True)["equal"]
        with psycopg.connect(postgis_url) as conn:
            owner = conn.execute("SELECT nspowner::regrole::text FROM pg_namespace "
                                 "WHERE nspname = %s", (schema,)).fetchone()
        assert owner == (ROLE,)
    finally:
        reg.close()
        _drop_schema(postgis_url, schema)


def test_the_url_forms_people_type_reach_the_server(role_url: str, postgis_url: str,
                                                    tmp_path: Path) -> None:
    """A password typed with its '@' (the server here trusts loopback, so only the host
    and user matter: before, the host was read as 'ss@127.0.0.1'), and a URL with no
    host whose host and port come as parameters, as for a local socket."""
    schema = f"role_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(role_url)
    typed = f"postgresql://{ROLE}:p@ss/w?rd@{parts.hostname}:{parts.port}{parts.path}"
    hostless = f"postgresql://{parts.path}?host={parts.hostname}&port={parts.port}&user={ROLE}"
    reg = Registry.create(tmp_path / "district.gpkg")
    try:
        import_dhis2_files(reg, DEMO_FILES, source="SL")
        assert push(reg, typed, schema)["units_inserted"] == 1332
        state = status(reg, hostless, schema, compare=True)
        assert state["equal"] and state["pushed_before"]  # the same central, by name too
    finally:
        reg.close()
        _drop_schema(postgis_url, schema)


@pytest.fixture
def bare_db(postgis_url: str) -> Iterator[str]:
    """A new database of the cluster, without PostGIS."""
    name = f"bare_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgis_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgis_url.rpartition("/")[0] + f"/{name}"
    with psycopg.connect(postgis_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _postgis_schema(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extnamespace::regnamespace::text FROM pg_extension "
                           "WHERE extname = 'postgis'").fetchone()
    return None if row is None else str(row[0])


def _demo(path: Path) -> Registry:
    reg = Registry.create(path)
    import_dhis2_files(reg, DEMO_FILES, source="SL")
    return reg


def _drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def _district(url: str, tmp_path: Path) -> Iterator[tuple[Registry, str]]:
    """Bo district's registry (the demo) and a schema of its own on the central server,
    dropped afterwards."""
    schema = f"role_{uuid.uuid4().hex[:10]}"
    reg = _demo(tmp_path / "bo.gpkg")
    try:
        yield reg, schema
    finally:
        reg.close()
        _drop_schema(url, schema)


def test_two_districts_share_the_postgis_georeg_installs(bare_db: str, tmp_path: Path
                                                        ) -> None:
    bo, kenema = _demo(tmp_path / "bo.gpkg"), _demo(tmp_path / "kenema.gpkg")
    try:
        assert push(bo, bare_db, "district_bo")["units_inserted"] == 1332
        assert _postgis_schema(bare_db) == "public"  # not district_bo
        assert push(kenema, bare_db, "district_kenema")["units_inserted"] == 1332
        with psycopg.connect(bare_db, autocommit=True) as conn:
            conn.execute("DROP SCHEMA district_bo CASCADE")  # Bo's registry retired
        assert _postgis_schema(bare_db) == "public"
        assert status(kenema, bare_db, "district_kenema", compare=True)["equal"]
    finally:
        bo.close()
        kenema.close()


def test_postgis_in_a_schema_of_its_own(bare_db: str, tmp_path: Path) -> None:
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA gis")
        conn.execute("CREATE EXTENSION postgis SCHEMA gis")
    reg = _demo(tmp_path / "bo.gpkg")
    try:
        assert push(reg, bare_db, "district_bo")["units_inserted"] == 1332
        units.move_unit(reg, "SL", BO_CHIEFDOM, WESTERN_AREA)
        assert push(reg, bare_db, "district_bo")["units_moved"] == 1
        assert status(reg, bare_db, "district_bo", compare=True)["equal"]
        assert _postgis_schema(bare_db) == "gis"
    finally:
        reg.close()


def test_a_role_that_cannot_install_postgis_is_told_what_to_ask(
        bare_db: str, role_url: str, tmp_path: Path) -> None:
    as_role = bare_db.replace("://postgres@", f"://{ROLE}@", 1)
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute(f"GRANT CREATE ON DATABASE {bare_db.rpartition('/')[2]} TO {ROLE}")
    reg = _demo(tmp_path / "bo.gpkg")
    try:
        with pytest.raises(SetupError, match="CREATE EXTENSION postgis"):
            push(reg, as_role, "district_bo")
        with psycopg.connect(bare_db) as conn:
            assert conn.execute("SELECT to_regnamespace('district_bo')").fetchone() == (None,)
    finally:
        reg.close()


def test_a_schema_holding_postgis_is_never_dropped(bare_db: str) -> None:
    """Registries made by earlier versions on a database without PostGIS have it in their
    own schema: replacing such a registry would drop PostGIS from under the others."""
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA district_old")
        conn.execute("CREATE EXTENSION postgis SCHEMA district_old")
    with pytest.raises(ConflictError, match="ALTER EXTENSION postgis SET SCHEMA public"):
        Registry.create(f"{bare_db}?schema=district_old", overwrite=True)
    assert _postgis_schema(bare_db) == "district_old"


def test_a_dba_idle_session_timeout_does_not_fail_a_push(bare_db: str, tmp_path: Path
                                                         ) -> None:
    """The push holds its lock on a connection that stays idle while the work goes on;
    a DBA's idle_session_timeout (PostgreSQL 14+) ended it, and the push — complete —
    reported a failure (and the lock was gone half-way)."""
    name = bare_db.rpartition("/")[2]
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION postgis")
        conn.execute(f"ALTER DATABASE {name} SET idle_session_timeout = '1s'")
    reg = _demo(tmp_path / "bo.gpkg")
    try:
        slow = push(reg, bare_db, "district_bo",
                    progress=lambda _info: time.sleep(1.5))  # a slow link, say
        assert slow["units_inserted"] == 1332
        units.move_unit(reg, "SL", BO_CHIEFDOM, WESTERN_AREA)
        assert push(reg, bare_db, "district_bo", progress=lambda _i: time.sleep(1.5)
                    )["units_moved"] == 1
        assert status(reg, bare_db, "district_bo", compare=True)["equal"]
    finally:
        reg.close()


def test_an_edit_session_left_open_for_hours_is_pulled_when_it_commits(
        postgis_url: str, tmp_path: Path) -> None:
    """A QGIS edit session (or a psql BEGIN) on the central schema holds a change-log id
    until it commits.  An id missing for over an hour was taken for a rolled-back
    transaction and skipped for good: the edit was never pulled, and the next push
    overwrote it.  While its transaction is open, the pull waits at the gap."""
    schema = f"role_{uuid.uuid4().hex[:10]}"
    reg = _demo(tmp_path / "bo.gpkg")
    qgis = psycopg.connect(postgis_url)
    try:
        push(reg, postgis_url, schema)
        qgis.execute(f'SET search_path TO "{schema}", public')
        qgis.execute("UPDATE org_unit SET name = 'Corrected in QGIS' WHERE source_ref = %s",
                     (BO_CHIEFDOM,))  # not committed yet
        with psycopg.connect(postgis_url, autocommit=True) as other:
            other.execute(f'SET search_path TO "{schema}", public')
            other.execute("UPDATE org_unit SET code = 'W1' WHERE source_ref = %s",
                          (WESTERN_AREA,))
            # …and two hours go by
            other.execute("UPDATE change_log SET at = CAST(now() - interval '2 hours' AS text)"
                          " WHERE fid = (SELECT max(fid) FROM change_log)")
        first = pull(reg, postgis_url, schema)
        assert first["conflict_count"] == 0
        qgis.commit()
        pull(reg, postgis_url, schema)
        with reg.read() as conn:
            name = conn.execute(text("SELECT name FROM org_unit WHERE source_ref = :r"),
                                {"r": BO_CHIEFDOM}).scalar()
            code = conn.execute(text("SELECT code FROM org_unit WHERE source_ref = :r"),
                                {"r": WESTERN_AREA}).scalar()
        assert (name, code) == ("Corrected in QGIS", "W1")
        assert status(reg, postgis_url, schema, compare=True)["equal"]
    finally:
        qgis.close()
        reg.close()
        _drop_schema(postgis_url, schema)


def test_a_ref_taken_by_another_unit_does_not_block_the_sync(postgis_url: str,
                                                             tmp_path: Path) -> None:
    """A facility deleted and made again with its DHIS2 id, two units swapping refs, a
    feature deleted in QGIS and digitised again with the same ref: each blocked every
    push (or pull) after it on the version's unique refs."""
    with _district(postgis_url, tmp_path) as (reg, schema):
        push(reg, postgis_url, schema)
        old = units.get_unit(reg, "SL", FACILITY)
        units.delete_unit(reg, "SL", FACILITY)
        units.add_unit(reg, "SL", name="Rebuilt CHP", parent=old["parent_uuid"],
                       source_ref=FACILITY)
        units.edit_unit(reg, "SL", BO_CHIEFDOM, source_ref="SWAP_TMP")
        units.edit_unit(reg, "SL", WESTERN_AREA, source_ref=BO_CHIEFDOM)
        units.edit_unit(reg, "SL", "SWAP_TMP", source_ref=WESTERN_AREA)
        sent = push(reg, postgis_url, schema)
        assert sent["units_deleted"] == 1 and sent["units_inserted"] == 1
        assert status(reg, postgis_url, schema, compare=True)["equal"]
        with psycopg.connect(postgis_url, autocommit=True) as qgis:  # delete, digitise again
            qgis.execute(f'SET search_path TO "{schema}", public')
            row = qgis.execute("SELECT parent_key, version_id FROM org_unit "
                               "WHERE source_ref = %s", (FACILITY,)).fetchone()
            assert row is not None
            qgis.execute("DELETE FROM org_unit WHERE source_ref = %s", (FACILITY,))
            qgis.execute("INSERT INTO org_unit (version_id, parent_key, name, source_ref, "
                         "validation_status) VALUES (%s, %s, 'Digitised again', %s, 'valid')",
                         (row[1], row[0], FACILITY))
        pulled = pull(reg, postgis_url, schema)
        assert pulled["conflict_count"] == 0
        assert units.get_unit(reg, "SL", FACILITY)["name"] == "Digitised again"
        assert status(reg, postgis_url, schema, compare=True)["equal"]


def test_a_second_registry_pushing_to_the_same_schema_is_stopped(postgis_url: str,
                                                                 tmp_path: Path) -> None:
    """Two districts given the same schema by mistake, both with the source SL v1: the
    second's first push deleted all of the first's units.  Now it stops, saying why, and
    the first district's central copy is untouched."""
    schema = f"role_{uuid.uuid4().hex[:10]}"
    bo, kenema = _demo(tmp_path / "bo.gpkg"), _demo(tmp_path / "kenema.gpkg")
    try:
        push(bo, postgis_url, schema)
        with pytest.raises(ConflictError, match="another registry pushing the same source"):
            push(kenema, postgis_url, schema)
        assert status(bo, postgis_url, schema, compare=True)["equal"]
        assert push(bo, postgis_url, schema)["units_deleted"] == 0
        # told to, the second registry makes the central version its own
        assert push(kenema, postgis_url, schema, prefer="local")["units_inserted"] == 1332
        assert status(kenema, postgis_url, schema, compare=True)["equal"]
    finally:
        bo.close()
        kenema.close()
        _drop_schema(postgis_url, schema)


def test_the_same_central_by_another_address_overwrites_no_central_edit(
        postgis_url: str, tmp_path: Path) -> None:
    """The ministry's server renamed (or 'localhost' typed for '127.0.0.1'): a new sync
    identity that has never pulled.  A correction made centrally in QGIS was silently
    overwritten by the everything-again push; now it is a conflict, and nothing that
    exists only centrally is deleted."""
    schema = f"role_{uuid.uuid4().hex[:10]}"
    reg = _demo(tmp_path / "bo.gpkg")
    alias = postgis_url.replace("127.0.0.1", "localhost")
    assert alias != postgis_url
    try:
        push(reg, postgis_url, schema)
        with psycopg.connect(postgis_url, autocommit=True) as qgis:
            qgis.execute(f'SET search_path TO "{schema}", public')
            qgis.execute("UPDATE org_unit SET name = 'Corrected at the ministry' "
                         "WHERE source_ref = %s", (FACILITY,))
        again = push(reg, alias, schema)
        assert again["conflict_count"] >= 1 and again["units_deleted"] == 0
        assert {c["uuid"] for c in again["conflicts"]} == {units.get_unit(reg, "SL", FACILITY)[
            "uuid"]}
        with psycopg.connect(postgis_url) as conn:
            conn.execute(f'SET search_path TO "{schema}", public')
            assert conn.execute("SELECT name FROM org_unit WHERE source_ref = %s",
                                (FACILITY,)).fetchone() == ("Corrected at the ministry",)
    finally:
        reg.close()
        _drop_schema(postgis_url, schema)


def _dump(url: str, schema: str, path: Path) -> None:
    from tests.pg_cluster import find_bindir

    parts = urlsplit(url)
    subprocess.run([str(find_bindir() / "pg_dump"), "-h", str(parts.hostname), "-p",
                    str(parts.port), "-U", "postgres", "-n", schema, "-Fc", "-f", str(path),
                    parts.path.lstrip("/")], check=True, capture_output=True)


def _restore(url: str, schema: str, path: Path) -> None:
    from tests.pg_cluster import find_bindir

    parts = urlsplit(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    subprocess.run([str(find_bindir() / "pg_restore"), "-h", str(parts.hostname), "-p",
                    str(parts.port), "-U", "postgres", "-d", parts.path.lstrip("/"),
                    str(path)], check=True, capture_output=True)


def test_a_central_schema_restored_from_a_dump_is_caught_up(postgis_url: str,
                                                           tmp_path: Path) -> None:
    """The DBA restores last week's dump: the district's later pushes are missing
    centrally, and edits made there since reuse change-log ids the district had already
    pulled past.  The pull says so and changes nothing; the push sends everything again,
    holding what differs; after that, both sides agree again."""
    with _district(postgis_url, tmp_path) as (reg, schema):
        push(reg, postgis_url, schema)
        _dump(postgis_url, schema, tmp_path / "central.dump")
        units.edit_unit(reg, "SL", BO_CHIEFDOM, name="Renamed after the dump")
        push(reg, postgis_url, schema)
        pull(reg, postgis_url, schema)
        _restore(postgis_url, schema, tmp_path / "central.dump")
        with pytest.raises(ConflictError, match="restored from a backup"):
            pull(reg, postgis_url, schema)
        again = push(reg, postgis_url, schema)
        assert any("made anew, or restored" in w for w in again["warnings"])
        # the rename the dump lacks is sent again: central held only what this registry
        # had sent (nobody else wrote that unit there), so it is no conflict
        assert again["conflict_count"] == 0
        assert status(reg, postgis_url, schema, compare=True)["equal"]
        assert pull(reg, postgis_url, schema)["conflict_count"] == 0


def test_a_central_schema_made_anew_or_a_version_deleted_there_is_sent_whole(
        postgis_url: str, tmp_path: Path) -> None:
    with _district(postgis_url, tmp_path) as (reg, schema):
        push(reg, postgis_url, schema)
        with psycopg.connect(postgis_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        units.edit_unit(reg, "SL", BO_CHIEFDOM, name="Renamed")
        anew = push(reg, postgis_url, schema)
        assert anew["created_central"] and anew["units_inserted"] == 1332
        assert status(reg, postgis_url, schema, compare=True)["equal"]
        with psycopg.connect(postgis_url, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema}", public')
            conn.execute("DELETE FROM source_version")
        units.edit_unit(reg, "SL", WESTERN_AREA, name="Renamed too")
        whole = push(reg, postgis_url, schema)
        assert whole["units_inserted"] == 1332 and any("deleted centrally" in w
                                                       for w in whole["warnings"])
        assert status(reg, postgis_url, schema, compare=True)["equal"]


def test_qgis_and_psql_edit_the_central_schema_with_their_own_search_path(
        postgis_url: str, tmp_path: Path) -> None:
    """QGIS (or psql) connects with the default search path and names the schema: the
    registry's triggers still find their tables, the edit is logged as external, and
    the district pulls it."""
    with _district(postgis_url, tmp_path) as (reg, schema):
        push(reg, postgis_url, schema)
        with psycopg.connect(postgis_url, autocommit=True) as qgis:
            assert qgis.execute("SHOW search_path").fetchone() == ('"$user", public',)
            qgis.execute(f'UPDATE "{schema}".org_unit SET name = %s WHERE source_ref = %s',
                         ("Named at the ministry", FACILITY))
            qgis.execute(f'UPDATE "{schema}".org_unit_group SET name = name || %s '
                         "WHERE fid = (SELECT min(fid) FROM " + f'"{schema}".org_unit_group)',
                         (" (renamed)",))
            origin = qgis.execute(f'SELECT origin FROM "{schema}".change_log '
                                  "ORDER BY fid DESC LIMIT 1").fetchone()
        assert origin == ("external",)
        pull(reg, postgis_url, schema)
        assert units.get_unit(reg, "SL", FACILITY)["name"] == "Named at the ministry"


def test_a_subtree_deleted_centrally_with_a_unit_changed_here_is_a_conflict(
        postgis_url: str, tmp_path: Path) -> None:
    """The ministry deletes a chiefdom and its facilities; the district has just edited
    one of those facilities.  The pull reports a conflict and deletes nothing — it used
    to fail on every run with a foreign-key error, blocking every other central change."""
    with _district(postgis_url, tmp_path) as (reg, schema):
        push(reg, postgis_url, schema)
        facility = next(u for u in tree.subtree(reg, "SL", BO_CHIEFDOM) if u["depth"] == 4)
        central = Registry.open(f"{postgis_url}?schema={schema}")
        try:
            units.delete_unit(central, "SL", BO_CHIEFDOM, recursive=True)
            units.edit_unit(central, "SL", WESTERN_AREA, code="WA")  # another central change
        finally:
            central.close()
        units.edit_unit(reg, "SL", facility["uuid"], name="Edited in the district")
        pulled = pull(reg, postgis_url, schema)
        assert pulled["conflict_count"] >= 1
        assert units.get_unit(reg, "SL", facility["uuid"])["name"] == "Edited in the district"
        assert units.get_unit(reg, "SL", BO_CHIEFDOM)["name"]  # still here
        assert units.get_unit(reg, "SL", WESTERN_AREA)["code"] == "WA"  # the rest came
        # the district decides the ministry is right: the whole subtree goes
        settled = pull(reg, postgis_url, schema, prefer="central")
        assert settled["conflict_count"] == 0
        for gone in (BO_CHIEFDOM, facility["uuid"]):
            with pytest.raises(NotFound):
                units.get_unit(reg, "SL", gone)


def test_mistakes_in_the_command_say_what_is_wrong(postgis_url: str, tmp_path: Path) -> None:
    """A role that does not exist is a refusal, not 'cannot reach'; a pull of a source
    nobody has says which sources there are (it used to do nothing, exit 0)."""
    with _district(postgis_url, tmp_path) as (reg, schema):
        stranger = postgis_url.replace("://postgres@", "://nosuchuser@", 1)
        with pytest.raises(InvalidInput, match="refused the connection: .*nosuchuser"):
            push(reg, stranger, schema)
        push(reg, postgis_url, schema)
        with pytest.raises(NotFound, match="No source 'NoSuch'.*sources: SL"):
            pull(reg, postgis_url, schema, sources=["NoSuch"])


def test_a_registry_in_public_leaves_postgis_functions_alone(bare_db: str) -> None:
    """A registry in ``public`` (no ?schema=) shares it with PostGIS: only the registry's
    own functions carry a search path (a SET on PostGIS's would slow every spatial call
    in the database, and a role that does not own PostGIS may not alter them)."""
    reg = Registry.create(bare_db)
    try:
        with psycopg.connect(bare_db) as conn:
            configured = dict(conn.execute(
                "SELECT p.proname, p.proconfig IS NOT NULL FROM pg_proc p "
                "WHERE p.pronamespace = 'public'::regnamespace "
                "AND p.proname IN ('st_dwithin', 'georeg_unit_before', 'georeg_unit_stmt')"
            ).fetchall())
        assert configured == {"st_dwithin": False, "georeg_unit_before": True,
                              "georeg_unit_stmt": True}
    finally:
        reg.close()
