"""A new GIS officer follows docs/server.md and docs/rest-api.md (the docs review,
findings #2, #3, #17, #24, #27): the set-up runs as written, levels count from 1
everywhere, an export never overwrites an earlier one, the Iaso app is offered the form,
and ``--help`` says what each server command does.

Real HTTP to a server on 127.0.0.1 and the CLI through CliRunner, as the other server
tests do."""

from __future__ import annotations

import ast
import re
import shlex
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from georeg.cli import main
from local_server import submissions
from storage.registry import Registry
from tests import server_helpers as sh
from tests.openrosa_helpers import FORM_ID, ROOT, build_registry, instance_xml, write_test_form

DOCS = ROOT / "docs"
DEMO_FORM = ROOT / "georeg" / "demo_data" / "forms" / "facility_visit.xlsx"


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def _section(doc: Path, heading: str) -> str:
    text = doc.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end > 0 else None]


# --- #2 the set-up of docs/server.md §1, as written ------------------------------------------


def test_the_field_server_set_up_runs_as_the_doc_writes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command of §1 but `serve`, copied from the doc and run from the root of a
    checkout (here: a folder holding the checkout's georeg/ package). The form's path
    used to be a bare `facility_visit.xlsx`, which no user has: exit 4."""
    block = re.search(r"```sh\n(.*?)```", _section(DOCS / "server.md", "## 1. Set up"),
                      re.S)
    assert block is not None
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    commands = [shlex.split(line) for line in lines if line]
    assert [c[:2] for c in commands][-1] == ["georeg", "serve"]
    (tmp_path / "georeg").symlink_to(ROOT / "georeg", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for argv in commands[:-1]:
        assert argv[0] == "georeg"
        code, out = run(*argv[1:])  # no terminal: users add generates the password
        assert code == 0, f"{shlex.join(argv)} → exit {code}: {out}"
    code, out = run("forms", "list", "district.gpkg", "--json")
    assert code == 0 and '"facility_visit"' in out and '"org_unit_field": "facility"' in out
    code, out = run("users", "list", "district.gpkg")
    assert "kofi" in out and "amina" in out


# --- #3 levels count from 1 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sh.LiveServer]:
    with sh.demo_server(tmp_path_factory.mktemp("review-docs"), forms=[DEMO_FORM]) as live:
        yield live


def _token(live: sh.LiveServer, user: str) -> dict[str, str]:
    r = requests.post(f"{live.base}/api/token/", timeout=30,
                      json={"username": user, "password": live.passwords[user]})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access']}"}


def test_the_rest_api_counts_levels_from_1_like_the_cli(server: sh.LiveServer) -> None:
    """`level=1` is the country, `level=2` the districts (the rest-api.md geopandas
    example asks for districts); `level=0` is refused, saying levels start at 1, where
    it once answered an empty list as if there were no units."""
    auth = _token(server, "kofi")
    url = f"{server.base}/api/v1/orgunits"
    roots = requests.get(url, params={"level": 1}, headers=auth, timeout=30).json()
    assert [u["name"] for u in roots["org_units"]] == ["Sierra Leone"]
    assert roots["org_units"][0]["depth"] == 1

    example = re.search(r'params=(\{"level".*?\})', (DOCS / "rest-api.md").read_text())
    assert example is not None
    params = ast.literal_eval(example.group(1))
    fc = requests.get(url, params=params, headers=auth, timeout=30).json()
    assert fc["count"] == 13  # the demo's 13 districts, as the example calls them
    assert {f["properties"]["type"] for f in fc["features"]} == {"District"}

    for bad in ("0", "-1"):
        r = requests.get(url, params={"level": bad}, headers=auth, timeout=30)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error"] == "invalid_input" and body["details"]["parameter"] == "level"
        assert "start at 1" in body["message"]

    spec = requests.get(f"{server.base}/api/openapi.json", timeout=30).json()
    level = next(p for p in spec["paths"]["/api/v1/orgunits"]["get"]["parameters"]
                 if p["name"] == "level")
    assert level["schema"]["minimum"] == 1
    assert "1 = the roots" in level["description"] and "0 =" not in level["description"]
    table = _section(DOCS / "rest-api.md", "### Org units")
    assert "0 = the roots" not in table and "1 = the roots" in table


def _web(live: sh.LiveServer, user: str) -> requests.Session:
    s = requests.Session()
    r = s.post(f"{live.base}/login", timeout=30, allow_redirects=False,
               data={"username": user, "password": live.passwords[user]})
    assert r.status_code in (302, 303), r.text
    return s


def test_the_status_page_counts_levels_from_1(server: sh.LiveServer) -> None:
    """The status page said "level 0: 1 unit, level 1: 13 units" for the country and its
    districts, while `georeg tree`, `unit show` and orgunits.csv say 1 and 2."""
    page = _web(server, "kofi").get(f"{server.base}/", timeout=30).text
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td><td>\d+</td><td>\d+</td></tr>", page)
    levels = {int(level): int(units) for level, units in rows}
    assert levels[1] == 1 and levels[2] == 13, rows
    assert 0 not in levels


def test_the_submissions_map_draws_the_districts_under_a_country_outline(
        tmp_path: Path) -> None:
    """The map's backdrop is the shallowest level *below the roots* that has territories.
    Levels count from 1, so the old `depth > 0` filter took the roots: a registry whose
    country has its own polygon (a GADM or DHIS2 level-1 boundary) got one outline and no
    districts."""
    from shapely.geometry import box

    from storage import units, versions
    from tests.openrosa_helpers import thread_server

    path = tmp_path / "registry.gpkg"
    reg, passwords = sh.build_demo_registry(path)
    try:
        units.set_geometry(reg, "SL", "ImspTQPwCqd", number=2,
                           territory=box(-13.4, 6.8, -10.2, 10.1))  # Sierra Leone
        versions.publish_version(reg, "SL", 2, make_default=True)
    finally:
        reg.close()
    with thread_server(path) as base:
        live = sh.LiveServer(base, reg, path, passwords)
        page = _web(live, "kofi").get(f"{base}/submissions", timeout=30).text
    outlines = re.findall(r"<path [^>]*><title>([^<]*)</title></path>", page)
    assert "Bo" in outlines and len(outlines) == 13, outlines
    assert "Sierra Leone" not in outlines


# --- #24 the Iaso app is offered the form ----------------------------------------------------


def test_the_iaso_app_is_offered_the_form_on_the_units_it_downloads(
        server: sh.LiveServer) -> None:
    """In Iaso a form carries the org-unit types it is filled on, and the app opens a
    form from a chosen unit; `org_unit_type_ids: []` offered the form on no unit."""
    auth = _token(server, "amina")
    app = f"app_id={sh.APP_ID}"
    forms = requests.get(f"{server.base}/api/mobile/forms/?{app}", headers=auth,
                         timeout=30).json()["forms"]
    visit = next(f for f in forms if f["form_id"] == "facility_visit")
    types = requests.get(f"{server.base}/api/orgunittypes/?{app}", headers=auth,
                         timeout=30).json()["orgUnitTypes"]
    assert visit["org_unit_type_ids"] == [t["id"] for t in types]
    assert [t["name"] for t in visit["org_unit_types"]] == [
        "National", "District", "Chiefdom", "Facility"]
    units = requests.get(f"{server.base}/api/mobile/orgunits/?{app}", headers=auth,
                         timeout=60).json()["orgUnits"]
    assert units and {u["org_unit_type_id"] for u in units} <= set(visit["org_unit_type_ids"])


def test_adding_a_form_to_a_project_says_so(tmp_path: Path) -> None:
    """`forms add … --project P` on an unchanged form attached it to P but printed
    "Unchanged"; the user could not tell the Iaso app would now get it."""
    reg = str(tmp_path / "r.gpkg")
    Registry.create(reg).close()
    form = str(write_test_form(tmp_path / "f"))
    assert run("projects", "add", reg, "Malaria survey", "--app-id", "org.example.malaria")[0] == 0
    code, out = run("forms", "add", reg, form)
    assert code == 0 and out.startswith("Added form")
    code, out = run("forms", "add", reg, form, "--project", "org.example.malaria")
    assert code == 0, out
    assert out.startswith("Updated: form facility_visit"), out
    assert "Attached to project org.example.malaria (was in no project)." in out
    code, out = run("projects", "list", reg)
    assert "org.example.malaria" in out and "(1 form(s))" in out
    code, out = run("forms", "add", reg, form, "--project", "org.example.malaria")
    assert code == 0 and out.startswith("Unchanged:") and "Attached" not in out


def test_new_media_for_the_same_version_is_not_called_unchanged(tmp_path: Path) -> None:
    """The same `Unchanged` came after `--media` replaced a file phones then download
    again; the same files again are still `Unchanged`."""
    reg = str(tmp_path / "r.gpkg")
    Registry.create(reg).close()
    form = str(write_test_form(tmp_path / "f"))
    media = tmp_path / "media"
    media.mkdir()
    (media / "logo.png").write_bytes(b"\x89PNG one")
    assert run("forms", "add", reg, form, "--media", str(media))[0] == 0
    code, out = run("forms", "add", reg, form, "--media", str(media))
    assert code == 0 and out.startswith("Unchanged:") and "Media" not in out, out
    (media / "logo.png").write_bytes(b"\x89PNG two")
    code, out = run("forms", "add", reg, form, "--media", str(media))
    assert code == 0 and out.startswith("Updated: form facility_visit"), out
    assert "Media added or replaced in this version: logo.png" in out


# --- #17 submissions --out -------------------------------------------------------------------


@pytest.fixture
def field_data(tmp_path: Path) -> str:
    """A registry with three Collect submissions, each with a photo."""
    setup = build_registry(tmp_path / "district.gpkg")
    with Registry.open(setup.path) as r:
        for i in range(3):
            xml, _ = instance_xml(setup.inside, instance_id=f"uuid:0000000{i}-visit",
                                  remarks=f"r{i}")
            submissions.store_submission(r, xml, {"photo.jpg": (b"jpg%d" % i, "image/jpeg")})
    return str(setup.path)


def test_two_exports_keep_their_own_attachments(field_data: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """visits.xlsx then visits.csv each wrote `visits_attachments.zip`, the second over
    the first. The zip is named after the whole output name now, and its folders are
    the instanceIDs with ':' as '_', as docs/server.md says."""
    monkeypatch.chdir(tmp_path)
    code, out = run("submissions", field_data, "--form", FORM_ID, "--out", "visits.xlsx")
    assert code == 0 and "3 attachment(s) in visits.xlsx_attachments.zip" in out, out
    code, out = run("submissions", field_data, "--format", "geojson", "--out",
                    "visits.geojson")
    assert code == 0 and "visits.geojson_attachments.zip" in out, out
    code, out = run("submissions", field_data, "--out", "visits.csv")
    assert code == 0 and "visits.csv_attachments.zip" in out, out
    for name in ("visits.xlsx", "visits.geojson", "visits.csv"):
        with zipfile.ZipFile(tmp_path / f"{name}_attachments.zip") as zf:
            assert sorted(zf.namelist()) == [f"uuid_0000000{i}-visit/photo.jpg"
                                             for i in range(3)]
    assert not (tmp_path / "visits_attachments.zip").exists()
    doc = _section(DOCS / "server.md", "## 5. Submissions")
    assert "visits.csv_attachments.zip" in doc and "uuid_1f0c…/photo.jpg" in doc
    assert "(`<instanceID>/<file>`)" not in doc


def test_an_export_is_not_overwritten_without_force(field_data: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Running `--out visits.csv` again replaced the CSV without a word; `georeg export`
    refuses. Now: exit 5 (a conflict), nothing touched, and `--force` replaces both."""
    monkeypatch.chdir(tmp_path)
    assert run("submissions", field_data, "--out", "visits.csv")[0] == 0
    csv_file, zip_file = tmp_path / "visits.csv", tmp_path / "visits.csv_attachments.zip"
    csv_file.write_text("my edits\n")  # last month's export, worked on since
    zip_before = zip_file.read_bytes()
    code, out = run("submissions", field_data, "--out", "visits.csv")
    assert code == 5, out
    assert "visits.csv and visits.csv_attachments.zip already exist(s)" in out
    assert "--force" in out
    assert csv_file.read_text() == "my edits\n" and zip_file.read_bytes() == zip_before
    zip_file.unlink()  # the zip alone is protected too
    csv_file.unlink()
    zip_file.write_bytes(b"precious")
    code, out = run("submissions", field_data, "--out", "visits.csv")
    assert code == 5 and "visits.csv_attachments.zip already exist(s)" in out
    assert zip_file.read_bytes() == b"precious" and not csv_file.exists()

    code, out = run("submissions", field_data, "--out", "visits.csv", "--force")
    assert code == 0, out
    assert csv_file.read_text().startswith("instance_id,")
    with zipfile.ZipFile(zip_file) as zf:
        assert len(zf.namelist()) == 3
    # --force with nothing to attach: the earlier zip does not stay beside the new CSV
    code, out = run("submissions", field_data, "--out", "visits.csv", "--force",
                    "--since", "2999-01-01")
    assert code == 0 and "Wrote 0 submission(s)" in out, out
    assert not zip_file.exists()


def test_an_export_never_replaces_the_registry(field_data: str) -> None:
    code, out = run("submissions", field_data, "--format", "csv", "--out", field_data,
                    "--force")
    assert code == 2 and "is the registry" in " ".join(out.split()), out
    with Registry.open(field_data) as r:  # still a registry, submissions and all
        assert submissions.list_submissions(r, limit=10)["count"] == 3


# --- #27 --help ------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["forms", "users", "projects"])
def test_every_server_subcommand_says_what_it_does(group: str) -> None:
    """`georeg forms`, `users` and `projects` listed their subcommands with no words."""
    code, out = run(group, "--help")
    assert code == 0
    listed = out.split("Commands:\n", 1)[1].strip().splitlines()
    assert len(listed) >= 2
    for line in listed:
        name, _, summary = line.strip().partition(" ")
        assert summary.strip(), f"georeg {group} {name}: no description"
        code, sub = run(group, name, "--help")
        usage, summary_line = sub.splitlines()[0], sub.splitlines()[2]
        assert usage.startswith("Usage: ") and f" {group} {name} [OPTIONS]" in usage
        assert summary_line.strip().endswith("."), (group, name, sub)
