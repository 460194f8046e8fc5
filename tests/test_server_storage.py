"""Users, forms and submissions on every backend (GeoPackage, SpatiaLite, PostGIS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_server import auth, forms, submissions, users
from storage.errors import ConflictError
from storage.registry import Registry
from tests.openrosa_helpers import FORM_ID, instance_xml, write_test_form


def test_store_and_read_on_every_backend(registry: Registry, tmp_path: Path) -> None:
    users.add_user(registry, "ama", "long-password", role="reviewer")
    user = users.get_user(registry, "ama")
    assert user is not None and user.has_role("collector") and not user.has_role("admin")
    forms.add_form(registry, write_test_form(tmp_path, "3"))
    xml, iid = instance_xml("", version="3")
    first = submissions.store_submission(registry, xml, {"a.jpg": (b"\x00\xffbin", "image/jpeg")},
                                         user=user, device_id="dev1")
    assert first.outcome == "created"
    again = submissions.store_submission(registry, xml, {"b.jpg": (b"more", "image/jpeg")})
    assert again.outcome == "updated" and again.fid == first.fid
    assert submissions.store_submission(registry, xml).outcome == "duplicate"
    with pytest.raises(ConflictError):
        submissions.store_submission(registry, xml.replace(b"ok", b"ko"))
    got = submissions.get_submission(registry, iid, with_xml=True)
    assert got["xml"].encode() == xml and got["device_id"] == "dev1"
    assert [a["filename"] for a in got["attachments"]] == ["a.jpg", "b.jpg"]
    content, ctype = submissions.attachment_content(registry, got["id"], "a.jpg")
    assert content == b"\x00\xffbin" and ctype == "image/jpeg"
    assert got["data"]["visit"][1] == {"patients": "11"}
    listed = submissions.list_submissions(registry, form=FORM_ID)
    assert listed["count"] == 1
    assert forms.list_forms(registry)[0]["submissions"] == 1


def test_passwords_never_stored_plain(registry: Registry) -> None:
    users.add_user(registry, "kofi", "correct horse battery", role="admin")
    from sqlalchemy import text

    with registry.read() as conn:
        row = conn.execute(text("SELECT password_hash, ha1_md5, ha1_sha256 FROM app_user")).one()
    assert all("correct horse" not in str(v) for v in row)
    assert row[1] == users.ha1("kofi", "georeg", "correct horse battery")

    class Ctx:
        pass

    ctx = Ctx()
    ctx.registry = registry  # type: ignore[attr-defined]
    assert auth.check_password(ctx, "kofi", "correct horse battery") is not None
    assert auth.check_password(ctx, "kofi", "wrong") is None
    assert auth.check_password(ctx, "nobody", "x") is None
