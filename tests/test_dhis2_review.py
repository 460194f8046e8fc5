"""DHIS2 sync review findings (sync2: F4, F6, F8), against the fake DHIS2 over real HTTP.

* F4 — ``dhis2 pull --since last`` (the documented nightly job) overwrote edits made
  here and not pushed yet.  A field changed here that DHIS2 changed too is kept and
  listed as a conflict (CLI and report) until a push, an edit or ``--prefer-remote``
  settles it; DHIS2's other changes still come in.
* F6 — a push report showed two group members added or removed as ``A -> B`` (a rename).
* F8 — a URL answering HTML that is not DHIS2 exited 1 (docs: 4); TLS errors were
  retried as if they could heal.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from shapely.geometry import Point
from sqlalchemy import text

from georeg.cli_dhis2 import dhis2_group, render_push
from storage import units as U
from storage.errors import GeoregError, InvalidInput, NotFound
from storage.registry import Registry, json_value
from storage.versions import publish_version
from sync.dhis2_client import Dhis2Client
from sync.dhis2_sync import pull, push
from tests.dhis2_helpers import PASSWORD, CliPull, client_for
from tests.fake_dhis2 import FakeDhis2

NGELEHUN = "rxc497GUdDt"  # the unit of the reviewer's script
ADONKIA, AFRO_ARAB, AGAPE, AHAMADYYA = "Rp268JB6Ne4", "cDw53Ej8rju", "GvFqTavdpGE", "plnHVbJR6p4"
BADJIA, BAOMAHUN = "YuQRtpLP10I", "jNb63DIHuwU"
CHC_GROUP, CHP_GROUP = "CXw2yu5fodb", "uYxK4wmcPqA"


def in_dhis2(client: Dhis2Client, uid: str, **values: Any) -> None:
    """Someone changes a unit in DHIS2 (its whole object sent back, as DHIS2 expects)."""
    obj = client.get(f"organisationUnits/{uid}", {"fields": ":owner"})
    obj.update(values)
    assert client.import_metadata({"organisationUnits": [obj]}).ok


def here(reg: Registry, uid: str, number: int = 1) -> dict[str, Any]:
    return U.get_unit(reg, "SL", uid, number)


# --- F4: an incremental pull does not overwrite edits made here -----------------------------


def test_since_last_keeps_edits_made_here_and_lists_them(registry: Registry) -> None:
    with FakeDhis2("2.41") as server:
        client = client_for(server)
        pull(registry, client, "SL")
        # the district corrects two units in its draft (not pushed yet) …
        U.rename_unit(registry, "SL", NGELEHUN, "District correction (not pushed yet)",
                      number=1)
        U.rename_unit(registry, "SL", AGAPE, "Agape CHP (district name)", number=1)
        # … while DHIS2 renames one of them too, and changes other fields of both
        in_dhis2(client, NGELEHUN, name="Changed in DHIS2", code="NGEL_DHIS2")
        in_dhis2(client, AGAPE, code="AGAPE_DHIS2")
        result = pull(registry, client, "SL", since="last")
        assert [(c["uid"], c["field"], c["here"], c["dhis2"], c["kept"])
                for c in result["conflicts"]] == [
            (NGELEHUN, "name", "District correction (not pushed yet)", "Changed in DHIS2",
             "here")]
        assert result["conflict_count"] == 1
        unit = here(registry, NGELEHUN)
        assert unit["name"] == "District correction (not pushed yet)"  # kept …
        assert unit["code"] == "NGEL_DHIS2"  # … and DHIS2's other change came in
        agape = here(registry, AGAPE)  # changed on both sides, but not the same field
        assert (agape["name"], agape["code"]) == ("Agape CHP (district name)", "AGAPE_DHIS2")
        with registry.read() as conn:
            stored = json_value(conn.execute(text(
                "SELECT after FROM change_log WHERE entity = 'dhis2_pull' ORDER BY fid DESC"
            )).first()[0])
        assert stored["held"] == [NGELEHUN] and stored["conflicts"][0]["field"] == "name"

        # the next nightly pull reads the held unit again (DHIS2 did not touch it since)
        again = pull(registry, client, "SL", since="last")
        assert [c["uid"] for c in again["conflicts"]] == [NGELEHUN]
        assert here(registry, NGELEHUN)["name"] == "District correction (not pushed yet)"

        # --prefer-remote takes DHIS2's value, and says what it replaced
        taken = pull(registry, client, "SL", since="last", prefer_remote=True)
        assert [(c["uid"], c["kept"]) for c in taken["conflicts"]] == [(NGELEHUN, "dhis2")]
        assert taken["conflict_count"] == 0
        assert here(registry, NGELEHUN)["name"] == "Changed in DHIS2"
        settled = pull(registry, client, "SL", since="last")
        assert settled["conflicts"] == [] and settled["conflict_count"] == 0


def test_an_edit_older_than_the_last_pull_is_still_not_overwritten(fake41: FakeDhis2,
                                                                   tmp_path: Any) -> None:
    """"Not pushed yet" is what counts, not "since the last pull": a pull that did not
    touch the unit leaves the edit unpushed, and a later pull must not overwrite it."""
    client = client_for(fake41)
    with Registry.create(str(tmp_path / "r.gpkg")) as reg:
        pull(reg, client, "SL")
        U.rename_unit(reg, "SL", ADONKIA, "Adonkia (district)", number=1)
        pull(reg, client, "SL", since="last")  # DHIS2 has not changed Adonkia: nothing to do
        in_dhis2(client, ADONKIA, name="Adonkia (ministry)")
        result = pull(reg, client, "SL", since="last")
        assert [(c["uid"], c["here"], c["dhis2"]) for c in result["conflicts"]] == [
            (ADONKIA, "Adonkia (district)", "Adonkia (ministry)")]
        assert here(reg, ADONKIA)["name"] == "Adonkia (district)"
        # a push sends this side's name: the sides agree, and the next pull says nothing
        push(reg, client, "SL", 1)
        assert fake41.state.units[ADONKIA]["name"] == "Adonkia (district)"
        after_push = pull(reg, client, "SL", since="last")
        assert after_push["conflicts"] == []
        assert here(reg, ADONKIA)["name"] == "Adonkia (district)"


def test_edits_in_a_published_version_are_kept_in_the_new_draft(fake41: FakeDhis2,
                                                                 tmp_path: Any) -> None:
    """The newest version is published: the pull makes a new draft from it.  What was
    changed in the published version and never pushed is kept there, and in every later
    pull into that draft (the copy keeps the units' identity; the change log is read
    along the versions it was copied from)."""
    client = client_for(fake41)
    with Registry.create(str(tmp_path / "r.gpkg")) as reg:
        pull(reg, client, "SL")
        U.rename_unit(reg, "SL", ADONKIA, "Adonkia (district)", number=1)
        publish_version(reg, "SL", 1)
        in_dhis2(client, ADONKIA, name="Adonkia (ministry)")
        first = pull(reg, client, "SL", since="last")
        assert first["version"]["number"] == 2
        assert [c["uid"] for c in first["conflicts"]] == [ADONKIA]
        second = pull(reg, client, "SL", since="last")
        assert second["version"]["number"] == 2
        assert [c["uid"] for c in second["conflicts"]] == [ADONKIA]
        assert here(reg, ADONKIA, 2)["name"] == "Adonkia (district)"
        # the published version pushed: DHIS2 has this side's name, nothing is held
        push(reg, client, "SL", 1)
        assert pull(reg, client, "SL", since="last")["conflicts"] == []
        assert here(reg, ADONKIA, 2)["name"] == "Adonkia (district)"


def test_other_fields_moves_and_geometry_are_held_field_by_field(fake41: FakeDhis2,
                                                                 tmp_path: Any) -> None:
    client = client_for(fake41)
    with Registry.create(str(tmp_path / "r.gpkg")) as reg:
        pull(reg, client, "SL")
        U.move_unit(reg, "SL", AFRO_ARAB, BADJIA, number=1)
        U.set_geometry(reg, "SL", AGAPE, number=1, location=Point(-11.5, 7.5))
        U.edit_unit(reg, "SL", AHAMADYYA, number=1, closed_date="2024-03-01")
        in_dhis2(client, AFRO_ARAB, parent={"id": BAOMAHUN})
        in_dhis2(client, AGAPE, geometry={"type": "Point", "coordinates": [-11.6, 7.6]})
        in_dhis2(client, AHAMADYYA, closedDate="2024-04-01T00:00:00.000")
        result = pull(reg, client, "SL", since="last")
        found = {(c["uid"], c["field"]): (c["here"], c["dhis2"]) for c in result["conflicts"]}
        assert set(found) == {(AFRO_ARAB, "parent"), (AGAPE, "location"),
                              (AHAMADYYA, "closed_date")}
        assert found[AFRO_ARAB, "parent"][0] == here(reg, BADJIA)["name"]
        assert found[AHAMADYYA, "closed_date"] == ("2024-03-01", "2024-04-01")
        assert found[AGAPE, "location"] == ("point -11.50000, 7.50000",
                                            "point -11.60000, 7.60000")
        assert here(reg, AFRO_ARAB)["parent_ref"] == BADJIA
        assert here(reg, AHAMADYYA)["closed_date"] == "2024-03-01"


def test_a_unit_deleted_here_is_not_created_again(fake41: FakeDhis2, tmp_path: Any) -> None:
    client = client_for(fake41)
    with Registry.create(str(tmp_path / "r.gpkg")) as reg:
        pull(reg, client, "SL")
        U.delete_unit(reg, "SL", ADONKIA, number=1)
        U.delete_unit(reg, "SL", AGAPE, number=1)
        in_dhis2(client, ADONKIA, name="Adonkia (renamed in DHIS2)")
        in_dhis2(client, AGAPE, closedDate="2024-05-01T00:00:00.000")  # as a push closes it
        new = {"id": "BelowAdonk1", "name": "New below Adonkia", "shortName": "New below",
               "openingDate": "2024-02-01T00:00:00.000", "parent": {"id": ADONKIA}}
        assert client.import_metadata({"organisationUnits": [new]}).ok
        result = pull(reg, client, "SL", since="last")
        found = {c["uid"]: (c["field"], c["here"], c["dhis2"]) for c in result["conflicts"]}
        assert found == {ADONKIA: ("unit", "deleted", "open, changed"),
                         "BelowAdonk1": ("parent", "Adonkia (renamed in DHIS2) (deleted here)",
                                         "Adonkia (renamed in DHIS2)")}
        assert result["import"]["rejected"] == 0
        with reg.read() as conn:
            refs = set(conn.execute(text("SELECT source_ref FROM org_unit")).scalars())
        assert not {ADONKIA, AGAPE, "BelowAdonk1"} & refs
        taken = pull(reg, client, "SL", since="last", prefer_remote=True)
        assert {c["uid"] for c in taken["conflicts"]} == {ADONKIA}
        assert here(reg, "BelowAdonk1")["parent_ref"] == ADONKIA


def test_group_membership_changed_here_is_kept(fake41: FakeDhis2, tmp_path: Any) -> None:
    client = client_for(fake41)
    with Registry.create(str(tmp_path / "r.gpkg")) as reg:
        pull(reg, client, "SL")
        group = here(reg, ADONKIA)["groups"][0]  # (Urban)
        U.set_group_membership(reg, "SL", ADONKIA, group, False, number=1)
        in_dhis2(client, AGAPE, name="Agape CHP (DHIS2)")
        pull(reg, client, "SL", since="last")
        assert group not in here(reg, ADONKIA)["groups"]
        # --prefer-remote too: DHIS2 cannot have removed it "the other way", there is
        # nothing of DHIS2's to prefer (it used to put the membership back)
        pull(reg, client, "SL", since="last", prefer_remote=True)
        assert group not in here(reg, ADONKIA)["groups"]


def test_cli_lists_the_conflicts_and_offers_prefer_remote(fake41: FakeDhis2,
                                                          tmp_path: Any) -> None:
    pulled = CliPull(fake41, tmp_path)
    location = pulled.location
    with Registry.open(location) as reg:
        U.rename_unit(reg, "SL", NGELEHUN, "District correction", number=1)
    in_dhis2(client_for(fake41), NGELEHUN, name="Changed in DHIS2")
    out = pulled.dhis2("pull", "-s", "SL", "--since", "last")
    assert out.exit_code == 0, out.output
    assert "1 unit(s) changed both here and in DHIS2: kept as they are here" in out.output
    assert (f"({NGELEHUN})  name: here 'District correction', DHIS2 'Changed in DHIS2'"
            in out.output)
    assert "--prefer-remote" in out.output
    taken = pulled.dhis2("pull", "-s", "SL", "--since", "last", "--prefer-remote")
    assert taken.exit_code == 0 and "replaced this side's (--prefer-remote)" in taken.output
    refused = pulled.dhis2("pull", "-s", "SL", "--prefer-remote")
    assert refused.exit_code == 2 and "with --since" in refused.output


# --- F6: group members are a list, not a rename ------------------------------------------------


def test_two_members_removed_are_not_shown_as_a_rename(demo_gpkg: Registry,
                                                       fake41: FakeDhis2) -> None:
    reg = demo_gpkg
    client = client_for(fake41)
    chc = client.get(f"organisationUnitGroups/{CHC_GROUP}", {"fields": ":owner"})
    members = [m["id"] for m in chc["organisationUnits"]]
    two = [uid for uid in members if uid in _refs(reg)][:2]
    for uid in two:
        U.set_group_membership(reg, "SL", uid, "CHC", False, number=1)
    U.rename_unit(reg, "SL", ADONKIA, "Adonkia Community Health Post", number=1)
    report = push(reg, client, "SL", 1, dry_run=True)
    change = next(c for c in report["changes"] if c["kind"] == "group")
    assert change["fields"]["added"] == [] and len(change["fields"]["removed"]) == 2
    renamed = next(c for c in report["changes"] if c["uid"] == ADONKIA)
    assert renamed["fields"]["name"] == {"before": "Adonkia CHP",
                                         "after": "Adonkia Community Health Post"}
    shown = render_push(report)
    names = [here(reg, uid)["name"] for uid in two]
    line = next(ln for ln in shown.splitlines() if "update group" in ln)
    assert "removed: " in line and "->" not in line
    assert sorted(line.split("removed: ")[1].split(", ")) == sorted(names)
    assert "added" not in line  # nothing added: not shown as "added: []"
    assert "name: Adonkia CHP -> Adonkia Community Health Post" in shown


def _refs(reg: Registry) -> set[str]:
    with reg.read() as conn:
        return set(conn.execute(text("SELECT source_ref FROM org_unit WHERE source_ref IS NOT "
                                     "NULL")).scalars())


@pytest.fixture
def demo_gpkg(fake41: FakeDhis2, tmp_path: Any) -> Iterator[Registry]:
    with Registry.create(str(tmp_path / "demo.gpkg")) as reg:
        pull(reg, client_for(fake41), "SL")
        yield reg


# --- F8: exit codes and retries ---------------------------------------------------------------


@pytest.fixture
def html_site() -> Iterator[str]:
    """A web server that is not DHIS2: every address answers an HTML page."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>Directory listing</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_page_that_is_not_dhis2_exits_4_as_documented(html_site: str, tmp_path: Any) -> None:
    with pytest.raises(NotFound, match="does not look like a DHIS2 server"):
        Dhis2Client(html_site, username="admin", password=PASSWORD).system_info()
    out = CliRunner().invoke(dhis2_group, ["info", "--url", html_site, "--user", "admin",
                                           "--json"], env={"GEOREG_DHIS2_PASSWORD": PASSWORD})
    assert out.exit_code == 4, out.output
    assert json.loads(out.stderr)["error"] == "not_found"


def test_errors_that_cannot_heal_are_not_retried(fake41: FakeDhis2) -> None:
    tls = Dhis2Client(fake41.url.replace("http://", "https://"), username="admin",
                      password=PASSWORD, retries=4, backoff=5.0)
    with pytest.raises(GeoregError, match="secure .TLS. connection") as err:
        tls.system_info()
    assert tls.request_count == 1 and "tried" not in err.value.message
    assert "does not speak TLS" in err.value.message
    wrong = client_for(fake41, password="nope", retries=4, backoff=5.0)
    with pytest.raises(InvalidInput, match="HTTP 401"):
        wrong.system_info()
    assert wrong.request_count == 1
    client = client_for(fake41, retries=4, backoff=5.0)
    with pytest.raises(NotFound, match="HTTP 404"):
        client.get("noSuchCollection")
    assert client.request_count == 1
    # what can heal is still retried: a 503, a dropped connection
    fake41.inject("error500", count=1, method="GET")
    fake41.inject("drop", count=1, method="GET")
    quick = client_for(fake41, retries=3)
    assert quick.system_info()["version"].startswith("2.41")
    assert quick.request_count == 3



def test_tls_reasons_are_said_in_a_few_words() -> None:
    from sync.dhis2_client import _tls_reason

    verify = ("HTTPSConnectionPool(host='dhis2.example.org', port=443): Max retries exceeded "
              "(Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] "
              "certificate verify failed: self-signed certificate (_ssl.c:1000)')))")
    assert _tls_reason(Exception(verify)) == ("the server's certificate is not trusted "
                                              "(self-signed certificate)")
    mismatch = ("certificate verify failed: Hostname mismatch, certificate is not valid for "
                "'dhis2.example.org'")
    assert "not trusted (Hostname mismatch" in _tls_reason(Exception(mismatch))
    plain = "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)"
    assert _tls_reason(Exception(plain)) == "the server does not speak TLS on this port"
    assert _tls_reason(Exception("[SSL: TLSV1_ALERT_PROTOCOL_VERSION] x")) == \
        "TLS/SSL error (tlsv1 alert protocol version)"


def test_a_nightly_pull_keeps_the_registry_s_own_extra_fields(fake41: FakeDhis2,
                                                              tmp_path: Any) -> None:
    """A survey gave Adonkia a bed count and a description (extra fields the pull does not
    read from DHIS2), pushed long ago. DHIS2 then changes the unit's short name: the
    nightly pull takes it, and the bed count and description stay (the pull replaced the
    extra fields whole, so they were lost)."""
    client = client_for(fake41)
    with Registry.create(str(tmp_path / "r.gpkg")) as reg:
        pull(reg, client, "SL")
        before = here(reg, ADONKIA)["extra_fields"] or {}
        U.edit_unit(reg, "SL", ADONKIA, number=1,
                    extra_fields=before | {"beds": 12, "description": "Survey 2026"})
        push(reg, client, "SL", 1)
        in_dhis2(client, ADONKIA, shortName="Adonkia CHP (new)")
        result = pull(reg, client, "SL", since="last")
        assert result["conflicts"] == []
        assert here(reg, ADONKIA)["extra_fields"] == {
            "shortName": "Adonkia CHP (new)", "beds": 12, "description": "Survey 2026"}


# --- a survey's refs brought in by a merge: the push says how to clear them -----------------


def test_a_ref_that_is_not_a_dhis2_uid_is_refused_with_the_commands_that_clear_it(
        fake41: FakeDhis2, tmp_path: Any) -> None:
    """The compare-and-merge story: units a merge added from the survey keep the survey's
    refs (SRV01333); a push to DHIS2 must refuse them, and say exactly what to run — in a
    draft when the version is published (it cannot change), with this registry's name."""
    import shlex

    from georeg.cli import main
    from storage.versions import create_version

    pulled = CliPull(fake41, tmp_path)
    location = pulled.location
    with Registry.open(location) as reg:
        added = U.add_unit(reg, "SL", number=1, name="Survey-only CHP", parent=NGELEHUN,
                           source_ref="SRV01333")
        publish_version(reg, "SL", 1)
    refused = pulled.dhis2("push", "-s", "SL", "-v", "1", "--dry-run", "--json")
    assert refused.exit_code == 2, refused.output
    error = json.loads(refused.stderr)
    assert error["details"]["units"] == [
        {"uuid": added["uuid"], "name": "Survey-only CHP", "ref": "SRV01333"}]
    assert "'Survey-only CHP' (ref SRV01333)" in error["message"]
    assert f"in a new draft (georeg version new {shlex.quote(location)} -s SL --from 1" \
        in error["message"]
    with Registry.open(location) as reg:
        create_version(reg, "SL", copy_from=1)
    refused = pulled.dhis2("push", "-s", "SL", "-v", "1", "--dry-run", "--json")
    message = json.loads(refused.stderr)["message"]
    fix = f"georeg unit edit {shlex.quote(location)} -s SL -v 2 {added['uuid']} --ref ''"
    assert "in draft v2 (then push v2):" in message and fix in message, message
    # the command, as given, clears it; the draft's push then makes its uid
    assert pulled.runner.invoke(main, shlex.split(fix)[1:]).exit_code == 0
    sent = pulled.dhis2("push", "-s", "SL", "-v", "2", "--dry-run")
    assert sent.exit_code == 0, sent.output
