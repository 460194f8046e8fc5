"""ODK entities basics: a registration form creates entities from submissions, a follow-up
form gets them as an entity list (manifest ``type="entityList"``, integrity endpoint)."""

from __future__ import annotations

import csv
import io
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from openpyxl import Workbook
from requests.auth import HTTPDigestAuth

from local_server import forms
from storage.errors import InvalidInput
from storage.registry import Registry
from tests.openrosa_helpers import SyntheticCollect


def _xlsform(path: Path, rows: list[list[str]], form_id: str,
             entities: list[list[str]] | None = None) -> Path:
    wb = Workbook()
    ws = wb.active
    ws.title = "survey"
    for row in rows:
        ws.append(row)
    if entities:
        es = wb.create_sheet("entities")
        for row in entities:
            es.append(row)
    st = wb.create_sheet("settings")
    st.append(["form_id", "version"])
    st.append([form_id, "1"])
    wb.save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    from local_server import users
    from tests.openrosa_helpers import thread_server

    tmp = tmp_path_factory.mktemp("entities")
    path = tmp / "r.gpkg"
    with Registry.create(path) as reg:
        users.add_user(reg, "kofi", "entity-password", role="admin")
        forms.add_form(reg, _xlsform(
            tmp / "reg.xlsx",
            [["type", "name", "label", "save_to"], ["text", "tree_name", "Name", ""],
             ["text", "species", "Species", "species"]],
            "tree_reg", [["list_name", "label"], ["trees", "${tree_name}"]]))
        forms.add_form(reg, _xlsform(
            tmp / "visit.xlsx",
            [["type", "name", "label"], ["select_one_from_file trees.csv", "tree", "Tree"]],
            "tree_visit"))
    with thread_server(path) as base:
        yield base, str(path)


def test_entity_created_and_served(server: tuple[str, str]) -> None:
    base, _path = server
    collect = SyntheticCollect(base, "kofi", "entity-password")
    listed = {f.form_id: f for f in collect.form_list()}
    xform = collect.download_form(listed["tree_reg"])
    assert b'dataset="trees"' in xform
    eid = str(uuid.uuid4())
    xml = (f'<data xmlns:entities="http://www.opendatakit.org/xforms/entities" id="tree_reg" '
           f'version="1"><tree_name>Old baobab</tree_name><species>Adansonia</species>'
           f'<meta><instanceID>uuid:{uuid.uuid4()}</instanceID>'
           f'<entity dataset="trees" create="1" id="{eid}"><label>Old baobab</label></entity>'
           "</meta></data>").encode()
    assert collect.submit(xml)[-1].status_code == 201

    visit = listed["tree_visit"]
    assert visit.manifest_url
    manifest = ET.fromstring(collect.get(visit.manifest_url).content)
    (media,) = list(manifest)
    assert media.get("type") == "entityList"
    values = {c.tag.split("}")[1]: c.text for c in media}
    assert values["filename"] == "trees.csv" and values["integrityUrl"]
    content = collect.download_media({"filename": "trees.csv", "hash": values["hash"],
                                      "downloadUrl": values["downloadUrl"]})
    rows = list(csv.DictReader(io.StringIO(content.decode())))
    assert rows == [{"name": eid, "label": "Old baobab", "__version": "1",
                     "species": "Adansonia"}]
    r = requests.get(values["integrityUrl"], params={"id": f"{eid},{uuid.uuid4()}"},
                     auth=HTTPDigestAuth("kofi", "entity-password"), timeout=30)
    assert r.status_code == 200 and r.headers["X-OpenRosa-Version"] == "1.0"
    states = {e.get("id"): e.findtext("deleted") for e in ET.fromstring(r.content).iter("entity")}
    assert states[eid] == "false" and list(states.values()).count("true") == 1


def test_newer_entities_version_refused(tmp_path: Path) -> None:
    xform = (b'<h:html xmlns="http://www.w3.org/2002/xforms" xmlns:h="http://www.w3.org/1999/'
             b'xhtml" xmlns:entities="http://www.opendatakit.org/xforms/entities"><h:head>'
             b'<h:title>t</h:title><model entities:entities-version="2099.1.0"><instance>'
             b'<data id="future"><meta><entity dataset="x" create="1" id=""/></meta></data>'
             b"</instance></model></h:head><h:body/></h:html>")
    path = tmp_path / "future.xml"
    path.write_bytes(xform)
    with Registry.create(tmp_path / "r.gpkg") as reg, pytest.raises(InvalidInput,
                                                                    match="2099"):
        forms.add_form(reg, path)
