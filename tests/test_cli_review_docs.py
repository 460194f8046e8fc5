"""A new user follows the docs (review "docs", registry commands): what they met, fixed.

- #5: ``georeg versions`` shows each version's ``version_id``, the id QGIS filters on
  (not the version number); the filter docs/cli.md gives by name and number works.
- #7: an output that exists is a conflict (exit code 5) for ``export`` and ``backup``,
  as for ``init``/``demo`` and as the exit-code table says.
- #11/#28: ``georeg type list|add|rename`` and ``georeg group list|add|rename``; the
  "no such type/group" errors name them.
- #13: ``export --format`` offers only the formats export writes.
- #16: ``history --unit REF --source S`` without ``-v`` shows every version's rows (the
  draft where a reviewer just approved a change was hidden).
- #25: ``demo`` on a PostgreSQL schema that holds a registry says "pass --force"; a
  misspelt schedule option key is named.
- #28: ``check --limit``; ``--source`` may be left out when the registry has one source.

The real CLI on real registries (the demo), on every backend where the backend matters.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from georeg.cli import main

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "Sierra Leone (DHIS2 demo)"
BAOMA = "vWbkYPRmKyS"  # a chiefdom of Bo
ALLEN_TOWN = "kbGqmM6ZWWV"  # Allen Town Health Post


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def ok(*args: str) -> Any:
    """--json answer of a command that must succeed."""
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def refused(code: int, *args: str) -> str:
    """The message of a command that must fail with exit code ``code``."""
    result = run(*args, "--json")
    assert result.exit_code == code, (result.stdout, result.stderr)
    return str(json.loads(result.stderr)["message"])


def text(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def demo(location: str) -> str:
    """`georeg demo`: the Sierra Leone demo, v1 published and the default."""
    ok("demo", location)
    return location


gpkg_only = pytest.mark.parametrize("backend", ["gpkg"], indirect=True)


# --- #5: which version_id is my draft? -------------------------------------------------


@gpkg_only
def test_versions_show_the_version_id_that_qgis_filters_on(demo: str) -> None:
    # a second list arrives before the demo's draft is made: ids and numbers part ways
    ok("source", "add", demo, "Facility survey 2026")
    ok("version", "new", demo, "-s", "Facility survey 2026")
    ok("version", "new", demo, "-s", SOURCE, "--from", "1")
    listed = text("versions", demo, "-s", SOURCE)
    header = listed.splitlines()[0].split()
    assert header[:2] == ["version", "version_id"]
    rows = {line.split()[0]: line.split()[1] for line in listed.splitlines()[2:4]}
    assert rows == {"1": "1", "2": "3"}  # v2 of the demo is version_id 3, not 2
    assert '"version_id" = 3' in listed

    # docs/cli.md's filter by source name and version number picks the same rows
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    qgis = doc[doc.index("## Editing in QGIS"):doc.index("## Command reference")]
    assert "georeg versions" in qgis and "version_id" in qgis
    expression = re.search(r'```\n("version_id" = \(SELECT.*?\))\n```', qgis, re.S)
    assert expression is not None, qgis
    with sqlite3.connect(demo) as db:
        def count(where: str) -> int:
            return int(db.execute(f"SELECT count(*) FROM org_unit WHERE {where}").fetchone()[0])

        assert count(expression.group(1)) == count('"version_id" = 3') == 1332
        assert count('"version_id" = 2') == 0  # the survey's (empty) v1, not the demo's v2


# --- #7: "file already exists" is exit code 5 --------------------------------------------


@gpkg_only
def test_an_output_that_exists_is_a_conflict_for_export_and_backup(demo: str,
                                                                   tmp_path: Path) -> None:
    visits = tmp_path / "visits.csv"
    visits.write_text("yesterday's export\n")
    message = refused(5, "export", demo, str(visits), "-s", SOURCE)
    assert message == f"{visits} already exist(s); pass --force to replace."
    assert visits.read_text() == "yesterday's export\n"
    assert ok("export", demo, str(visits), "-s", SOURCE, "--force")["units"] == 1332

    backup = tmp_path / "district-backup.gpkg"
    backup.write_bytes(b"last week")
    assert "give --force to replace it" in refused(5, "backup", demo, str(backup))
    assert backup.read_bytes() == b"last week"
    ok("backup", demo, str(backup), "--force")

    assert "--force to replace it" in refused(5, "init", demo)
    assert "--force to replace it" in refused(5, "demo", demo)


# --- #11 / #28: types and groups -------------------------------------------------------------


def test_a_dhis2_user_adds_a_facility_type_and_a_group(demo: str) -> None:
    ok("version", "new", demo, "-s", SOURCE, "--from", "1")
    draft = ["-s", SOURCE, "-v", "2"]
    new_unit = ["--name", "Test Hospital", "--parent", BAOMA, "--ref", "TESTHOSP001"]

    # the type is missing: the error says how to add it
    message = refused(2, "unit", "add", demo, *draft, *new_unit, "--type", "Hospital")
    assert "no org-unit type named 'Hospital' (types: National, District, Chiefdom, " \
        "Facility)." in message and 'georeg type add REG "Hospital"' in message
    added = ok("type", "add", demo, "Hospital", "--level", "4")
    assert added == {"id": added["id"], "name": "Hospital", "short_name": None, "level": 4,
                     "units": 0}
    assert "Added org-unit type 'Referral' (level 4)." in text("type", "add", demo, "Referral",
                                                               "--level", "4")
    assert "differ only in case" in refused(5, "type", "add", demo, "hospital")
    assert ok("unit", "add", demo, *draft, *new_unit, "--type", "Hospital")["type"] == "Hospital"
    types = {t["name"]: t for t in ok("type", "list", demo)}
    assert list(types) == ["National", "District", "Chiefdom", "Facility", "Hospital",
                           "Referral"]
    assert types["Hospital"]["units"] == 1 and types["Facility"]["units"] > 1000
    assert "Hospital  4" in text("type", "list", demo)

    # a type of a published version keeps its name; a new one can be corrected
    message = refused(5, "type", "rename", demo, "Facility", "Health facility")
    assert "published" in message and 'georeg type add REG "Health facility"' in message
    renamed = ok("type", "rename", demo, "Hospital", "District hospital")
    assert (renamed["old_name"], renamed["name"], renamed["units"]) == \
        ("Hospital", "District hospital", 1)
    assert ok("unit", "show", demo, *draft, "TESTHOSP001")["type"] == "District hospital"
    assert "already exists" in refused(5, "type", "rename", demo, "Referral",
                                       "District Hospital")
    assert "No org-unit type named 'Nope'" in refused(4, "type", "rename", demo, "Nope", "X")

    # the group is missing: the error says how to list and add groups
    message = refused(4, "unit", "group", demo, *draft, "TESTHOSP001", "--add", "Hospitals")
    assert message.startswith(f"No group 'Hospitals' (by ref or name) in {SOURCE} v2.")
    assert f"'georeg group add REG \"Hospitals\" -s \"{SOURCE}\" -v 2'" in message
    group = ok("group", "add", demo, "Hospitals", *draft, "--code", "HOSP")
    assert (group["name"], group["code"], group["units"]) == ("Hospitals", "HOSP", 0)
    assert "published and read-only" in refused(5, "group", "add", demo, "Hospitals", "-s",
                                                SOURCE, "-v", "1")
    assert "already has a group named 'Hospitals'" in refused(5, "group", "add", demo,
                                                              "hospitals", *draft)
    assert ok("unit", "group", demo, *draft, "TESTHOSP001", "--add", "Hospitals")["groups"] \
        == ["Hospitals"]
    renamed = ok("group", "rename", demo, "Hospitals", "Public hospitals", *draft)
    assert (renamed["old_name"], renamed["units"]) == ("Hospitals", 1)
    assert ok("unit", "show", demo, *draft, "TESTHOSP001")["groups"] == ["Public hospitals"]
    assert "already has a group named 'CHP'" in refused(5, "group", "rename", demo,
                                                        "Public hospitals", "CHP", *draft)
    listed = {g["name"]: g for g in ok("group", "list", demo, *draft)["groups"]}
    assert listed["Public hospitals"]["units"] == 1 and listed["CHP"]["units"] > 100
    assert "Groups of Sierra Leone (DHIS2 demo) v2:" in text("group", "list", demo, *draft)
    # the published v1 is as it was
    assert "Public hospitals" not in {g["name"] for g in
                                      ok("group", "list", demo, "-s", SOURCE, "-v", "1")["groups"]}


def test_type_and_group_commands_are_listed_in_help() -> None:
    top = text("--help")
    assert "  type " in top and "  group " in top
    for name in ("list", "add", "rename"):
        assert f"  {name} " in text("type", "--help")
        assert f"  {name} " in text("group", "--help")


# --- #13: export offers only what it writes ---------------------------------------------------


def test_export_format_choices_are_the_formats_export_writes() -> None:
    from georeg import cli
    from sync import formats

    writers = {name for name in formats.available() if hasattr(formats.module(name),
                                                               "write_file")}
    assert set(cli.EXPORT_FORMAT_CHOICE.choices) == writers
    export_help = " ".join(text("export", "--help").split())
    assert "--format [iaso-gpkg|geojson|csv|xlsx|vector]" in export_help
    assert "dhis2-json" in " ".join(text("import", "--help").split())
    result = run("export", "reg.gpkg", "d.json", "-s", "MoH DHIS2", "--format", "dhis2-json")
    assert result.exit_code == 2 and "'dhis2-json' is not one of" in result.output


# --- #16: the history of a unit by ref shows the draft too -------------------------------------


def test_history_of_a_ref_shows_every_version_of_the_source(demo: str,
                                                               tmp_path: Path) -> None:
    ok("version", "new", demo, "-s", SOURCE, "--from", "1")
    ok("unit", "edit", demo, "-s", SOURCE, "-v", "2", ALLEN_TOWN, "--name", "Allen Town CHC")
    log = ok("history", demo, "--unit", ALLEN_TOWN, "-s", SOURCE)
    assert [(e["version"], e["op"]) for e in log] == [(2, "update"), (1, "import")]
    assert log[0]["changes"]["name"] == ["Allen Town Health Post", "Allen Town CHC"]
    assert "update org_unit Allen Town CHC [Sierra Leone (DHIS2 demo) v2]" in \
        text("history", demo, "--unit", ALLEN_TOWN, "-s", SOURCE)
    # -v still reads one version; --limit still limits
    assert [e["version"] for e in ok("history", demo, "--unit", ALLEN_TOWN, "-s", SOURCE,
                                     "-v", "1")] == [1]
    assert len(ok("history", demo, "--unit", ALLEN_TOWN, "-s", SOURCE, "--limit", "1")) == 1
    assert "No unit with uuid or ref 'NOPE'" in refused(4, "history", demo, "--unit", "NOPE",
                                                         "-s", SOURCE)
    # one source: the ref is enough, as for the other commands; with two, the error says
    # which source holds it
    assert ok("history", demo, "--unit", ALLEN_TOWN) == log
    survey = tmp_path / "survey.csv"
    survey.write_text("ref,name,parent_ref\nS1,Survey root,\nS2,Survey unit,S1\n")
    ok("import", demo, str(survey), "-s", "Survey")
    assert f'Give the source: --source "{SOURCE}"' in refused(2, "history", demo, "--unit",
                                                                ALLEN_TOWN)


# --- #25: errors that send the user the right way ----------------------------------------------


@pytest.mark.parametrize("backend", ["postgis"], indirect=True)
def test_demo_on_a_schema_that_holds_a_registry_says_pass_force(demo: str) -> None:
    message = refused(5, "demo", demo)
    assert "already holds a registry" in message and "pass --force to replace it" in message
    assert "already holds a registry" in refused(5, "init", demo)
    ok("demo", demo, "--force")


@gpkg_only
def test_a_misspelt_schedule_option_is_named(demo: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    message = refused(2, "schedule", "add", demo, "--job", "dhis2-pull", "--every", "1h",
                      "--target", "play", "--option", "sourc=SL")
    assert message.startswith("Option(s) sourc (did you mean source?) mean nothing to "
                              "dhis2-pull")
    assert "needs --option source" in refused(2, "schedule", "add", demo, "--job",
                                              "dhis2-pull", "--every", "1h", "--target", "play")


# --- #28: check --limit, and --source left out when there is one source ---------------------


@gpkg_only
def test_check_limit_prints_the_first_findings_errors_first(demo: str) -> None:
    full = json.loads(run("check", demo, "-s", SOURCE, "--json").stdout)
    errors = [f for f in full["findings"] if f["severity"] == "error"]
    assert len(full["findings"]) > 5 and errors  # the demo's invalid 'Sittia' polygon
    result = run("check", demo, "-s", SOURCE, "--limit", "3")
    assert result.exit_code == 6  # the exit code still counts every finding
    lines = result.stdout.splitlines()
    assert lines[0] == (f"Checks of {SOURCE} v1: {len(errors)} errors, "
                        f"{len(full['findings']) - len(errors)} warnings")
    shown = [line for line in lines if re.match(r" *(error|warning) \w+: ", line)]
    assert len(shown) == 3 and shown[0].strip().startswith("error ")
    assert lines[-1] == (f"... and {len(full['findings']) - 3} more (use --json or --out for "
                         "all, or a larger --limit).")
    as_json = run("check", demo, "-s", SOURCE, "--limit", "3", "--json")
    assert len(json.loads(as_json.stdout)["findings"]) == len(full["findings"])


def test_source_can_be_left_out_when_the_registry_has_one(demo: str) -> None:
    assert ok("tree", demo, "--max-depth", "1")["total_units"] == 1332
    assert ok("versions", demo)[0]["number"] == 1
    draft = ok("version", "new", demo, "--from", "1")
    assert draft["source"] == SOURCE and draft["number"] == 2
    assert ok("unit", "edit", demo, "-v", "2", ALLEN_TOWN, "--name", "Allen Town CHC")["name"] \
        == "Allen Town CHC"
    assert ok("group", "list", demo, "-v", "2")["version"]["source"] == SOURCE

    ok("source", "add", demo, "Facility survey 2026")
    message = refused(2, "tree", demo)
    assert message == ("Give --source / -s: this registry has several sources ('Facility "
                       f"survey 2026', '{SOURCE}').")
    assert ok("tree", demo, "-s", SOURCE, "--max-depth", "1")["total_units"] == 1332
    # import never guesses where a file goes
    assert "Missing option '--source'" in run("import", demo, "x.csv").output


def test_an_import_into_the_published_version_names_the_draft(demo: str,
                                                              tmp_path: Path) -> None:
    """Advising 'georeg version new' when a draft exists would make a second draft."""
    ok("version", "new", demo, "-s", SOURCE, "--from", "1")
    rows = tmp_path / "rows.csv"
    rows.write_text("ref,name,parent_ref\nNEW1,New CHP,O6uvpzGd5pu\n")
    message = refused(5, "import", demo, str(rows), "-s", SOURCE, "-v", "1")
    assert "v1 is published and read-only; draft v2 exists: add -v 2 to edit it." in message


def test_history_of_a_ref_of_32_hex_digits_needs_no_source(location: str,
                                                           tmp_path: Path) -> None:
    """ODK/Kobo ids are 32 hex digits — a ref, not a uuid, although Python's UUID() reads
    them: with one source, the ref is enough."""
    ok("init", location)
    rows = tmp_path / "odk.csv"
    rows.write_text("ref,name\n0123456789abcdef0123456789abcdef,Alpha\n")
    ok("import", location, str(rows), "-s", "ODK")
    [entry] = ok("history", location, "--unit", "0123456789abcdef0123456789abcdef")
    assert entry["op"] in ("import", "insert"), entry
