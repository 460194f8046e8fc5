"""Projects: an Iaso app id (``app_id``) that forms are attached to."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import text

from storage.errors import ConflictError, InvalidInput, NotFound
from storage.registry import Registry

_APP_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def add_project(reg: Registry, name: str, *, app_id: str) -> dict[str, Any]:
    if not name.strip():
        raise InvalidInput("The project needs a name.")
    if not _APP_ID.match(app_id or ""):
        raise InvalidInput(f"App id {app_id!r}: use letters, digits, '.', '_' or '-' "
                           "(such as org.example.survey).")
    with reg.write(origin="server", operation="projects add") as conn:
        if conn.execute(text("SELECT 1 FROM project WHERE app_id = :a"), {"a": app_id}).first():
            raise ConflictError(f"A project with app id {app_id!r} already exists.")
        fid = conn.execute(text("INSERT INTO project (name, app_id) VALUES (:n, :a) "
                                "RETURNING fid"), {"n": name.strip(), "a": app_id}).scalar_one()
    return {"id": int(fid), "name": name.strip(), "app_id": app_id}


def get_project(reg: Registry, app_id: str) -> dict[str, Any]:
    with reg.read() as conn:
        row = conn.execute(text("SELECT fid, name, app_id, created_at FROM project "
                                "WHERE app_id = :a"), {"a": app_id}).first()
    if row is None:
        raise NotFound(f"No project with app id {app_id!r}. Add it with "
                       f"'georeg projects add REG NAME --app-id {app_id}'.")
    return {"id": int(row[0]), "name": row[1], "app_id": row[2], "created_at": str(row[3])}


def list_projects(reg: Registry) -> list[dict[str, Any]]:
    with reg.read() as conn:
        rows = conn.execute(text(
            "SELECT p.fid, p.name, p.app_id, p.created_at, "
            "(SELECT count(*) FROM form f WHERE f.project_id = p.fid) FROM project p "
            "ORDER BY p.name")).all()
    return [{"id": int(r[0]), "name": r[1], "app_id": r[2], "created_at": str(r[3]),
             "forms": int(r[4])} for r in rows]
