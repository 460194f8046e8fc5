"""Submissions produced by JavaRosa — ODK Collect's form engine, shipped in pyxform's
``ODK_Validate.jar`` — for the real XLSForms, sent like Collect and parsed by the server.

A small Java helper (``tests/java/FillForm.java``) is compiled here with ``javac``; it
fills every question (first choice, a geopoint, file names for photos, two repeats) and
serialises the instance.  Skipped only when no JDK is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_server import submissions
from storage.registry import Registry
from tests.openrosa_helpers import FORM_ID, Setup, SyntheticCollect, build_registry, thread_server

HERE = Path(__file__).parent
XLSFORMS = HERE / "data" / "xlsform"
SHARED_FORMS = ["sample_form.xlsx", "default_Health_facility_form.xlsx",
                "seed-data-command-entity-form.xlsx", "seed-data-command-form.xml"]


def _jar() -> Path:
    import pyxform

    jar = Path(pyxform.__file__).parent / "validators" / "odk_validate" / "bin" / "ODK_Validate.jar"
    if not jar.exists():
        pytest.skip("pyxform's ODK_Validate.jar is missing")
    return jar


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no JDK (javac) on this machine")
    jar = _jar()
    out = tmp_path_factory.mktemp("java")
    subprocess.run(["javac", "-cp", str(jar), "-d", str(out), str(HERE / "java" / "FillForm.java")],
                   check=True, capture_output=True, timeout=300)
    return jar, out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return build_registry(tmp_path_factory.mktemp("javarosa") / "registry.gpkg",
                          [XLSFORMS / name for name in SHARED_FORMS])


@pytest.fixture(scope="module")
def server(setup: Setup) -> Iterator[str]:
    with thread_server(setup.path) as base:
        yield base


def fill(helper: tuple[Path, Path], forms: dict[str, bytes], folder: Path
         ) -> dict[str, tuple[bytes, list[str]]]:
    jar, classes = helper
    args = []
    for form_id, xml in forms.items():
        (folder / f"{form_id}.xml").write_bytes(xml)
        args += [str(folder / f"{form_id}.xml"), str(folder / f"{form_id}.out.xml")]
    sep = ";" if sys.platform == "win32" else ":"
    run = subprocess.run(["java", "-cp", f"{jar}{sep}{classes}", "FillForm", *args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    attach: dict[str, list[str]] = {}
    for line in run.stdout.splitlines():
        if line.startswith("ATTACH "):
            _, out, name = line.split(" ", 2)
            attach.setdefault(out, []).append(name)
    return {fid: ((folder / f"{fid}.out.xml").read_bytes(),
                  attach.get(str(folder / f"{fid}.out.xml"), [])) for fid in forms}


def test_javarosa_instances_accepted_and_parsed(helper: tuple[Path, Path], server: str,
                                                setup: Setup, tmp_path: Path) -> None:
    collect = SyntheticCollect(server, "kofi", setup.passwords["kofi"])
    listed = collect.form_list()
    assert len(listed) == 1 + len(SHARED_FORMS)
    downloaded = {f.form_id: collect.download_form(f) for f in listed}
    filled = fill(helper, downloaded, tmp_path)
    with Registry.open(setup.path) as reg:
        for form_id, (xml, names) in filled.items():
            files = {name: b"\xff\xd8JPEG " + name.encode() for name in names}
            responses = collect.submit(xml, files, xml_name=f"{form_id}.xml")
            assert responses[-1].status_code == 201, (form_id, responses[-1].text)
            root = submissions.parse_xml(xml)
            iid = submissions._meta_value(root, "instanceID")
            assert iid and iid.startswith("uuid:")
            got = submissions.get_submission(reg, iid)
            assert got["form_id"] == form_id
            assert got["data"]["meta"]["instanceID"] == iid
            assert sorted(a["filename"] for a in got["attachments"]) == sorted(names)
            if b"-13.234" in xml:  # a geopoint was answered
                assert (got["latitude"], got["longitude"]) == (8.484, -13.234)
    by_form = {fid: x for fid, (x, _) in filled.items()}
    assert b"<visit>" in by_form[FORM_ID]
    with Registry.open(setup.path) as reg:
        visit = [s for s in submissions.list_submissions(reg, form=FORM_ID)["results"]]
    visits = visit[0]["data"]["visit"]
    assert isinstance(visits, list) and len(visits) == 3  # the first + two added


def test_iaso_recorded_instance(server: str, setup: Setup) -> None:
    """The submission recorded from a real phone (Iaso's fixture) for its XForm."""
    collect = SyntheticCollect(server, "kofi", setup.passwords["kofi"])
    iid = f"uuid:{uuid.uuid4()}"
    xml = (XLSFORMS / "seed-data-command-instance.xml").read_bytes().replace(
        b"REPLACEUUID", iid.encode())
    assert collect.submit(xml)[-1].status_code == 201
    with Registry.open(setup.path) as reg:
        got = submissions.get_submission(reg, iid)
    assert got["form_id"] == "quality_pca_2.31.8" and got["form_version"] == "1"
    assert "PBF_PCA_qlt_begin_v8" in got["data"]
