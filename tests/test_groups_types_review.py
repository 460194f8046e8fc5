"""Org-unit groups and types, and DHIS2 memberships, as the session review met them.

- #1: ``dhis2 pull --since last --prefer-remote`` reverted group memberships set or
  removed here and not pushed.  A member is in or out: DHIS2 cannot have changed one
  "the other way", so there is nothing of DHIS2's to prefer — they are kept.
- #3: a group DHIS2 renamed to the name of another group here gave the version two
  groups of that name (by-name commands then hit DHIS2's).  The rename is held as a
  conflict with its reason, on every pull until settled; a new DHIS2 group so named is
  made (refusing it would drop DHIS2's group and members) with a warning on every pull,
  and by-name commands refuse the shared name, naming the refs.
- #6: "unique, case aside" folded ASCII only (SQL lower()): "École" passed next to "école".
- #7: an unknown type or group named like an existing one but for case advised
  ``type add`` / ``group add``, which then refused it: the error says "did you mean …?".
- #9: the published-version error, when the source has a draft, names it (-v N).
- #10: a group could be named after another group's ref: by-name commands, which try
  refs first, then picked the other group.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from georeg.cli import main
from storage.errors import ConflictError
from storage.registry import Registry
from storage.types_groups import add_group, add_type, rename_group, rename_type
from storage.versions import create_source, create_version
from sync.dhis2_client import Dhis2Client
from tests.dhis2_helpers import PASSWORD, client_for
from tests.fake_dhis2 import FakeDhis2
from tests.test_cli_review_docs import ok, refused

SOURCE = "Sierra Leone (DHIS2 demo)"
FACILITY = "DiszpKrYNg8"  # a facility of the fake DHIS2 and of the demo
MCHP_GROUP, CHC_GROUP = "EYbopBOJWsW", "CXw2yu5fodb"
ENV = {"GEOREG_DHIS2_PASSWORD": PASSWORD}


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def dhis2_pull(fake: FakeDhis2, reg: str, *extra: str) -> Result:
    """``georeg dhis2 pull REG -s SL --url … --user admin`` (password from the env)."""
    result = run("dhis2", "pull", reg, "-s", "SL", "--url", fake.url, "--user", "admin",
                 *extra, env=ENV)
    assert result.exit_code == 0, result.output
    return result


def pull_json(fake: FakeDhis2, reg: str, *extra: str) -> dict[str, Any]:
    return dict(json.loads(dhis2_pull(fake, reg, *extra, "--json").stdout))


def groups_of(reg: str, unit: str) -> set[str]:
    return set(ok("unit", "show", reg, "-s", "SL", unit)["groups"])


def group_names(reg: str) -> list[tuple[str, str | None]]:
    return sorted(((g["name"], g["ref"]) for g in ok("group", "list", reg, "-s", "SL")["groups"]),
                  key=lambda g: (g[0], g[1] or ""))


def group_in_dhis2(client: Dhis2Client, uid: str, **values: Any) -> None:
    """Someone edits a group in DHIS2 (its whole object sent back, as DHIS2 expects)."""
    obj = client.get(f"organisationUnitGroups/{uid}", {"fields": ":owner"})
    obj.update(values)
    assert client.import_metadata({"organisationUnitGroups": [obj]}).ok


@pytest.fixture
def pulled(fake41: FakeDhis2, tmp_path: Any) -> str:
    """A district's registry: a full pull of the fake DHIS2 into SL v1 (a draft)."""
    location = str(tmp_path / "dh.gpkg")
    assert run("init", location).exit_code == 0
    dhis2_pull(fake41, location)
    return location


# --- #1: --prefer-remote keeps the memberships set or removed here -------------------------


def test_prefer_remote_keeps_memberships_set_and_removed_here(fake41: FakeDhis2,
                                                             pulled: str) -> None:
    before = groups_of(pulled, FACILITY)
    assert "MCHP" not in before and "CHC" in before
    # the district puts the facility in MCHP and takes it out of CHC; nothing pushed yet
    ok("unit", "group", pulled, "-s", "SL", FACILITY, "--add", MCHP_GROUP)
    ok("unit", "group", pulled, "-s", "SL", FACILITY, "--remove", CHC_GROUP)
    mine = (before | {"MCHP"}) - {"CHC"}

    plain = pull_json(fake41, pulled, "--since", "last")
    assert groups_of(pulled, FACILITY) == mine
    assert (plain["group_changes"]["members_added"],
            plain["group_changes"]["members_removed"]) == (0, 0)

    # DHIS2's values of fields in conflict are preferred; a membership is no such field
    preferred = pull_json(fake41, pulled, "--since", "last", "--prefer-remote")
    assert groups_of(pulled, FACILITY) == mine
    assert (preferred["group_changes"]["members_added"],
            preferred["group_changes"]["members_removed"]) == (0, 0)
    # its history has the two edits made here, and no pull undoing them
    history = ok("history", pulled, "--unit", FACILITY, "-s", "SL")
    assert [(h["op"], h["origin"]) for h in history if h["entity"] == "group_membership"] \
        == [("delete", "cli"), ("insert", "cli")]


# --- #3: a DHIS2 rename onto the name of another group here ---------------------------------


def test_a_dhis2_rename_onto_a_name_used_here_is_held_until_settled(fake41: FakeDhis2,
                                                                    pulled: str) -> None:
    ok("group", "add", pulled, "Mobile clinics", "-s", "SL")  # made here, no ref
    group_in_dhis2(client_for(fake41), MCHP_GROUP, name="Mobile clinics")

    result = pull_json(fake41, pulled, "--since", "last")
    held = [c for c in result["conflicts"] if c["kind"] == "group"]
    assert [(c["uid"], c["field"], c["here"], c["dhis2"], c["kept"]) for c in held] == [
        (MCHP_GROUP, "name", "MCHP", "Mobile clinics", "here")]
    assert held[0]["reason"] == "name already used here by group 'Mobile clinics'"
    assert result["group_conflict_count"] == 1
    assert result["group_changes"]["groups_renamed"] == 0
    assert ("Mobile clinics", None) in group_names(pulled)
    assert ("MCHP", MCHP_GROUP) in group_names(pulled)  # one group per name

    # the text says what was kept and why; every pull says it again, --prefer-remote too
    out = dhis2_pull(fake41, pulled, "--since", "last").output
    assert f"MCHP ({MCHP_GROUP})  name: here 'MCHP', DHIS2 'Mobile clinics'" in out
    assert ("DHIS2 renamed the group 'MCHP' (EYbopBOJWsW) to 'Mobile clinics', the name of "
            "the group 'Mobile clinics' here: kept as 'MCHP'.") in out
    again = pull_json(fake41, pulled, "--since", "last", "--prefer-remote")
    assert [(c["uid"], c["kept"]) for c in again["conflicts"]] == [(MCHP_GROUP, "here")]
    # under the --prefer-remote heading, the line says this one was kept here, and why
    out = dhis2_pull(fake41, pulled, "--since", "last", "--prefer-remote").output
    assert ("name: here 'MCHP', DHIS2 'Mobile clinics' — kept here: name already used here "
            "by group 'Mobile clinics'") in " ".join(out.split()), out
    assert ("MCHP", MCHP_GROUP) in group_names(pulled)

    # the district renames its own group: the next pull takes DHIS2's name
    ok("group", "rename", pulled, "Mobile clinics", "Mobile teams", "-s", "SL")
    settled = pull_json(fake41, pulled, "--since", "last")
    assert settled["conflicts"] == [] and settled["group_changes"]["groups_renamed"] == 1
    assert {("Mobile clinics", MCHP_GROUP), ("Mobile teams", None)} <= set(group_names(pulled))


def test_a_dhis2_rename_differing_only_in_case_from_a_group_here_is_held(
        fake41: FakeDhis2, pulled: str) -> None:
    ok("group", "add", pulled, "ÉQUIPES MOBILES", "-s", "SL")
    group_in_dhis2(client_for(fake41), MCHP_GROUP, name="Équipes mobiles")
    result = pull_json(fake41, pulled, "--since", "last")
    assert [(c["uid"], c["reason"]) for c in result["conflicts"]] == [
        (MCHP_GROUP, "name already used here by group 'ÉQUIPES MOBILES'")]


def test_a_new_dhis2_group_named_like_one_here_is_made_with_a_warning(fake41: FakeDhis2,
                                                                      pulled: str) -> None:
    ok("group", "add", pulled, "Outreach", "-s", "SL")
    new = {"id": "OutreachG01", "name": "Outreach", "shortName": "Outreach",
           "organisationUnits": [{"id": FACILITY}]}
    assert client_for(fake41).import_metadata({"organisationUnitGroups": [new]}).ok

    out = dhis2_pull(fake41, pulled, "--since", "last").output
    # made, with its member: refusing it would drop DHIS2's group
    assert [n for n in group_names(pulled) if n[0] == "Outreach"] == [
        ("Outreach", None), ("Outreach", "OutreachG01")]
    assert "warning: 2 groups are named 'Outreach': commands that take a group by name " \
        "cannot tell them apart." in out
    assert "georeg group rename REG REF NEW_NAME" in out
    assert "warning: 2 groups are named" in dhis2_pull(fake41, pulled, "--since", "last").output

    # by name, neither is picked silently; by ref, DHIS2's is reached and renamed
    message = refused(5, "unit", "group", pulled, "-s", "SL", FACILITY, "--add", "Outreach")
    assert "2 groups of SL v1 are named 'Outreach' (refs: (no ref), 'OutreachG01')" in message
    assert "Outreach" in groups_of(pulled, FACILITY)  # DHIS2's membership came in
    refused(5, "group", "rename", pulled, "Outreach", "X", "-s", "SL")
    # settled by renaming DHIS2's by its ref (the local one is then unique by name)
    ok("group", "rename", pulled, "OutreachG01", "Outreach (DHIS2)", "-s", "SL")
    ok("group", "rename", pulled, "Outreach", "Outreach (district)", "-s", "SL")
    assert "warning: 2 groups" not in dhis2_pull(fake41, pulled, "--since", "last").output


# --- #6: case aside in every script, on every backend ---------------------------------------


def test_type_and_group_names_are_unique_case_aside_beyond_ascii(registry: Registry) -> None:
    add_type(registry, "Poste de santé")
    with pytest.raises(ConflictError, match="differ only in case"):
        add_type(registry, "POSTE DE SANTÉ")
    decomposed = unicodedata.normalize("NFD", "Poste de santé")
    with pytest.raises(ConflictError, match="'Poste de santé' already exists"):
        add_type(registry, decomposed)  # the same letters, typed as e + accent
    add_type(registry, "Clinique")
    with pytest.raises(ConflictError, match="differ only in case"):
        rename_type(registry, "Clinique", "POSTE DE SANTÉ")

    create_source(registry, "Écoles")
    create_version(registry, "Écoles")
    add_group(registry, "Écoles", "école")
    with pytest.raises(ConflictError, match="already has a group named 'école'"):
        add_group(registry, "Écoles", "École")
    add_group(registry, "Écoles", "Straße")
    with pytest.raises(ConflictError, match="differ only in case"):
        add_group(registry, "Écoles", "STRASSE")  # ß folds to ss
    with pytest.raises(ConflictError, match="differ only in case"):
        rename_group(registry, "Écoles", "Straße", "ÉCOLE")


# --- #7, #9, #10: the CLI on the demo ------------------------------------------------------


@pytest.fixture
def demo(tmp_path: Any) -> str:
    """`georeg demo`: v1 published and the default."""
    location = str(tmp_path / "demo.gpkg")
    ok("demo", location)
    return location


def test_a_name_that_differs_only_in_case_gets_did_you_mean(demo: str) -> None:
    ok("version", "new", demo, "-s", SOURCE, "--from", "1")
    draft = ["-s", SOURCE, "-v", "2"]
    message = refused(2, "unit", "edit", demo, *draft, FACILITY, "--type", "facility")
    assert "no org-unit type named 'facility' — did you mean 'Facility'?" in message
    assert "type add" not in message
    # following it works (the advice no longer loops into "already exists")
    assert ok("unit", "edit", demo, *draft, FACILITY, "--type", "Facility")["type"] == "Facility"
    assert "did you mean 'Facility'?" in refused(4, "type", "rename", demo, "facility", "X")

    message = refused(4, "unit", "group", demo, *draft, FACILITY, "--add", "mchp")
    assert "No group 'mchp' (by ref or name) in " + SOURCE + " v2 — did you mean 'MCHP'?" \
        in message and "group add" not in message
    assert "did you mean 'CXw2yu5fodb'?" in refused(4, "unit", "group", demo, *draft, FACILITY,
                                                    "--add", "cxw2yu5fodb")
    # a name like no other still gets the commands that list and add groups
    assert "georeg group add REG" in refused(4, "unit", "group", demo, *draft, FACILITY,
                                             "--add", "Hospitals")


def test_editing_the_published_version_names_the_draft_that_exists(demo: str) -> None:
    message = refused(5, "group", "add", demo, "Test")
    assert "georeg version new REG" in message  # no draft yet: make one
    ok("version", "new", demo, "-s", SOURCE, "--from", "1")
    message = refused(5, "group", "add", demo, "Test")
    assert message == f"{SOURCE} v1 is published and read-only; draft v2 exists: add -v 2 " \
        "to edit it."
    assert ok("group", "add", demo, "Test", "-v", "2")["name"] == "Test"
    assert "draft v2 exists" in refused(5, "unit", "edit", demo, FACILITY, "--name", "X", "-v", "1")
    with Registry.open(demo) as reg, reg.read() as conn:  # the advice made no second draft
        assert conn.execute(text("SELECT count(*) FROM source_version")).scalar_one() == 2


def test_a_group_cannot_be_named_after_another_groups_ref(demo: str) -> None:
    ok("version", "new", demo, "-s", SOURCE, "--from", "1")
    draft = ["-s", SOURCE, "-v", "2"]
    message = refused(5, "group", "add", demo, CHC_GROUP, *draft)
    assert message.startswith(f"'{CHC_GROUP}' is the ref of the group 'CHC' in {SOURCE} v2")
    ok("group", "add", demo, "Y", *draft)
    assert "is the ref of the group 'CHC'" in refused(5, "group", "rename", demo, "Y",
                                                      CHC_GROUP, *draft)
    # nor a new group given another group's name as its ref
    assert "is the name of another group" in refused(5, "group", "add", demo, "Z", "--ref",
                                                     "CHP", *draft)
    # a group may keep its own ref as its name
    assert ok("group", "rename", demo, CHC_GROUP, CHC_GROUP, *draft)["name"] == CHC_GROUP


def test_dhis2_renames_that_pass_a_name_on_are_applied_both(fake41: FakeDhis2,
                                                            pulled: str) -> None:
    """In DHIS2, 'CHP' became 'CHP old' and 'CHC' became 'CHP': the name is free once the
    first rename is applied, whatever order DHIS2 lists the groups in — no conflict (a
    false one advised a push, which would have undone DHIS2's renames)."""
    chp = "uYxK4wmcPqA"
    client = client_for(fake41)
    group_in_dhis2(client, chp, name="CHP old")
    group_in_dhis2(client, CHC_GROUP, name="CHP")
    result = pull_json(fake41, pulled, "--since", "last")
    assert result["conflicts"] == [] and result["group_conflict_count"] == 0, result["conflicts"]
    assert {("CHP old", chp), ("CHP", CHC_GROUP)} <= set(group_names(pulled))
    assert result["group_changes"]["groups_renamed"] == 2
