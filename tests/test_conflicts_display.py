"""Reading the conflicts of a big merge: a page at a time, parents by name, short geometries.

The story: the QGIS officer and the field team each went over the same district
list; the 3-way merge of their drafts has dozens of conflicts (thousands on a real
country).  ``georeg conflicts list`` prints what it counted first (by kind and
status), then one page (``--limit``, default 50; ``--offset`` pages on) and how many
more there are, while ``--json`` still gives a script every conflict unless it asks
for a page.  A conflict about a parent names the parent (with its ref where two
units share the name) instead of printing a uuid, and ``conflicts show`` prints a
territory as its type, vertex count and bounding box unless ``--full`` is given.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shapely.geometry import box
from sqlalchemy import text

from storage import units, versions
from storage.registry import Registry
from tests.test_merge import add_types, three_drafts

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "georeg.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def merged(path: Path) -> None:
    done = cli("merge3", str(path), "--base", "MoH:1", "--ours", "MoH:2", "--theirs", "MoH:3")
    assert done.returncode == 0, done.stderr


def test_a_long_list_is_paged_with_a_summary_first(tmp_path: Path) -> None:
    path = tmp_path / "many.gpkg"
    with Registry.create(path) as r:
        add_types(r)
        u = three_drafts(r)
        versions.create_version(r, "MoH", copy_from=1)  # v4: the base with 30 more posts
    # the base gets 30 posts (in a draft, published, copied twice)
    with Registry.open(path) as r:
        for i in range(30):
            units.add_unit(r, "MoH", name=f"Post {i:02}", parent=u["Bo"], type="Facility",
                           source_ref=f"P{i:02}", number=4)
        versions.publish_version(r, "MoH", 4)
        versions.create_version(r, "MoH", copy_from=4)  # v5: ours
        versions.create_version(r, "MoH", copy_from=4)  # v6: theirs
        with r.write() as conn:  # both sides renamed and recoded every post
            for number, mark in ((5, "A"), (6, "B")):
                conn.execute(text(
                    "UPDATE org_unit SET name = name || ' ' || :m, code = :m || source_ref "
                    "WHERE version_id = (SELECT fid FROM source_version WHERE number = :n) "
                    "AND source_ref LIKE 'P%'"), {"m": mark, "n": number})
    done = cli("merge3", str(path), "--base", "MoH:4", "--ours", "MoH:5", "--theirs", "MoH:6")
    assert done.returncode == 0, done.stderr
    # the merge report itself shows one page and says where the rest is
    assert "60 conflict(s), open until resolved" in done.stdout
    assert "10 more: georeg conflicts list REG --version \"MoH:7\" --offset 50" in done.stdout

    done = cli("conflicts", "list", str(path), "--version", "MoH:7")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "60 conflict(s) in MoH:7: 60 open; by kind: field 60."
    assert lines[1] == "Showing 1–50:"
    assert sum(1 for line in lines if " open " in line and "field" in line) == 50
    assert lines[-1] == "10 more: use --offset 50 / --limit N, or --json for all of them."

    done = cli("conflicts", "list", str(path), "--version", "MoH:7", "--offset", "50")
    assert "Showing 51–60:" in done.stdout and "more:" not in done.stdout
    assert sum(1 for line in done.stdout.splitlines() if "field" in line and " open " in line) \
        == 10

    # scripts: --json is every conflict, a plain list, unless they ask for a page
    every = json.loads(cli("conflicts", "list", str(path), "--version", "MoH:7",
                           "--json").stdout)
    assert len(every) == 60
    page = json.loads(cli("conflicts", "list", str(path), "--version", "MoH:7", "--json",
                          "--limit", "5", "--offset", "2").stdout)
    assert [c["id"] for c in page] == [c["id"] for c in every[2:7]]

    done = cli("conflicts", "list", str(path), "--kind", "edit_delete")
    assert done.stdout.strip() == "No merge conflicts."
    done = cli("conflicts", "list", str(path), "--limit", "0")
    assert done.returncode == 2 and "--limit" in done.stderr


def test_a_parent_is_shown_by_its_name_and_its_ref_where_two_share_it(tmp_path: Path) -> None:
    path = tmp_path / "names.gpkg"
    with Registry.create(path) as r:
        add_types(r)
        u = three_drafts(r)
        # a second 'Bo CHP', in Kenema: the names alone would not tell them apart
        versions.create_version(r, "MoH", copy_from=1)
        twin = units.add_unit(r, "MoH", name="Bo CHP", parent=u["Kenema"], type="Facility",
                              source_ref="F9", number=4)
        versions.publish_version(r, "MoH", 4)
        versions.create_version(r, "MoH", copy_from=4)
        versions.create_version(r, "MoH", copy_from=4)
        units.move_unit(r, "MoH", u["Baoma MCHP"], u["Bo CHP"], number=5)
        units.move_unit(r, "MoH", u["Baoma MCHP"], twin["uuid"], number=6)
    done = cli("merge3", str(path), "--base", "MoH:4", "--ours", "MoH:5", "--theirs", "MoH:6")
    assert done.returncode == 0, done.stderr

    done = cli("conflicts", "list", str(path), "--version", "MoH:7")
    assert done.returncode == 0, done.stderr
    row = done.stdout.splitlines()[-1]  # the summary line, the header, the rule, the row
    assert "Bo " in row and "Bo CHP (ref F1)" in row and "Bo CHP (ref F9)" in row
    assert u["Bo"] not in done.stdout and u["Bo CHP"][:13] not in done.stdout

    (c,) = json.loads(cli("conflicts", "list", str(path), "--json").stdout)
    assert (c["base"], c["ours"], c["theirs"]) == (u["Bo"], u["Bo CHP"], twin["uuid"])
    assert c["parents"]["theirs"]["name"] == "Bo CHP" and c["parents"]["theirs"]["ref"] == "F9"
    assert c["parents"]["base"]["uuid"] == u["Bo"]

    done = cli("conflicts", "show", str(path), str(c["id"]))
    assert done.returncode == 0, done.stderr
    assert "  base: Bo\n" in done.stdout
    assert "  ours: Bo CHP (ref F1)\n" in done.stdout
    assert "  theirs: Bo CHP (ref F9)" in done.stdout


def test_show_summarises_a_territory_unless_full(tmp_path: Path) -> None:
    path = tmp_path / "geom.gpkg"
    with Registry.create(path) as r:
        add_types(r)
        u = three_drafts(r)
        units.set_geometry(r, "MoH", u["Bo"], number=2, territory=box(-12.1, 7.4, -11.4, 8.3))
        units.set_geometry(r, "MoH", u["Bo"], number=3, territory=box(-12.2, 7.3, -11.3, 8.4))
        # and a deleted-versus-edited district: its whole snapshot is shown, parent by name
        units.delete_unit(r, "MoH", u["Kenema"], number=2, recursive=True)
        units.edit_unit(r, "MoH", u["Kenema"], number=3, code="KE-2")
    merged(path)
    listed = json.loads(cli("conflicts", "list", str(path), "--json").stdout)
    by_kind = {c["kind"]: c for c in listed}

    done = cli("conflicts", "show", str(path), str(by_kind["field"]["id"]))
    assert done.returncode == 0, done.stderr
    assert "POLYGON ((" not in done.stdout.upper()
    assert "  ours: MultiPolygon, 5 vertices, bbox -12.1000,7.4000 … -11.4000,8.3000\n" \
        in done.stdout
    done = cli("conflicts", "show", str(path), str(by_kind["field"]["id"]), "--full")
    assert '  ours: "MULTIPOLYGON (((-11.4 7.4, -11.4 8.3' in done.stdout
    # the table too
    done = cli("conflicts", "list", str(path))
    assert "vertices" in done.stdout and "POLYGON ((" not in done.stdout.upper()

    done = cli("conflicts", "show", str(path), str(by_kind["edit_delete"]["id"]))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "  ours: deleted" in out
    assert '  theirs: unit "Kenema"' in out and "    parent: Sierra" in out
    assert "    code: \"KE-2\"" in out
    assert "    territory: " in out and "vertices" in out and "POLYGON ((" not in out.upper()
    # the JSON keeps the whole values
    shown = json.loads(cli("conflicts", "show", str(path), str(by_kind["edit_delete"]["id"]),
                           "--json").stdout)
    assert shown["theirs"]["territory"].upper().startswith(("POLYGON", "MULTIPOLYGON"))
    assert shown["theirs"]["parent"] == u["Sierra"]
    assert shown["parents"]["theirs"]["name"] == "Sierra"
