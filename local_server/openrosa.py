"""OpenRosa for ODK Collect: form list, form download, manifest, media, submission.

Routes (all behind Digest authentication; ``deviceID`` and unknown query parameters are
ignored):

* ``GET /formList[?formID=…]`` — ``text/xml; charset=utf-8``, xformsList namespace,
  ``hash`` = ``md5:`` of the exact bytes served at ``downloadUrl``, absolute URLs built
  from the Host the phone used; ``manifestUrl`` only for forms with media.
* ``GET /forms/<formID>/form.xml`` — the XForm, byte for byte as stored.
* ``GET /forms/<formID>/manifest`` and ``/forms/<formID>/media/<file>``.
* ``HEAD|GET /submission`` → 204 with ``X-OpenRosa-Accept-Content-Length``.
* ``POST /submission`` — multipart: ``xml_submission_file`` + attachments (by file name),
  ``*isIncomplete*``; 201 (stored, committed) / 202 (already received) with an
  ``OpenRosaResponse``; 400 malformed, 403 outside the user's area, 404 unknown form,
  409 same instanceID with other XML, 413 too large.  A file resent under the name of
  one already received, with other bytes, never replaces it: it is kept beside it as
  ``name (2).ext`` and the 201 message says so (Collect shows it).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from sqlalchemy import text
from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from local_server import forms, submissions
from local_server.app import OpenRosaRule, openrosa_xml
from storage.errors import InvalidInput

XFORMS_LIST_NS = "http://openrosa.org/xforms/xformsList"
MANIFEST_NS = "http://openrosa.org/xforms/xformsManifest"
XML_TYPE = "text/xml; charset=utf-8"

_media_refs: dict[str, bool] = {}
_media_lock = threading.Lock()


def _xml(body: str, status: int = 200) -> Response:
    return Response('<?xml version="1.0" encoding="UTF-8"?>\n' + body, status=status,
                    content_type=XML_TYPE)


def _form_url(ctx: Any, form_id: str, tail: str) -> str:
    return ctx.url(f"/forms/{quote(form_id, safe='')}/{tail}")


def form_list(request: Request, ctx: Any) -> Response:
    user = ctx.require("collector")
    wanted = request.args.get("formID")
    reg = ctx.registry
    with reg.read() as conn:
        sql = ("SELECT f.form_id, f.title, v.version, v.md5, v.fid, EXISTS (SELECT 1 FROM "
               "form_media m WHERE m.form_version_fid = v.fid) FROM form f JOIN form_version "
               "v ON v.fid = (SELECT max(fid) FROM form_version WHERE form_fid = f.fid) "
               "WHERE f.active")
        params: dict[str, Any] = {}
        if wanted:
            sql += " AND f.form_id = :f"
            params["f"] = wanted
        rows = conn.execute(text(sql + " ORDER BY f.title, f.form_id"), params).all()
        need = [r for r in rows if r[3] not in _media_refs]
        for r in need:
            xml = conn.execute(text("SELECT xform FROM form_version WHERE fid = :v"),
                               {"v": r[4]}).scalar_one()
            refs = bool(forms.parse_xform(bytes(xml)).media)
            with _media_lock:
                _media_refs[r[3]] = refs
    parts = [f'<xforms xmlns="{XFORMS_LIST_NS}">']
    for form_id, title, version, md5, _vf, stored_media in rows:
        parts.append("<xform>")
        parts.append(f"<formID>{escape(form_id)}</formID><name>{escape(title)}</name>")
        parts.append(f"<version>{escape(version or '')}</version>")
        parts.append(f"<hash>md5:{md5}</hash>")
        parts.append(f"<downloadUrl>{escape(_form_url(ctx, form_id, 'form.xml'))}"
                     "</downloadUrl>")
        if stored_media or _media_refs.get(md5):
            parts.append(f"<manifestUrl>{escape(_form_url(ctx, form_id, 'manifest'))}"
                         "</manifestUrl>")
        parts.append("</xform>")
    parts.append("</xforms>")
    _ = user
    return _xml("".join(parts))


def form_download(request: Request, ctx: Any, form_id: str) -> Response:
    ctx.require("collector")
    xml, fv = forms.form_xml(ctx.registry, form_id)
    response = Response(xml, content_type=XML_TYPE)
    response.headers["ETag"] = f'"{fv.md5}"'
    return response


def manifest(request: Request, ctx: Any, form_id: str) -> Response:
    user = ctx.require("collector")
    files = forms.media_list(ctx.registry, form_id, user)
    parts = [f'<manifest xmlns="{MANIFEST_NS}">']
    for f in files:
        url = _form_url(ctx, form_id, "media/" + quote(f.filename, safe=""))
        kind = ' type="entityList"' if f.kind == "entityList" else ""
        integrity = (f"<integrityUrl>{escape(_form_url(ctx, form_id, 'integrity'))}"
                     "</integrityUrl>" if f.kind == "entityList" else "")
        parts.append(f"<mediaFile{kind}><filename>{escape(f.filename)}</filename>"
                     f"<hash>md5:{f.md5}</hash><downloadUrl>{escape(url)}</downloadUrl>"
                     f"{integrity}</mediaFile>")
    parts.append("</manifest>")
    return _xml("".join(parts))


def media(request: Request, ctx: Any, form_id: str, filename: str) -> Response:
    user = ctx.require("collector")
    content, ctype = forms.media_content(ctx.registry, form_id, filename, user)
    response = Response(content, content_type=ctype)
    response.headers["ETag"] = f'"{hashlib.md5(content).hexdigest()}"'
    return response


def integrity(request: Request, ctx: Any, form_id: str) -> Response:
    """Entities the phone holds that were deleted on the server (OpenRosa integrity API)."""
    from local_server import entities

    ctx.require("collector")
    ids = [i.strip() for i in (request.args.get("id") or "").split(",") if i.strip()]
    with ctx.registry.read() as conn:
        forms.current_version(conn, form_id)
        states = entities.deleted_states(conn, ids[:10_000])
    body = "".join(f'<entity id="{escape(i)}"><deleted>{"true" if d else "false"}</deleted>'
                   "</entity>" for i, d in states.items())
    return _xml(f"<data><entities>{body}</entities></data>")


def submission_head(request: Request, ctx: Any) -> Response:
    ctx.require("collector")
    return Response(status=204)


def submission_post(request: Request, ctx: Any) -> Response:
    user = ctx.require("collector")
    if request.mimetype != "multipart/form-data":
        raise InvalidInput("A submission is a multipart/form-data POST with the part "
                           "'xml_submission_file'.")
    xml_part = request.files.get("xml_submission_file")
    if xml_part is None:
        raise InvalidInput("The request has no 'xml_submission_file' part (or the multipart "
                           "body is malformed or truncated).")
    xml = xml_part.read()
    if not xml.strip():
        raise InvalidInput("The 'xml_submission_file' part is empty.")
    files: dict[str, tuple[bytes, str]] = {}
    for key, storage in request.files.items(multi=True):
        if key == "xml_submission_file":
            continue
        name = storage.filename or key
        files[name] = (storage.read(), storage.mimetype or "application/octet-stream")
    incomplete = (request.form.get("*isIncomplete*") or "").strip().lower() == "yes"
    stored = submissions.store_submission(ctx.registry, xml, files, user=user,
                                          device_id=ctx.device_id, incomplete=incomplete)
    if stored.outcome == "duplicate":
        return openrosa_xml("This submission was already received.", status=202)
    message = {"created": "Thank you: the submission was received.",
               "updated": "Thank you: the rest of the submission was received.",
               "edited": "Thank you: the edited submission was received."}[stored.outcome]
    if incomplete:
        message = "Part of the submission was received; send the rest."
    if stored.superseded_on_arrival:
        message += " An edit of it was received before it and stays the current version."
    if stored.attachments_renamed:
        # a stored file is never replaced: say where the other one went
        message += " " + " ".join(
            f"A different file named {sent!r} was already received for this submission; "
            f"both are kept, the new one as {kept!r}."
            for sent, kept in stored.attachments_renamed.items())
    response = openrosa_xml(message, status=201)
    response.headers["Location"] = ctx.url("/submission")
    return response


def rules() -> list[Rule]:
    return [
        OpenRosaRule("/formList", endpoint=form_list, methods=["GET"]),
        OpenRosaRule("/forms/<form_id>/form.xml", endpoint=form_download, methods=["GET"]),
        OpenRosaRule("/forms/<form_id>/manifest", endpoint=manifest, methods=["GET"]),
        OpenRosaRule("/forms/<form_id>/media/<filename>", endpoint=media, methods=["GET"]),
        OpenRosaRule("/forms/<form_id>/integrity", endpoint=integrity, methods=["GET"]),
        OpenRosaRule("/submission", endpoint=submission_head, methods=["GET", "HEAD"]),
        OpenRosaRule("/submission", endpoint=submission_post, methods=["POST"]),
    ]
