"""Forms: XLSForm conversion (errors with sheet and row), ready XForms accepted byte for
byte, versions, media, and bad input leaving the registry unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from local_server import forms, projects
from storage.errors import ConflictError, InvalidInput, NotFound
from storage.registry import Registry
from tests.openrosa_helpers import FORM_ID, write_test_form

XLSFORMS = Path(__file__).parent / "data" / "xlsform"


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry.create(tmp_path / "r.gpkg")
    yield r
    r.close()


def test_xlsform_errors_name_sheet_and_row(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        forms.add_form(reg, XLSFORMS / "seed-data-command-form.xlsx")
    assert "[row : 6]" in err.value.message and "'survey' sheet" in err.value.message
    assert "seed-data-command-form.xlsx" in err.value.message
    with pytest.raises(InvalidInput) as err:
        forms.add_form(reg, XLSFORMS / "entity-child_registration_2022090701.xlsx")
    assert "survey" in err.value.message and "repeat_count" in err.value.message
    assert forms.list_forms(reg) == []


def test_xform_kept_byte_for_byte(reg: Registry) -> None:
    path = XLSFORMS / "seed-data-command-form.xml"
    out = forms.add_form(reg, path)
    assert out["form_id"] == "quality_pca_2.31.8" and out["version"] == "2020051401"
    xml, fv = forms.form_xml(reg, "quality_pca_2.31.8")
    assert xml == path.read_bytes() and fv.md5 == out["md5"]


@pytest.mark.parametrize("content, expected", [
    (b"<html/>", "h:html"),
    (b"<h:html xmlns:h='http://www.w3.org/1999/xhtml'><h:head/></h:html>", "model"),
    (b"not xml at all", "well-formed"),
    (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>', "unsafe"),
    (b'<!DOCTYPE h:html SYSTEM "http://127.0.0.1:9/x.dtd"><h:html '
     b"xmlns:h='http://www.w3.org/1999/xhtml'/>", "DOCTYPE"),  # no entity: refused too
])
def test_bad_xforms_refused(reg: Registry, tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as err:
        forms.add_form(reg, path)
    assert expected in err.value.message and "bad.xml" in err.value.message
    assert forms.list_forms(reg) == []


def test_versions_and_media(reg: Registry, tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "logo.png").write_bytes(b"png")
    v1 = forms.add_form(reg, write_test_form(tmp_path / "a", "1"), media=media)
    assert v1["created"] and v1["media"] == ["logo.png"] and v1["missing_media"] == []
    again = forms.add_form(reg, write_test_form(tmp_path / "b", "1"))
    assert not again["created"]  # same bytes, same version: nothing new
    v2 = forms.add_form(reg, write_test_form(tmp_path / "c", "2"))
    assert v2["created"] and v2["md5"] != v1["md5"]
    assert [v["version"] for v in forms.form_versions(reg, FORM_ID)] == ["1", "2"]
    assert {m.filename for m in forms.media_list(reg, FORM_ID)} == {"logo.png", "orgunits.csv"}
    # another form under an existing version number is refused
    changed = write_test_form(tmp_path / "d", "2", extra_rows=1)
    with pytest.raises(ConflictError, match="version"):
        forms.add_form(reg, changed)
    assert len(forms.form_versions(reg, FORM_ID)) == 2


def test_unversioned_form_readded(reg: Registry, tmp_path: Path) -> None:
    src = tmp_path / "sample.xlsx"
    shutil.copy(XLSFORMS / "sample_form.xlsx", src)
    first = forms.add_form(reg, src)
    second = forms.add_form(reg, src)
    assert not second["created"] and second["version"] == first["version"]


def test_project_and_wrong_inputs(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="projects add"):
        forms.add_form(reg, XLSFORMS / "sample_form.xlsx", project="org.none")
    projects.add_project(reg, "Survey", app_id="org.survey")
    out = forms.add_form(reg, XLSFORMS / "sample_form.xlsx", project="org.survey")
    assert forms.list_forms(reg, project="org.survey")[0]["form_id"] == out["form_id"]
    with pytest.raises(InvalidInput, match="expected an XLSForm"):
        bad = tmp_path / "form.txt"
        bad.write_text("x")
        forms.add_form(reg, bad)
    with pytest.raises(NotFound):
        forms.add_form(reg, tmp_path / "missing.xlsx")
    with pytest.raises(ConflictError):
        projects.add_project(reg, "Again", app_id="org.survey")
