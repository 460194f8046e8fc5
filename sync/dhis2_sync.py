"""Pull org units from DHIS2 into a version, and push a version back to DHIS2.

**Pull** reads levels, org units (with geometry, dates and codes), groups with
their members and group sets through the Web API and imports them with the
shared import job: a new draft version, or — with ``since`` — an upsert of the
units DHIS2 changed after that moment into the newest draft (a new draft copied
from the newest version when that one is published).

**Push** works out what differs between a version and DHIS2's current state,
matching units by ``source_ref`` = DHIS2 uid:

* units DHIS2 does not have are created, parents first, with uids generated
  here and **stored in the registry (committed) before anything is sent** — so
  a push that dies half-way and is run again updates what landed instead of
  creating it twice;
* changed name, short name, code, parent, opening/closed date or geometry are
  updated — from the full DHIS2 object (``fields=:owner``), since DHIS2
  replaces an object with what it is sent;
* units DHIS2 has below the version's roots but the version does not are
  closed (``closedDate``), or deleted with ``allow_delete``;
* group membership is set by sending whole group objects;

all of it through ``/api/metadata`` in batches of at most 500 objects (atomic:
a batch lands whole or not at all), ``importMode=VALIDATE`` for a dry run.
DHIS2's import report comes back in the user's terms — which unit, which field,
what DHIS2 said — and is stored in the change log (``entity = 'dhis2_push'``).
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, text

from storage import audit_sql, geometry
from storage.backends import Backend
from storage.bulk import UnitRecord
from storage.errors import ConflictError, GeoregError, InvalidInput, NotFound
from storage.jobs import Job, Progress
from storage.registry import Registry, json_value
from storage.units import folded, same_name
from storage.versions import VersionRef, create_version, newest_draft
from sync.dhis2_client import Dhis2Client, MetadataImportResult, ObjectError, derived_uid, is_uid
from sync.dhis2_json import DHIS2_EXTRA_KEYS, Dhis2Payload, to_import_payload
from sync.exchange import ExportUnit, internal_ref, read_version
from sync.importing import ImportJob

UNIT_FIELDS = "id,name,shortName,code,level,path,parent[id],geometry,openingDate,closedDate"
GROUP_FIELDS = "id,name,shortName,code,organisationUnits[id]"
GROUP_SET_FIELDS = "id,name,shortName,code,compulsory,organisationUnitGroups[id]"
#: what DHIS2's own CSV importer uses when a unit has no opening date
DEFAULT_OPENING_DATE = "1970-01-01"
BATCH_SIZE = 500
ID_CHUNK = 200  # ids per ``filter=id:in:[…]`` request (keeps URLs short)
MAX_LISTED = 1000
SHORT_NAME_MAX = 50

#: DHIS2 property → the field as the registry names it
FIELD_NAMES = {"name": "name", "shortName": "short name (extra_fields.shortName)",
               "code": "code", "parent": "parent", "openingDate": "opening_date",
               "closedDate": "closed_date", "geometry": "location/territory",
               "id": "DHIS2 uid (source_ref)", "organisationUnits": "group members"}


def short_name(name: str) -> str:
    """DHIS2 needs a shortName of at most 50 characters: the name, cut if it must be."""
    return name.strip()[:SHORT_NAME_MAX].rstrip()


def _day(value: Any) -> str | None:
    if value in (None, ""):
        return None
    return str(value)[:10]


def _log(conn: Connection, version_id: int | None, entity: str, op: str,
         rows: list[dict[str, Any]]) -> None:
    """change_log rows written by hand (same style as storage.versions.log_version)."""
    if not rows:
        return
    sqlite = conn.dialect.name == "sqlite"
    join, ctx = audit_sql.context_columns(Backend.GEOPACKAGE if sqlite else Backend.POSTGIS)
    value = ":after" if sqlite else "CAST(:after AS jsonb)"
    conn.execute(text(
        "INSERT INTO change_log (version_id, entity, op, unit_uuid, after, origin, author, "
        f"operation) SELECT :v, :e, :op, :uu, {value}, {ctx} FROM (SELECT 1) one"
        f"{join if sqlite else ''}"),
        [{"v": version_id, "e": entity, "op": op, "uu": r.get("unit_uuid"),
          "after": json.dumps(r["after"], ensure_ascii=False, default=str)} for r in rows])


def _propagate(outer: Job[Any]) -> Any:
    """A listener for an inner job: forwards progress, and a cancel of the outer job."""

    def listener(p: Progress) -> None:
        outer.report(p.done, p.total, p.message)

    return listener


# --- reading DHIS2 --------------------------------------------------------------------------


def fetch_levels(client: Dhis2Client) -> list[dict[str, Any]]:
    doc = client.get("filledOrganisationUnitLevels")
    if isinstance(doc, dict):
        doc = doc.get("organisationUnitLevels") or []
    return [lvl for lvl in doc or [] if isinstance(lvl, dict)]


def fetch_unit_pages(client: Dhis2Client, *, since: str | None = None,
                     fields: str = UNIT_FIELDS) -> Iterator[tuple[int, dict[str, Any]]]:
    """The org units page by page, each once — and none missed.

    DHIS2 pages by offset over a list sorted by name: a unit created, renamed or deleted
    by someone else while the pages are read shifts every later page by one, so one unit
    comes twice (left out here the second time) or one never comes.  After the last page
    one more request lists the ids alone (``paging=false``: one consistent query); the
    units it has that the pages missed are read by id and come as a last page.
    """
    filters = [f"lastUpdated:gt:{since}"] if since else None
    seen: set[str] = set()
    page_no = 0
    for page_no, doc in client.get_paged("organisationUnits", "organisationUnits",
                                         fields=fields, filters=filters):
        units = [u for u in doc["organisationUnits"] if u.get("id") not in seen]
        seen.update(u.get("id") for u in units)
        yield page_no, (doc if len(units) == len(doc["organisationUnits"])
                        else doc | {"organisationUnits": units})
    listed = client.get("organisationUnits", {"fields": "id", "paging": "false",
                                              **({"filter": filters} if filters else {})})
    ids = {u.get("id") for u in (listed or {}).get("organisationUnits") or []}
    missed = sorted(str(i) for i in ids - seen if i)
    if missed:
        found = fetch_by_ids(client, "organisationUnits", missed, fields)
        yield page_no + 1, {"organisationUnits": list(found.values()),
                            "pager": {"page": page_no + 1, "total": len(seen) + len(found)}}


def fetch_by_ids(client: Dhis2Client, collection: str, ids: list[str], fields: str
                 ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), ID_CHUNK):
        chunk = ids[i : i + ID_CHUNK]
        doc = client.get(collection, {"fields": fields, "filter": f"id:in:[{','.join(chunk)}]",
                                      "paging": "false"})
        for obj in (doc or {}).get(collection) or []:
            out[obj["id"]] = obj
    return out


def parse_since(value: str, server_zone: str | None = None) -> str:
    """A date or date-time for ``filter=lastUpdated:gt:…``.

    DHIS2 reads a time without an offset in its own time zone (``serverTimeZoneId`` of
    ``/api/system/info``), so a time given with an offset (``Z``, ``+01:00``) is turned
    into the server's local time — not UTC, which on a server west of Greenwich would
    skip the changes of the hours in between."""
    raw = (value or "").strip()
    try:
        if len(raw) == 10:
            return dt.date.fromisoformat(raw).isoformat()
        moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"--since {value!r} is not a date or date-time (e.g. 2024-05-01 or "
                           "2024-05-01T10:00:00), nor 'last'.") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(_zone(server_zone)).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds")


def _zone(name: str | None) -> dt.tzinfo:
    """The server's time zone by its IANA name (UTC when unknown here)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name) if name else dt.UTC
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


# --- pull ---------------------------------------------------------------------------------------


class Dhis2PullJob(Job[dict[str, Any]]):
    """Read the org-unit tree from DHIS2 into a new draft version (or upsert with ``since``).

    An incremental pull never silently overwrites what was changed here and not pushed
    yet (see :func:`local_edits`): a unit changed on both sides keeps this side's value of
    each field changed here that DHIS2 has otherwise — its other fields take DHIS2's — and
    is listed in ``conflicts``; ``prefer_remote`` takes DHIS2's values of those fields.
    Units held so are read again by the next incremental pull (by id: DHIS2 may not touch
    them again in time to be in its ``lastUpdated`` window) until the two sides agree — a
    push, an edit here, or ``prefer_remote`` settles them.  Groups renamed here are kept
    the same way (see :func:`_sync_groups`; renames leave no change-log row, so each pull
    and push records the groups' names as DHIS2 has them).
    """

    title = "DHIS2 pull"

    def __init__(self, reg: Registry, client: Dhis2Client, source: str, *,
                 since: str | None = None, description: str | None = None,
                 prefer_remote: bool = False,
                 origin: str = "dhis2_pull", author: str | None = None) -> None:
        super().__init__()
        if prefer_remote and since is None:
            raise InvalidInput("--prefer-remote settles units changed both here and in DHIS2 "
                               "during an incremental pull: give it with --since (e.g. "
                               "--since last). A full pull makes a new version and "
                               "overwrites nothing.")
        self.reg, self.client, self.source = reg, client, source
        self.since = since
        self.description = description
        self.prefer_remote = prefer_remote
        self.origin, self.author = origin, author

    def execute(self) -> dict[str, Any]:
        client = self.client
        start = client.request_count
        info = client.system_info()
        last = self._last_pull() if self.since is not None else None
        since = self._resolve_since(last)
        self.report(0, None, "Reading DHIS2 levels")
        levels = fetch_levels(client)
        pages: list[tuple[str, dict[str, Any]]] = []
        seen = 0
        read: set[str] = set()
        for page_no, doc in fetch_unit_pages(client, since=since):
            pages.append((f"DHIS2 organisationUnits page {page_no}", doc))
            seen += len(doc["organisationUnits"])
            read.update(str(u.get("id")) for u in doc["organisationUnits"])
            self.report(seen, (doc.get("pager") or {}).get("total"), "Reading DHIS2 org units")
        held_before = [str(uid) for uid in (last or {}).get("held") or [] if uid not in read]
        if since is not None and held_before:
            # units the previous pull held back (changed on both sides): read again until
            # settled, whether or not DHIS2 changed them since
            again = fetch_by_ids(client, "organisationUnits", sorted(held_before), UNIT_FIELDS)
            if again:
                pages.append(("DHIS2 organisationUnits held back by the previous pull",
                              {"organisationUnits": list(again.values())}))
                seen += len(again)
        self.report(seen, seen, "Reading DHIS2 groups")
        groups = client.get_all("organisationUnitGroups", "organisationUnitGroups",
                                fields=GROUP_FIELDS)
        group_sets = client.get_all("organisationUnitGroupSets", "organisationUnitGroupSets",
                                    fields=GROUP_SET_FIELDS)
        docs = Dhis2Payload(unit_pages=pages, levels=levels, groups=groups,
                            group_sets=group_sets)
        if since is None and docs.total_units == 0:
            raise NotFound(f"DHIS2 at {client.base_url} returned no org units: does the user "
                           "see any (its data capture and view org units)?")
        payload = to_import_payload(docs)
        # of DHIS2's extra fields, the pull reads only those UNIT_FIELDS asks for: an
        # upsert replaces those and keeps the unit's others (a description set here stays)
        payload.owned_extra_keys = tuple(k for k in DHIS2_EXTRA_KEYS
                                         if k in UNIT_FIELDS.split(","))
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        payload.description = self.description or (
            f"Pulled from DHIS2 {info.get('version')} at {client.base_url} on {when}"
            + (f" (changes since {since})" if since else ""))
        conflicts: list[dict[str, Any]] = []
        held: list[str] = []
        protected: set[tuple[int, int]] = set()
        number: int | None = None
        if since is not None:
            newest = self._newest()
            # what was changed here is read in the newest version — the one upserted into,
            # or the published one the new draft is copied from (same content)
            records = list(payload.units)
            records, conflicts, held, edits = _settle(
                self.reg, newest[0], records, {"dhis2_pull", self.origin},
                prefer_remote=self.prefer_remote)
            payload.units, payload.total = records, len(records)
            # always, even with prefer_remote: a membership is in or out, so DHIS2 cannot
            # have changed one set or removed here "the other way" — there is nothing of
            # DHIS2's to prefer, only this side's edit to lose
            protected = edits.memberships
            number = self._target_draft(newest)
        job = ImportJob(self.reg, payload, source=self.source, number=number,
                        description=payload.description, origin=self.origin, author=self.author)
        job.on_progress(_propagate(self))
        result = job.run()
        version = result["version"]
        known = self._group_bases() if since is not None else {}
        with self.reg.write(origin=self.origin, author=self.author) as conn:
            synced = (_sync_groups(conn, version["id"], groups, protected, known,
                                   prefer_remote=self.prefer_remote)
                      if since is not None else None)
            group_changes = synced.counts if synced is not None else None
            if synced is not None:
                conflicts = conflicts + synced.conflicts
            summary = {"url": client.base_url, "dhis2_version": info.get("version"),
                       "server_date": info.get("serverDate"), "since": since,
                       "incremental": since is not None, "units": docs.total_units,
                       "groups": len(groups), "group_sets": len(group_sets),
                       # the groups as DHIS2 had them, for the next pull to tell which side
                       # renamed a group (renames leave no change-log row)
                       "group_names": synced.recorded if synced is not None
                       else {g["id"]: group_values(g) for g in groups if g.get("id")}}
            if since is not None:
                summary |= {"held": held, "conflicts": conflicts[:MAX_LISTED],
                            "prefer_remote": self.prefer_remote}
            _log(conn, version["id"], "dhis2_pull", "pull", [{"after": summary}])
        return {
            "source": self.source, "version": version, "incremental": since is not None,
            "since": since,
            "dhis2": {"url": client.base_url, "version": info.get("version"),
                      "server_date": info.get("serverDate")},
            "units": docs.total_units, "levels": len(levels), "groups": len(groups),
            "group_sets": len(group_sets), "group_changes": group_changes,
            "requests": client.request_count - start,
            "import": {k: result[k] for k in ("created", "updated", "unchanged", "rejected",
                                              "rows", "warnings", "loaded")}
            | {"warnings": list(result["warnings"])
               + (synced.warnings if synced is not None else [])},
            # units and groups changed both here and in DHIS2: kept as they are here
            # (held), or with prefer_remote replaced by DHIS2's values; one entry per unit
            # or group and field ("kind": "unit" or "group"); conflict_count: units held,
            # group_conflict_count: groups kept as named here
            "conflicts": conflicts, "conflict_count": len(held),
            "group_conflict_count": synced.held if synced is not None else 0,
            "prefer_remote": self.prefer_remote,
        }

    def _last_pull(self) -> dict[str, Any] | None:
        """The summary the previous pull of this source stored (its server date, and the
        units it held back)."""
        with self.reg.read() as conn:
            row = conn.execute(text(
                "SELECT c.after FROM change_log c JOIN source_version v ON v.fid = c.version_id "
                "JOIN data_source s ON s.fid = v.source_id WHERE s.name = :s "
                "AND c.entity = 'dhis2_pull' ORDER BY c.fid DESC LIMIT 1"),
                {"s": self.source}).first()
        after = json_value(row[0]) if row else None
        return after if isinstance(after, dict) else None

    def _group_bases(self) -> dict[str, dict[str, Any]]:
        """Each group's name, short name and code as DHIS2 had them when this source last
        met DHIS2: recorded by the last pull (``group_names``), overlaid with what each
        push DHIS2 took whole since then left there.  A key missing: not known."""
        source = {"s": self.source}
        join = ("FROM change_log c JOIN source_version v ON v.fid = c.version_id "
                "JOIN data_source s ON s.fid = v.source_id WHERE s.name = :s ")
        with self.reg.read() as conn:
            last = conn.execute(text(
                f"SELECT c.fid, c.after {join}AND c.entity = 'dhis2_pull' "
                "ORDER BY c.fid DESC LIMIT 1"), source).first()
            pushes = conn.execute(text(
                f"SELECT c.after {join}AND c.entity = 'dhis2_push' AND c.op = 'push' "
                "AND c.fid > :f ORDER BY c.fid"), source | {"f": last[0] if last else 0}).all()
        known: dict[str, dict[str, Any]] = {}
        for raw in ([last[1]] if last else []) + [r[0] for r in pushes]:
            recorded = (_snapshot(raw) or {}).get("group_names")
            if isinstance(recorded, dict):
                known |= {str(k): v for k, v in recorded.items() if isinstance(v, dict)}
        return known

    def _resolve_since(self, last: dict[str, Any] | None) -> str | None:
        if self.since is None:
            return None
        if str(self.since).strip().lower() != "last":
            return parse_since(self.since, self.client.system_info().get("serverTimeZoneId"))
        if not last or not last.get("server_date"):
            raise InvalidInput(f"--since last: no earlier DHIS2 pull of {self.source!r} is "
                               "recorded. Do a full pull first (without --since), or give a date.")
        return parse_since(str(last["server_date"]))

    def _newest(self) -> tuple[int, int, str]:
        """(id, number, status) of the source's newest version."""
        with self.reg.read() as conn:
            newest = conn.execute(text(
                "SELECT v.fid, v.number, v.status FROM source_version v JOIN data_source s "
                "ON s.fid = v.source_id WHERE s.name = :s ORDER BY v.number DESC LIMIT 1"),
                {"s": self.source}).first()
        if newest is None:
            raise NotFound(f"--since needs a version of {self.source!r} to update; do a full "
                           "pull first (without --since).")
        return int(newest[0]), int(newest[1]), str(newest[2])

    def _target_draft(self, newest: tuple[int, int, str]) -> int:
        """The newest version if it is a draft, else a new draft copied from it."""
        if newest[2] == "draft":
            return newest[1]
        created = create_version(self.reg, self.source, copy_from=newest[1],
                                 description="Draft for an incremental DHIS2 pull",
                                 origin=self.origin)
        return int(created["number"])


# --- pull: changes made here ------------------------------------------------------------------

#: a unit's change-log snapshot key → the field as compared with DHIS2 (and named to the user)
_SNAPSHOT_FIELDS = {"name": "name", "code": "code", "parent_key": "parent",
                    "type_id": "type", "opening_date": "opening_date",
                    "closed_date": "closed_date", "extra_fields": "extra_fields",
                    "location": "location"}
_ALL_FIELDS = frozenset([*_SNAPSHOT_FIELDS.values(), "territory"])
#: the value before a change made here is not known (the unit was created here)
NO_BASE = object()


@dataclass
class LocalEdits:
    """What was changed here in a version and not sent to DHIS2 yet (see local_edits)."""

    #: unit uuid → the fields changed here (name, code, parent, type, opening_date,
    #: closed_date, extra_fields, location, territory), each with its value before the
    #: first change here (as the change log holds it: a parent's key, a type's id, a
    #: geometry's hex) — what DHIS2 had too, unless DHIS2 changed it since; NO_BASE for
    #: a unit created here
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: DHIS2 uid (ref) → name of the units deleted here
    deleted: dict[str, str] = field(default_factory=dict)
    #: (group key, unit key) of the memberships set or removed here
    memberships: set[tuple[int, int]] = field(default_factory=set)


def local_edits(reg: Registry, version_id: int, pull_origins: set[str],
                units: set[str] | None = None) -> LocalEdits:
    """The units, fields and memberships of a version changed here and not pushed yet.

    Read from the change log: the rows that no DHIS2 pull wrote, of the version and of
    the versions it was copied from (a draft copied from a published version carries
    its edits: keys and uuids are kept by a copy), each after the last push that DHIS2
    took whole (``dhis2_push``/``push``) of that version or of one copied from it — what
    was changed before such a push is in DHIS2.  The window is not "since the last
    pull": an edit made before a pull that did not touch its unit is still not in
    DHIS2, and a later pull must not overwrite it either.

    ``units``: the uuids whose fields matter (those DHIS2 changed); the snapshots of
    others are not read (a bulk edit logs thousands).  Deletions and memberships are
    always read."""
    out = LocalEdits()
    origins = sorted(pull_origins)
    marks = ", ".join(f":o{i}" for i in range(len(origins)))
    with reg.read() as conn:
        windows = _unpushed_windows(conn, version_id)
        rows = [row for vid, start in windows for row in conn.execute(text(
            "SELECT entity, op, unit_uuid, unit_key, before, after FROM change_log "
            "WHERE version_id = :v AND fid > :start AND entity IN ('org_unit', 'territory', "
            f"'group_membership') AND origin NOT IN ({marks}) ORDER BY fid"),
            {"v": vid, "start": start} | {f"o{i}": o for i, o in enumerate(origins)})]
        for entity, op, uuid_, unit_key, before_raw, after_raw in rows:
            if entity != "group_membership" and (not uuid_ or (
                    units is not None and op != "delete" and uuid_ not in units)):
                continue
            before, after = _snapshot(before_raw), _snapshot(after_raw)
            if entity == "group_membership":
                group = (after or before or {}).get("group_key")
                if group is not None and unit_key is not None:
                    out.memberships.add((int(group), int(unit_key)))
                continue
            changed = out.fields.setdefault(str(uuid_), {})
            if entity == "territory":
                if (before or {}).get("territory") != (after or {}).get("territory"):
                    changed.setdefault("territory", (before or {}).get("territory"))
            elif op == "insert":
                for name in _ALL_FIELDS:
                    changed.setdefault(name, NO_BASE)
            elif op == "delete":
                ref = (before or {}).get("source_ref")
                if ref:
                    out.deleted[str(ref)] = str((before or {}).get("name") or ref)
            else:
                for key, name in _SNAPSHOT_FIELDS.items():
                    if (before or {}).get(key) != (after or {}).get(key):
                        changed.setdefault(name, (before or {}).get(key))
    return out


def _unpushed_windows(conn: Connection, version_id: int) -> list[tuple[int, int]]:
    """(version id, change-log fid after which its changes are not in DHIS2) for the
    version and the versions it was copied from, oldest first.  A push of a version
    sends what it copied from its ancestors too, so the window of each starts after
    the last push of itself or of any version copied from it."""
    lineage: list[int] = []
    current: int | None = version_id
    while current is not None and current not in lineage and len(lineage) < 100:
        lineage.append(current)
        row = conn.execute(text(
            "SELECT c.after, v.source_id FROM change_log c JOIN source_version v "
            "ON v.fid = c.version_id WHERE c.version_id = :v AND c.entity = 'version' "
            "AND c.op = 'create' ORDER BY c.fid LIMIT 1"), {"v": current}).first()
        after = _snapshot(row[0]) if row else None
        number = (after or {}).get("copied_from")
        current = None
        if row is not None and isinstance(number, int):
            found = conn.execute(text(
                "SELECT fid FROM source_version WHERE source_id = :s AND number = :n"),
                {"s": row[1], "n": number}).scalar()
            current = int(found) if found is not None else None
    windows: list[tuple[int, int]] = []
    start = 0
    for vid in lineage:  # newest first: a push of a later version covers the earlier ones
        pushed = conn.execute(text(
            "SELECT max(fid) FROM change_log WHERE version_id = :v AND entity = 'dhis2_push' "
            "AND op = 'push'"), {"v": vid}).scalar()
        start = max(start, int(pushed or 0))
        windows.append((vid, start))
    return windows[::-1]


def _snapshot(raw: Any) -> dict[str, Any] | None:
    value = json_value(raw)
    return value if isinstance(value, dict) else None


@dataclass
class _Here:
    """A unit as this side has it, in the terms a DHIS2 record is compared in."""

    uuid: str
    ref: str
    name: str
    code: str | None
    opening_date: str | None
    closed_date: str | None
    extra_fields: dict[str, Any] | None
    parent_ref: str | None  # the parent's ref as the upsert knows it (georeg:<uuid> if none)
    parent_name: str | None
    type_name: str | None
    location: BaseGeometry | None
    territory: BaseGeometry | None


def _units_here(reg: Registry, version_id: int, uuids: list[str]) -> dict[str, _Here]:
    """Units of a version by uuid (read in chunks: an IN list stays short)."""
    b = reg.backend
    out: dict[str, _Here] = {}
    with reg.read() as conn:
        for i in range(0, len(uuids), ID_CHUNK):
            chunk = uuids[i : i + ID_CHUNK]
            marks = ", ".join(f":u{n}" for n in range(len(chunk)))
            for r in conn.execute(text(
                    "SELECT u.uuid, u.source_ref, u.name, u.code, u.opening_date, "
                    "u.closed_date, u.extra_fields, p.source_ref, p.uuid, p.name, "
                    f"{geometry.select_sql(b, 'u.location')}, "
                    f"{geometry.select_sql(b, 't.territory')}, ty.name FROM org_unit u "
                    "LEFT JOIN org_unit p ON p.version_id = u.version_id "
                    "AND p.unit_key = u.parent_key "
                    "LEFT JOIN org_unit_type ty ON ty.fid = u.type_id "
                    "LEFT JOIN org_unit_territory t ON t.unit_fid = u.fid "
                    f"WHERE u.version_id = :v AND u.uuid IN ({marks})"),
                    {"v": version_id} | {f"u{n}": u for n, u in enumerate(chunk)}):
                extra = json_value(r[6])
                out[str(r[0])] = _Here(
                    uuid=str(r[0]), ref=str(r[1] or internal_ref(str(r[0]))), name=str(r[2]),
                    code=r[3] or None, opening_date=_day(r[4]), closed_date=_day(r[5]),
                    extra_fields=extra if isinstance(extra, dict) and extra else None,
                    parent_ref=(str(r[7]) if r[7] else internal_ref(str(r[8]))) if r[8]
                    else None, parent_name=r[9], type_name=r[12],
                    location=geometry.decode(b, r[10]), territory=geometry.decode(b, r[11]))
    return out


def _settle(reg: Registry, version_id: int, records: list[UnitRecord], pull_origins: set[str],
            *, prefer_remote: bool
            ) -> tuple[list[UnitRecord], list[dict[str, Any]], list[str], LocalEdits]:
    """The DHIS2 records an incremental pull may upsert, the conflicts, the uids held,
    and what was changed here (:func:`local_edits`).

    A unit changed here and by DHIS2 (it is among ``records``) is a conflict
    on each field changed here whose value DHIS2 has otherwise.  Unless ``prefer_remote``,
    the record carries this side's value of those fields (the upsert then keeps them and
    takes DHIS2's other fields) — and, even with it, of the fields changed here that DHIS2
    still has as they were (no conflict: only this side changed them); a unit deleted
    here is not created again — nor are the new DHIS2 units below it.  A unit deleted
    here that DHIS2 has closed (what a push does with a deleted unit) is no conflict: it
    stays deleted."""
    by_ref = {r.source_ref: r for r in records if r.source_ref}
    refs: dict[str, str] = {}  # uuid → ref
    key_refs: dict[int, str] = {}  # unit key → ref (as the upsert knows it)
    with reg.read() as conn:
        for uuid_, ref, key in conn.execute(text(
                "SELECT uuid, source_ref, unit_key FROM org_unit WHERE version_id = :v"),
                {"v": version_id}):
            if ref:
                refs[str(uuid_)] = str(ref)
            key_refs[int(key)] = str(ref) if ref else internal_ref(str(uuid_))
        type_names = {int(fid): str(name) for fid, name in conn.execute(text(
            "SELECT fid, name FROM org_unit_type"))}
    edits = local_edits(reg, version_id, pull_origins,
                        {uuid_ for uuid_, ref in refs.items() if ref in by_ref})
    if not edits.fields and not edits.deleted:
        return records, [], [], edits
    touched = [uuid_ for uuid_, fields in edits.fields.items()
               if fields and refs.get(uuid_) in by_ref]
    here = _units_here(reg, version_id, touched)
    names = {ref: rec.name for ref, rec in by_ref.items()}
    conflicts: list[dict[str, Any]] = []
    held: list[str] = []
    dropped: dict[str, str] = {}  # ref → why (units not created again, and those below)
    for uuid_ in touched:
        unit, rec = here.get(uuid_), by_ref[refs[uuid_]]
        if unit is None:
            continue
        found, mine_only = _differences(reg, unit, rec, edits.fields[uuid_], names, key_refs,
                                        type_names)
        if found:
            held.append(unit.ref)
        for name, mine, theirs in found:
            conflicts.append({"kind": "unit", "uid": unit.ref, "name": unit.name,
                              "field": name, "here": mine, "dhis2": theirs,
                              "kept": "dhis2" if prefer_remote else "here"})
        # a field changed here only is kept even with prefer_remote: DHIS2 did not change
        # it, so there is nothing of DHIS2's to prefer (the push sends it)
        _keep_here(rec, unit, mine_only if prefer_remote
                   else {name for name, _, _ in found} | mine_only)
    present = set(refs.values())
    for ref, name in edits.deleted.items():
        rec_ = by_ref.get(ref)
        if rec_ is None or ref in present:
            continue  # DHIS2 did not change it, or it is here again (same ref)
        if rec_.closed_date:
            dropped[ref] = "closed"
            continue
        held.append(ref)
        conflicts.append({"kind": "unit", "uid": ref, "name": name, "field": "unit",
                          "here": "deleted", "dhis2": "open, changed",
                          "kept": "dhis2" if prefer_remote else "here"})
        dropped[ref] = "deleted"
    if prefer_remote:
        return records, conflicts, [], edits
    # new DHIS2 units below a unit not created again cannot be placed: held with it
    grew = True
    while grew:
        grew = False
        for rec in records:
            new, parent = rec.source_ref, rec.parent_ref
            if new and parent and new not in dropped and new not in present \
                    and parent in dropped:
                dropped[new] = "below"
                held.append(new)
                above = names.get(parent, parent)
                conflicts.append({"kind": "unit", "uid": new, "name": rec.name,
                                  "field": "parent",
                                  "here": f"{above} (deleted here)", "dhis2": above,
                                  "kept": "here"})
                grew = True
    kept = [rec for rec in records if rec.source_ref not in dropped]
    return kept, conflicts, held, edits


def _differences(reg: Registry, unit: _Here, rec: UnitRecord, changed: dict[str, Any],
                 names: dict[str, str], key_refs: dict[int, str], type_names: dict[int, str]
                 ) -> tuple[list[tuple[str, str, str]], set[str]]:
    """Of the fields changed here that the DHIS2 record would overwrite with another
    value (a value DHIS2 leaves out is not written): the conflicts — (field, here,
    DHIS2) of those DHIS2 changed too, i.e. it no longer has the value they had before
    the change here — and the names of the others (changed here only: kept, silently)."""
    conflicts: list[tuple[str, str, str]] = []
    mine_only: set[str] = set()

    def sort(name: str, there_as_before: bool, mine: str, theirs: str) -> None:
        if changed[name] is not NO_BASE and there_as_before:
            mine_only.add(name)  # DHIS2 still has what this side had: changed here only
        else:
            conflicts.append((name, mine, theirs))

    def base(name: str) -> Any:
        value = changed[name]
        return None if value is NO_BASE else value

    if "name" in changed and rec.name.strip() != unit.name:
        sort("name", base("name") == rec.name.strip(), unit.name, rec.name.strip())
    if "code" in changed and rec.code and rec.code != unit.code:
        sort("code", base("code") == rec.code, _shown(unit.code), rec.code)
    for name in ("opening_date", "closed_date"):
        day = _day(getattr(rec, name))
        if name in changed and day and day != getattr(unit, name):
            sort(name, _day(base(name)) == day, _shown(getattr(unit, name)), day)
    if "parent" in changed and rec.parent_ref != unit.parent_ref:
        ref = rec.parent_ref
        old_key = base("parent")
        old_ref = key_refs.get(int(old_key)) if old_key is not None else None
        sort("parent", old_ref == ref, _shown(unit.parent_name),
             _shown(names.get(ref, ref) if ref else None))
    # the type: DHIS2's level name (a unit without a known level brings none: not written)
    if "type" in changed and rec.type_name and rec.type_name != unit.type_name:
        old_type = base("type")  # (the type's id, as the change log holds it)
        before = type_names.get(int(old_type)) if isinstance(old_type, int) else None
        sort("type", before == rec.type_name, _shown(unit.type_name), rec.type_name)
    if "extra_fields" in changed and rec.extra_fields and rec.extra_fields != unit.extra_fields:
        extra = rec.extra_fields
        mine = unit.extra_fields or {}
        keys = sorted(k for k in set(mine) | set(extra) if mine.get(k) != extra.get(k))
        sort("extra_fields", (json_value(base("extra_fields")) or None) == extra,
             _shown({k: mine.get(k) for k in keys}, keys),
             _shown({k: extra.get(k) for k in keys}, keys))
        if conflicts and conflicts[-1][0] == "extra_fields" and keys == ["shortName"]:
            conflicts[-1] = ("short name", *conflicts[-1][1:])
    for name in ("location", "territory"):
        geom = getattr(rec, name)
        if isinstance(geom, tuple):
            geom = shapely.Point(geom)
        if name in changed and geom is not None and not same_geometry(geom, getattr(unit, name)):
            old = base(name)
            before = geometry.decode_audit_hex(reg.backend, old) if isinstance(old, str) else None
            sort(name, same_geometry(geom, before), _shown_geom(getattr(unit, name)),
                 _shown_geom(geom))
    return conflicts, mine_only


def _keep_here(rec: UnitRecord, unit: _Here, fields: set[str]) -> None:
    """Give the DHIS2 record this side's value of ``fields``: the upsert leaves them as
    they are (a None it reads as "keep", except a parent, where it is this side's root)."""
    if "name" in fields:
        rec.name = unit.name
    if "code" in fields:
        rec.code = unit.code
    if "opening_date" in fields:
        rec.opening_date = unit.opening_date
    if "closed_date" in fields:
        rec.closed_date = unit.closed_date
    if "parent" in fields:
        rec.parent_ref = unit.parent_ref
    if "type" in fields:
        rec.type_name = unit.type_name  # (None, a type cleared here: kept so too)
    if fields & {"short name", "extra_fields"}:
        rec.extra_fields = unit.extra_fields
    if "location" in fields:
        rec.location = unit.location
    if "territory" in fields:
        rec.territory = unit.territory


def _shown(value: Any, keys: list[str] | None = None) -> str:
    if value is None or value == "":
        return "(none)"
    if isinstance(value, dict):
        if keys == ["shortName"]:
            return _shown(value.get("shortName"))
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _shown_geom(geom: BaseGeometry | None) -> str:
    if geom is None:
        return "(none)"
    if geom.geom_type == "Point":
        return f"point {geom.x:.5f}, {geom.y:.5f}"
    return f"{geom.geom_type.lower()} of {len(shapely.get_coordinates(geom))} vertices"


#: a group's fields a pull brings up to date: DHIS2 property → the field named to the user
_GROUP_FIELDS = {"name": "name", "shortName": "short name", "code": "code"}


def group_values(g: dict[str, Any]) -> dict[str, Any]:
    """A DHIS2 group's name, short name and code (absent or empty: None), keyed by DHIS2
    property — what a pull writes, and records as DHIS2's (``group_names``)."""
    return {"name": g.get("name") or g.get("id"), "shortName": g.get("shortName") or None,
            "code": g.get("code") or None}


@dataclass
class _GroupSync:
    """What an incremental pull did to the groups (see :func:`_sync_groups`)."""

    counts: dict[str, int]
    #: one entry per group and field renamed both here and in DHIS2
    conflicts: list[dict[str, Any]]
    #: group uid → DHIS2's values as the next pull compares with them (``group_names``)
    recorded: dict[str, dict[str, Any]]
    #: groups kept as they are here although DHIS2 renamed them (not with prefer_remote;
    #: with it too when DHIS2's name is another group's here)
    held: int
    #: groups of the version named alike case aside (a new DHIS2 group named like one
    #: made here): one line per name, said by every pull until one is renamed
    warnings: list[str] = field(default_factory=list)


def _sync_groups(conn: Connection, version_id: int, groups: list[dict[str, Any]],
                 protected: set[tuple[int, int]] = frozenset(),  # type: ignore[assignment]
                 known: dict[str, dict[str, Any]] | None = None, *,
                 prefer_remote: bool = False) -> _GroupSync:
    """Incremental pull: groups (new, renamed) and their members as DHIS2 has them now —
    but what was changed here and not pushed yet stays as it is here.

    Memberships: one set or removed here (``protected``: group key, unit key) is kept.
    DHIS2 cannot have changed it the other way: a member is in or out, so DHIS2 either
    agrees already or has not changed — which is why ``prefer_remote`` keeps it too.

    Names, short names and codes: group renames leave no change-log row, so what was
    changed on which side is told by ``known``, each group's values as DHIS2 had them
    at the last pull or push (:meth:`Dhis2PullJob._group_bases`).  A field this side
    still has as DHIS2 had it takes DHIS2's value; one DHIS2 still has as it was was
    changed here only and is kept (the push sends it); one changed on both sides to
    different values — or, with nothing known, that differs — is a conflict: kept as it
    is here (and recorded as DHIS2 had it before, so every pull lists it again until
    settled), or with ``prefer_remote`` DHIS2's.

    A name DHIS2 gives a group is not taken when another group of the version has it
    (case aside, see :func:`storage.units.folded`): group names are unique in a version,
    and commands that take a group by name would hit either.  It is a conflict whatever
    the side (``kept``: here, with a ``reason``) until the other group here is renamed.  A
    new DHIS2 group named like a group here is still made — refusing it would drop
    DHIS2's group and its members — and ``warnings`` says so on every pull until settled."""
    known = known or {}
    keys = {r[1]: int(r[0]) for r in conn.execute(text(
        "SELECT group_key, source_ref FROM org_unit_group WHERE version_id = :v"),
        {"v": version_id}) if r[1]}
    names = {r[0]: {"name": r[1], "shortName": r[2] or None, "code": r[3] or None}
             for r in conn.execute(text(
                 "SELECT source_ref, name, short_name, code FROM org_unit_group "
                 "WHERE version_id = :v"), {"v": version_id})}
    #: group key → its name now (every group of the version, with a ref or not)
    taken = {int(r[0]): str(r[1]) for r in conn.execute(text(
        "SELECT group_key, name FROM org_unit_group WHERE version_id = :v"), {"v": version_id})}
    units = {r[0]: int(r[1]) for r in conn.execute(text(
        "SELECT source_ref, unit_key FROM org_unit WHERE version_id = :v AND source_ref IS NOT "
        "NULL"), {"v": version_id})}
    out = _GroupSync({"groups_created": 0, "groups_renamed": 0, "members_added": 0,
                      "members_removed": 0}, [], {}, 0)

    def takes_a_name_in_use(g: dict[str, Any]) -> bool:
        wanted = group_values(g)["name"]
        mine = names.get(g.get("id"))
        return (mine is None or mine["name"] != wanted) and same_name(
            wanted, [n for k, n in taken.items() if k != keys.get(g.get("id"))]) is not None

    # Groups whose DHIS2 name is another group's name here come last: DHIS2 may have
    # renamed that other group too (CHP -> 'CHP old', CHC -> 'CHP'), freeing the name.
    for g in sorted(groups, key=takes_a_name_in_use):
        gid = g.get("id")
        if not gid:
            continue
        theirs = group_values(g)
        recorded = dict(theirs)
        if gid not in keys:
            conn.execute(text(
                "INSERT INTO org_unit_group (version_id, source_ref, name, short_name, code) "
                "VALUES (:v, :r, :n, :s, :c)"),
                {"v": version_id, "r": gid, "n": theirs["name"], "s": theirs["shortName"],
                 "c": theirs["code"]})
            keys[gid] = int(conn.execute(text(
                "SELECT group_key FROM org_unit_group WHERE version_id = :v AND source_ref = :r"),
                {"v": version_id, "r": gid}).scalar_one())
            taken[keys[gid]] = theirs["name"]
            out.counts["groups_created"] += 1
        else:
            mine = names[gid]
            base = known.get(gid) or {}
            new = dict(mine)
            held = False
            for prop, label in _GROUP_FIELDS.items():
                if mine[prop] == theirs[prop]:
                    continue
                if prop in base and base[prop] == mine[prop]:
                    new[prop] = theirs[prop]  # renamed in DHIS2 only
                    continue
                if prop in base and base[prop] == theirs[prop]:
                    continue  # renamed here only: kept, the push sends it
                out.conflicts.append({
                    "kind": "group", "uid": gid, "name": mine["name"], "field": label,
                    "here": _shown(mine[prop]), "dhis2": _shown(theirs[prop]),
                    "kept": "dhis2" if prefer_remote else "here"})
                if prefer_remote:
                    new[prop] = theirs[prop]
                else:
                    held = True
                    if prop in base:
                        recorded[prop] = base[prop]
                    else:
                        del recorded[prop]  # still not known: listed again next time
            other = (None if new["name"] == mine["name"] else same_name(
                new["name"], [n for k, n in taken.items() if k != keys[gid]]))
            if other is not None:
                # DHIS2's name is another group's here: keep this side's, and say so on
                # every pull (recorded as DHIS2 had it before) until that one is renamed
                reason = f"name already used here by group {other!r}"
                listed = next((c for c in out.conflicts if c["uid"] == gid
                               and c["field"] == "name"), None)
                if listed is None:
                    out.conflicts.append({
                        "kind": "group", "uid": gid, "name": mine["name"], "field": "name",
                        "here": _shown(mine["name"]), "dhis2": _shown(theirs["name"]),
                        "kept": "here", "reason": reason})
                else:
                    listed |= {"kept": "here", "reason": reason}
                out.warnings.append(
                    f"DHIS2 renamed the group {mine['name']!r} ({gid}) to {theirs['name']!r}, "
                    f"the name of the group {other!r} here: kept as {mine['name']!r}. Rename "
                    f"{other!r} here (georeg group rename) and the next pull takes DHIS2's.")
                new["name"] = mine["name"]
                held = True
                if "name" in base:
                    recorded["name"] = base["name"]
                else:
                    recorded.pop("name", None)
            out.held += held
            if new != mine:
                conn.execute(text(
                    "UPDATE org_unit_group SET name = :n, short_name = :s, code = :c "
                    "WHERE version_id = :v AND source_ref = :r"),
                    {"v": version_id, "r": gid, "n": new["name"], "s": new["shortName"],
                     "c": new["code"]})
                out.counts["groups_renamed"] += 1
                taken[keys[gid]] = new["name"]
        out.recorded[gid] = recorded
        key = keys[gid]
        want = {units[m["id"]] for m in g.get("organisationUnits") or []
                if isinstance(m, dict) and m.get("id") in units}
        have = {int(r[0]) for r in conn.execute(text(
            "SELECT unit_key FROM group_membership WHERE version_id = :v AND group_key = :g"),
            {"v": version_id, "g": key})}
        add = [{"v": version_id, "g": key, "u": u} for u in sorted(want - have)
               if (key, u) not in protected]
        remove = [{"v": version_id, "g": key, "u": u} for u in sorted(have - want)
                  if (key, u) not in protected]
        if add:
            conn.execute(text("INSERT INTO group_membership (version_id, group_key, unit_key) "
                              "VALUES (:v, :g, :u)"), add)
        if remove:
            conn.execute(text("DELETE FROM group_membership WHERE version_id = :v AND "
                              "group_key = :g AND unit_key = :u"), remove)
        out.counts["members_added"] += len(add)
        out.counts["members_removed"] += len(remove)
    alike: dict[str, list[str]] = {}
    for name in taken.values():
        alike.setdefault(folded(name), []).append(name)
    out.warnings += [
        (f"{len(names)} groups are named {names[0]!r}" if len(set(names)) == 1 else
         f"{len(names)} groups are named alike (case aside): "
         + ", ".join(repr(n) for n in names))
        + ": commands that take a group by name cannot tell them apart. Rename one: "
        "georeg group rename REG REF NEW_NAME (the refs: georeg group list REG)."
        for names in alike.values() if len(names) > 1]
    return out


def pull(reg: Registry, client: Dhis2Client, source: str, *, since: str | None = None,
         prefer_remote: bool = False, **options: Any) -> dict[str, Any]:
    """Pull the org-unit tree from DHIS2 (see :class:`Dhis2PullJob`)."""
    return Dhis2PullJob(reg, client, source, since=since, prefer_remote=prefer_remote,
                        **options).run()


# --- push: the plan ---------------------------------------------------------------------------


def geometry_of(unit: ExportUnit) -> BaseGeometry | None:
    """DHIS2 keeps one geometry per unit: the territory when there is one, else the point."""
    return unit.territory if unit.territory is not None else unit.location


def to_geojson(geom: BaseGeometry | None) -> dict[str, Any] | None:
    if geom is None:
        return None
    if geom.geom_type == "MultiPolygon" and len(geom.geoms) == 1:
        geom = geom.geoms[0]
    return dict(json.loads(shapely.to_geojson(geom)))


def same_geometry(a: BaseGeometry | None, b: BaseGeometry | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    polygons = ("Polygon", "MultiPolygon")
    if a.geom_type in polygons and b.geom_type in polygons:
        a, b = geometry.as_multipolygon(a), geometry.as_multipolygon(b)
    if a is None or b is None or a.geom_type != b.geom_type:
        return False
    return bool(shapely.equals_exact(shapely.normalize(a), shapely.normalize(b), 1e-9))


@dataclass
class _Target:
    """One object to send, with what the user needs to recognise it in a report."""

    collection: str  # organisationUnits | organisationUnitGroups
    action: str  # create | update | close | delete
    obj: dict[str, Any]
    label: str


@dataclass
class _Plan:
    #: units whose code another unit takes in this push: their code is cleared first
    releases: list[_Target] = field(default_factory=list)
    creates: list[_Target] = field(default_factory=list)
    updates: list[_Target] = field(default_factory=list)
    groups: list[_Target] = field(default_factory=list)
    deletes: list[_Target] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {
        "create": 0, "update": 0, "close": 0, "delete": 0, "groups_create": 0,
        "groups_update": 0, "unchanged": 0, "codes_released": 0})
    notes: list[str] = field(default_factory=list)
    #: group uid → its name, short name and code as DHIS2 has them once the push is done
    #: (stored with the push: the next pull compares with them, see _sync_groups)
    group_names: dict[str, dict[str, Any]] = field(default_factory=dict)

    def note_change(self, change: dict[str, Any]) -> None:
        if len(self.changes) < MAX_LISTED:
            self.changes.append(change)


class Dhis2PushJob(Job[dict[str, Any]]):
    """Send what differs between a version and DHIS2 (see the module docstring)."""

    title = "DHIS2 push"

    def __init__(self, reg: Registry, client: Dhis2Client, source: str,
                 number: int | None = None, *, dry_run: bool = False,
                 allow_delete: bool = False, batch_size: int = BATCH_SIZE,
                 close_date: str | None = None, origin: str = "dhis2_push",
                 author: str | None = None) -> None:
        super().__init__()
        if not 1 <= batch_size <= 5000:
            raise InvalidInput("--batch-size must be between 1 and 5000.")
        self.reg, self.client, self.source, self.number = reg, client, source, number
        self.dry_run, self.allow_delete, self.batch_size = dry_run, allow_delete, batch_size
        self.close_date = _day(close_date) or dt.date.today().isoformat()
        self.origin, self.author = origin, author

    # --- the steps ------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        client = self.client
        start = client.request_count
        info = client.system_info()
        self.report(0, None, "Reading the version")
        data = read_version(self.reg, self.source, self.number)
        version = data.version
        units = list(data.units)
        self._check_refs(version, units, data.groups)
        self.report(0, None, "Reading DHIS2 org units")
        remote: dict[str, dict[str, Any]] = {}
        for _n, doc in fetch_unit_pages(client):
            for u in doc["organisationUnits"]:
                remote[u["id"]] = u
        remote_groups = {g["id"]: g for g in client.get_all(
            "organisationUnitGroups", "organisationUnitGroups", fields=":owner")}
        uids, group_uids, stored = self._assign_uids(version, units, data.groups,
                                                     set(remote) | set(remote_groups))
        plan = self._plan(units, data.groups, uids, group_uids, remote, remote_groups)
        report: dict[str, Any] = {
            "source": self.source, "version": version.to_dict(), "dry_run": self.dry_run,
            "dhis2": {"url": client.base_url, "version": info.get("version")},
            "planned": plan.counts, "uids_stored": stored, "changes": plan.changes,
            "notes": plan.notes, "batches": [], "errors": [],
            "stats": {"created": 0, "updated": 0, "deleted": 0, "ignored": 0, "total": 0},
        }
        labels = {str(t.obj.get("id")): t.label for t in plan.creates + plan.updates + plan.groups
                  + plan.deletes}
        failure: GeoregError | None = None
        try:
            self._send(plan, report, labels)
        except GeoregError as error:
            failure = error
        report["requests"] = client.request_count - start
        report["ok"] = failure is None and not report["errors"]
        if failure is not None:
            report["failure"] = failure.message
        if not self.dry_run:
            self._store_report(version, report, plan.group_names)
        if failure is not None:
            sent = sum(1 for b in report["batches"] if b.get("status") == "OK")
            raise type(failure)(
                f"DHIS2 push of {version.label} stopped after {sent} of "
                f"{report.get('batch_count', 0)} batch(es): {failure.message}\n"
                "The DHIS2 uids of new units were stored before sending: run the push again — "
                "what already landed is updated, never created twice.", report=report,
            ) from failure
        if report["errors"]:
            raise ConflictError(self._error_message(version, report), report=report)
        return report

    def _check_refs(self, version: VersionRef, units: list[ExportUnit],
                    groups: list[Any]) -> None:
        bad = [u for u in units if u.source_ref is not None and not is_uid(u.source_ref)]
        bad_groups = [g for g in groups if not g.ref.startswith("group:") and not is_uid(g.ref)]
        if bad or bad_groups:
            shown = ", ".join([f"{u.name!r} (ref {u.source_ref})" for u in bad[:5]]
                              + [f"group {g.name!r} (ref {g.ref})" for g in bad_groups[:5]])
            raise InvalidInput(
                f"{len(bad) + len(bad_groups)} unit(s)/group(s) of {version.label} have a ref "
                f"that is not a DHIS2 uid (11 letters/digits, a letter first): {shown}. "
                "Push a source that mirrors DHIS2 (pulled with 'georeg dhis2 pull'), or clear "
                "those refs so that uids are generated"
                + (self._ref_fix(version, bad) if bad else "."),
                units=[{"uuid": u.uuid, "name": u.name, "ref": u.source_ref} for u in bad])

    def _ref_fix(self, version: VersionRef, bad: list[ExportUnit]) -> str:
        """How to clear the units' refs — a survey's, that a merge brought in with the units
        it added, typically: in a draft (a published version cannot change), one command
        per unit, with this registry's own name (the push then makes their uids)."""
        reg = shlex.quote(self.reg.location.display())
        src = shlex.quote(version.source)
        head = ""
        number: int | str = version.number
        if version.status == "published":
            with self.reg.read() as conn:
                draft = newest_draft(conn, version.source_id)
            if draft is not None:
                head, number = f" in draft v{draft} (then push v{draft})", draft
            else:
                head, number = (f" in a new draft (georeg version new {reg} -s {src} --from "
                                f"{version.number}, then push it)", "N")
        shown = bad[:50]
        commands = "\n".join(f"  georeg unit edit {reg} -s {src} -v {number} {u.uuid} --ref ''"
                              for u in shown)
        more = (f"\n  … and {len(bad) - len(shown)} more (--json lists them all)"
                if len(bad) > len(shown) else "")
        return f"{head}:\n{commands}{more}"

    def _known_uids(self) -> tuple[dict[str, str], dict[int, str]]:
        """uids given to units and groups of published versions of this source (change log)."""
        units: dict[str, str] = {}
        groups: dict[int, str] = {}
        with self.reg.read() as conn:
            for entity, uuid_, after in conn.execute(text(
                    "SELECT entity, unit_uuid, after FROM change_log WHERE entity IN "
                    "('dhis2_uid', 'dhis2_group_uid') ORDER BY fid")):
                value = json_value(after) or {}
                if value.get("source") != self.source or not is_uid(value.get("uid")):
                    continue
                if entity == "dhis2_uid" and uuid_:
                    units[uuid_] = value["uid"]
                elif entity == "dhis2_group_uid" and value.get("group_key") is not None:
                    groups[int(value["group_key"])] = value["uid"]
        return units, groups

    def _assign_uids(self, version: VersionRef, units: list[ExportUnit], groups: list[Any],
                     taken: set[str]) -> tuple[dict[str, str], dict[str, str], int]:
        """ref → DHIS2 uid for every unit and group; new ones stored before anything is sent."""
        known_units, known_groups = self._known_uids()
        # uids of this version's units and groups; DHIS2's own uids on top for new ones
        ours = {u.source_ref for u in units if u.source_ref} | {
            g.ref for g in groups if not g.ref.startswith("group:")}

        def fresh(known: str | None, seed: str) -> str:
            if known and known not in ours:  # given by an earlier push: DHIS2 may have it
                ours.add(known)
                return known
            # derived from the unit (or group), so a dry run shows the uid the push makes
            uid, n = derived_uid(seed), 0
            while uid in ours or uid in taken:
                n += 1
                uid = derived_uid(f"{seed}#{n}")
            ours.add(uid)
            return uid

        uids: dict[str, str] = {}
        new_units: dict[str, str] = {}  # uuid -> uid
        for u in units:
            if u.source_ref:
                uids[u.ref] = u.source_ref
            else:
                uids[u.ref] = new_units[u.uuid] = fresh(known_units.get(u.uuid),
                                                        f"unit:{u.uuid}")
        group_uids: dict[str, str] = {}
        new_groups: dict[int, str] = {}  # group_key -> uid
        for g in groups:
            if g.ref.startswith("group:"):
                key = int(g.ref.split(":", 1)[1])
                group_uids[g.ref] = new_groups[key] = fresh(known_groups.get(key),
                                                            f"group:{version.id}:{key}")
            else:
                group_uids[g.ref] = g.ref
        if self.dry_run or not (new_units or new_groups):
            return uids, group_uids, 0
        # published versions cannot change: their uids go to the change log (by unit uuid)
        unit_rows = [{"uuid": k, "uid": v} for k, v in new_units.items()
                     if known_units.get(k) != v or version.status == "draft"]
        group_rows = [{"key": k, "uid": v} for k, v in new_groups.items()
                      if known_groups.get(k) != v or version.status == "draft"]
        with self.reg.write(origin=self.origin, author=self.author) as conn:
            if version.status == "draft":
                if unit_rows:
                    conn.execute(text(
                        "UPDATE org_unit SET source_ref = :uid WHERE version_id = :v AND "
                        "uuid = :uuid AND source_ref IS NULL"),
                        [r | {"v": version.id} for r in unit_rows])
                if group_rows:
                    conn.execute(text(
                        "UPDATE org_unit_group SET source_ref = :uid WHERE version_id = :v AND "
                        "group_key = :key AND source_ref IS NULL"),
                        [r | {"v": version.id} for r in group_rows])
                stored_refs = {r[0]: r[1] for r in conn.execute(text(
                    "SELECT uuid, source_ref FROM org_unit WHERE version_id = :v"),
                    {"v": version.id})}
                for u in units:  # a concurrent edit may have set a ref meanwhile: it wins
                    if u.uuid in new_units and stored_refs.get(u.uuid):
                        uids[u.ref] = stored_refs[u.uuid]
            else:
                _log(conn, version.id, "dhis2_uid", "assign",
                     [{"unit_uuid": r["uuid"], "after": {"uid": r["uid"], "source": self.source}}
                      for r in unit_rows])
                _log(conn, version.id, "dhis2_group_uid", "assign",
                     [{"after": {"uid": r["uid"], "group_key": r["key"], "source": self.source}}
                      for r in group_rows])
        return uids, group_uids, len(unit_rows) + len(group_rows)

    # --- what differs -------------------------------------------------------------------------

    def _plan(self, units: list[ExportUnit], groups: list[Any], uids: dict[str, str],
              group_uids: dict[str, str], remote: dict[str, dict[str, Any]],
              remote_groups: dict[str, dict[str, Any]]) -> _Plan:
        plan = _Plan()
        names = {uid: r.get("name") or uid for uid, r in remote.items()}
        by_uid: dict[str, ExportUnit] = {}
        for u in units:
            by_uid[uids[u.ref]] = u
            names[uids[u.ref]] = u.name
        updates: dict[str, dict[str, Any]] = {}  # uid -> {dhis2 property: new value}
        derived_opening = 0
        for u in units:
            uid = uids[u.ref]
            label = self._label(u, uid)
            parent = uids.get(u.parent_ref) if u.parent_ref else None
            shape = geometry_of(u)
            extra = u.extra_fields or {}
            old = remote.get(uid)
            if old is None:
                obj: dict[str, Any] = {
                    "id": uid, "name": u.name,
                    "shortName": extra.get("shortName") or short_name(u.name),
                    "openingDate": u.opening_date or DEFAULT_OPENING_DATE,
                }
                if not u.opening_date:
                    derived_opening += 1
                for key, value in (("code", u.code), ("closedDate", u.closed_date),
                                   ("parent", {"id": parent} if parent else None),
                                   ("geometry", to_geojson(shape))):
                    if value is not None:
                        obj[key] = value
                for key in ("description", "url", "contactPerson", "phoneNumber"):
                    if extra.get(key):
                        obj[key] = extra[key]
                plan.creates.append(_Target("organisationUnits", "create", obj, label))
                plan.counts["create"] += 1
                plan.note_change({"action": "create", "kind": "unit", "uid": uid,
                                  "name": u.name, "where": " / ".join(u.ancestors),
                                  "parent": names.get(parent) if parent else None})
                continue
            changes: dict[str, tuple[Any, Any]] = {}
            # names are stored trimmed: spaces DHIS2 has around a name are not a change
            same_name = u.name == (old.get("name") or "").strip()
            if not same_name:
                changes["name"] = (old.get("name"), u.name)
            want_short = str(extra.get("shortName") or (
                old.get("shortName") if same_name and old.get("shortName")
                else short_name(u.name)))
            if want_short.strip() != (old.get("shortName") or "").strip():
                changes["shortName"] = (old.get("shortName"), want_short)
            if (u.code or None) != (old.get("code") or None):
                changes["code"] = (old.get("code"), u.code)
            old_parent = (old.get("parent") or {}).get("id")
            if parent is None and not u.parent_ref:
                parent = old_parent  # a root of this version (a subtree) keeps its DHIS2 parent
            if parent != old_parent:
                changes["parent"] = (old_parent, parent)
            if u.opening_date and u.opening_date != _day(old.get("openingDate")):
                changes["openingDate"] = (_day(old.get("openingDate")), u.opening_date)
            if _day(u.closed_date) != _day(old.get("closedDate")):
                changes["closedDate"] = (_day(old.get("closedDate")), u.closed_date)
            try:
                old_shape = geometry.from_geojson(old.get("geometry"))
            except (ValueError, TypeError, AttributeError, KeyError, IndexError):
                old_shape = None
            if not same_geometry(shape, old_shape):
                changes["geometry"] = (old.get("geometry"), to_geojson(shape))
            if not changes:
                plan.counts["unchanged"] += 1
                continue
            updates[uid] = {k: v[1] for k, v in changes.items()}
            plan.counts["update"] += 1
            shown = {}
            for k, (a, b) in changes.items():
                if k == "parent":
                    shown["parent"] = _change(names.get(a) if a else None,
                                              names.get(b) if b else None)
                elif k == "geometry":
                    shown["geometry"] = _change(_geom_kind(a), _geom_kind(b))
                else:
                    shown[FIELD_NAMES.get(k, k)] = _change(a, b)
            plan.note_change({"action": "update", "kind": "unit", "uid": uid, "name": u.name,
                              "fields": shown})
        if derived_opening:
            plan.notes.append(f"{derived_opening} new unit(s) have no opening date; DHIS2 needs "
                              f"one, so they are sent with {DEFAULT_OPENING_DATE} (DHIS2's "
                              "default).")
        # units DHIS2 has below our roots that the version no longer has: close (or delete)
        roots = {uids[u.ref] for u in units if not u.parent_ref} & set(remote)
        missing = [r for uid, r in remote.items() if uid not in by_uid
                   and roots & set((r.get("path") or "").strip("/").split("/"))]
        deleted: set[str] = set()
        for r in missing:
            uid = r["id"]
            if self.allow_delete:
                deleted.add(uid)
                plan.counts["delete"] += 1
                plan.note_change({"action": "delete", "kind": "unit", "uid": uid,
                                  "name": r.get("name")})
            elif not r.get("closedDate"):
                updates[uid] = {"closedDate": self.close_date}
                plan.counts["close"] += 1
                plan.note_change({"action": "close", "kind": "unit", "uid": uid,
                                  "name": r.get("name"), "closed_date": self.close_date})
        if deleted:
            order = sorted(deleted, key=lambda uid: -int(remote[uid].get("level") or 0))
            plan.deletes = [_Target("organisationUnits", "delete", {"id": uid},
                                    f"unit {names.get(uid)!r} (uid {uid})") for uid in order]
        # DHIS2 checks a code against the codes stored before the import, not against the
        # import's other objects: a code moving to another unit (a replacement facility
        # taking a closed one's code, two units swapping codes) is refused (E5003) unless
        # its holder lets go of it in an earlier import
        # (who holds each code after the push, later lines winning: units left out of the
        # version, then units of the version keeping theirs, then new and changed codes)
        holders = {str(r["code"]): uid for uid, r in remote.items()
                   if r.get("code") and uid not in by_uid and uid not in deleted}
        holders |= {str(r["code"]): uid for uid, r in remote.items()
                    if r.get("code") and uid in by_uid and "code" not in updates.get(uid, {})}
        holders |= {str(values["code"]): uid for uid, values in updates.items()
                    if values.get("code")}
        holders |= {str(t.obj["code"]): str(t.obj["id"]) for t in plan.creates
                    if t.obj.get("code")}
        if updates:
            owners = fetch_by_ids(self.client, "organisationUnits", sorted(updates), ":owner")
            for uid, values in updates.items():
                current = owners.get(uid)
                if current is None:
                    plan.notes.append(f"{names.get(uid)!r} (uid {uid}) disappeared from DHIS2 "
                                      "during the push; not updated.")
                    continue
                obj = {k: v for k, v in current.items()
                       if k not in ("path", "level", "href", "children", "ancestors",
                                    "displayName", "displayShortName", "access")}
                code = current.get("code")
                taker = holders.get(str(code)) if code else None
                if taker is not None and taker != uid:
                    released = {k: v for k, v in obj.items() if k != "code"}
                    label = f"unit {names.get(uid)!r} (uid {uid})"
                    plan.releases.append(_Target("organisationUnits", "release", released,
                                                 label))
                    plan.counts["codes_released"] += 1
                    plan.note_change({"action": "release code", "kind": "unit", "uid": uid,
                                      "name": names.get(uid), "code": code,
                                      "taken_by": names.get(taker)})
                    if "code" not in values:  # it is closed or keeps no code: it loses it
                        values = values | {"code": None}
                for key, value in values.items():
                    if key == "parent":
                        value = {"id": value} if value else None
                    if value is None:
                        obj.pop(key, None)
                    else:
                        obj[key] = value
                unit = by_uid.get(uid)
                label = self._label(unit, uid) if unit else f"unit {names.get(uid)!r} (uid {uid})"
                action = "close" if uid not in by_uid else "update"
                plan.updates.append(_Target("organisationUnits", action, obj, label))
        self._plan_groups(plan, units, groups, uids, group_uids, remote_groups, deleted, names)
        return plan

    def _plan_groups(self, plan: _Plan, units: list[ExportUnit], groups: list[Any],
                     uids: dict[str, str], group_uids: dict[str, str],
                     remote_groups: dict[str, dict[str, Any]], deleted: set[str],
                     names: dict[str, str]) -> None:
        ours = set(uids.values())
        members: dict[str, list[str]] = {g.ref: [] for g in groups}
        for u in units:
            for ref in u.groups:
                members.setdefault(ref, []).append(uids[u.ref])
        for g in groups:
            gid = group_uids[g.ref]
            want = members.get(g.ref, [])
            old = remote_groups.get(gid)
            if old is None:
                obj: dict[str, Any] = {"id": gid, "name": g.name,
                                       "shortName": g.short_name or short_name(g.name),
                                       "organisationUnits": [{"id": m} for m in want]}
                if g.code:
                    obj["code"] = g.code
                plan.group_names[gid] = group_values(obj)
                plan.groups.append(_Target("organisationUnitGroups", "create", obj,
                                           f"group {g.name!r} (uid {gid})"))
                plan.counts["groups_create"] += 1
                plan.note_change({"action": "create", "kind": "group", "uid": gid,
                                  "name": g.name, "members": len(want)})
                continue
            old_members = [str(m["id"]) for m in old.get("organisationUnits") or []
                           if isinstance(m, dict) and m.get("id")]
            want_set, old_set = set(want), set(old_members)
            # members outside this version are DHIS2's business: kept as they are
            new_members = [m for m in old_members
                           if (m not in ours and m not in deleted) or m in want_set]
            new_members += [m for m in want if m not in old_set]
            changed: dict[str, Any] = {}
            if set(new_members) != set(old_members):
                added = sorted(set(new_members) - set(old_members))
                removed = sorted(set(old_members) - set(new_members))
                changed["added"] = [names.get(m, m) for m in added]
                changed["removed"] = [names.get(m, m) for m in removed]
            obj = {k: v for k, v in old.items()
                   if k not in ("href", "displayName", "displayShortName", "access")}
            for key, value in (("name", g.name), ("shortName", g.short_name),
                               ("code", g.code)):
                if value and value != old.get(key):
                    changed[key] = _change(old.get(key), value)
                    obj[key] = value
            plan.group_names[gid] = group_values(obj)
            if not changed:
                continue
            obj["organisationUnits"] = [{"id": m} for m in new_members]
            plan.groups.append(_Target("organisationUnitGroups", "update", obj,
                                       f"group {g.name!r} (uid {gid})"))
            plan.counts["groups_update"] += 1
            plan.note_change({"action": "update", "kind": "group", "uid": gid, "name": g.name,
                              "fields": changed})

    def _label(self, unit: ExportUnit | None, uid: str) -> str:
        if unit is None:
            return f"unit (uid {uid})"
        where = " / ".join(unit.ancestors)
        return f"unit {unit.name!r} (uid {uid}" + (f", in {where})" if where else ")")

    # --- sending ---------------------------------------------------------------------------------

    def _batches(self, targets: list[_Target]) -> list[list[_Target]]:
        return [targets[i : i + self.batch_size] for i in range(0, len(targets), self.batch_size)]

    def _send(self, plan: _Plan, report: dict[str, Any], labels: dict[str, str]) -> None:
        client = self.client
        mode = "VALIDATE" if self.dry_run else "COMMIT"
        main = self._batches(plan.releases) + self._batches(
            plan.creates + plan.updates + plan.groups)
        deletes = self._batches(plan.deletes)
        released = {str(t.obj["id"]) for t in plan.releases}
        total = len(main) + len(deletes)
        report["batch_count"] = total
        created_before: set[str] = set()
        for n, (batch, strategy) in enumerate(
                [(b, "CREATE_AND_UPDATE") for b in main] + [(b, "DELETE") for b in deletes],
                start=1):
            self.report(n - 1, total, f"Sending batch {n} of {total} to DHIS2")
            payload: dict[str, list[dict[str, Any]]] = {}
            for t in batch:
                payload.setdefault(t.collection, []).append(t.obj)
            result = client.import_metadata(payload, import_mode=mode,
                                            import_strategy=strategy, atomic_mode="ALL")
            # a dry run validates each batch against DHIS2 as it is: what an earlier batch
            # would have created, or the codes it would have released, are not there yet
            errors = [e for e in result.errors
                      if not (self.dry_run and (_refers_to(e, created_before) or (
                          e.error_code == "E5003" and _mentions(e, released))))]
            entry = {"batch": n, "strategy": strategy, "objects": len(batch),
                     "status": "OK" if not errors else "ERROR", "dhis2_status": result.status,
                     "http_status": result.http_status, "envelope": result.envelope,
                     "stats": result.stats}
            report["batches"].append(entry)
            for k in report["stats"]:
                report["stats"][k] += result.stats.get(k, 0)
            report["errors"].extend(self._user_errors(errors, batch, n, labels, result))
            created_before.update(t.obj["id"] for t in batch if t.action == "create")
            if errors and not self.dry_run:
                for m in range(n + 1, total + 1):
                    report["batches"].append({"batch": m, "status": "NOT SENT"})
                break
        self.report(total, total, "Done")

    def _user_errors(self, errors: list[ObjectError], batch: list[_Target], n: int,
                     labels: dict[str, str], result: MetadataImportResult
                     ) -> list[dict[str, Any]]:
        out = []
        by_type: dict[str, list[_Target]] = {}
        for t in batch:
            by_type.setdefault(t.collection, []).append(t)
        for e in errors:
            target = None
            if e.uid:
                target = next((t for t in batch if t.obj.get("id") == e.uid), None)
            if target is None and e.index is not None:
                coll = ("organisationUnitGroups" if e.klass == "OrganisationUnitGroup"
                        else "organisationUnits")
                items = by_type.get(coll, [])
                target = items[e.index] if 0 <= e.index < len(items) else None
            label = (target.label if target else labels.get(e.uid or "")
                     or (f"{e.klass} (uid {e.uid})" if e.uid else "the batch"))
            what = FIELD_NAMES.get(e.property or "", e.property)
            text_ = (f"{label}: {'field ' + repr(what) + ': ' if what else ''}DHIS2 says: "
                     f"{e.message}" + (f" ({e.error_code})" if e.error_code else ""))
            out.append({"batch": n, "uid": e.uid, "object": label, "kind": e.klass,
                        "action": target.action if target else None, "field": what,
                        "dhis2_property": e.property, "error_code": e.error_code,
                        "dhis2_message": e.message, "message": text_})
        if not errors and result.status == "ERROR" and not result.ok and not self.dry_run:
            out.append({"batch": n, "uid": None, "object": "the batch", "message":
                        f"DHIS2 reported status ERROR for batch {n} without saying why"
                        f"{': ' + result.message if result.message else ''}."})
        return out

    def _error_message(self, version: VersionRef, report: dict[str, Any]) -> str:
        errors = report["errors"]
        head = (f"DHIS2 would refuse {len(errors)} change(s) of {version.label} (dry run: "
                "nothing was changed):" if self.dry_run else
                f"DHIS2 refused {len(errors)} change(s) of {version.label}; the batch holding "
                "them was not imported (all or nothing) and later batches were not sent:")
        lines = [f"  - {e['message']}" for e in errors[:15]]
        if len(errors) > 15:
            lines.append(f"  … and {len(errors) - 15} more (see the report: --json or --report).")
        tail = "" if self.dry_run else (
            "\nFix them in the version and push again: what already landed is not sent twice.")
        return "\n".join([head, *lines]) + tail

    def _store_report(self, version: VersionRef, report: dict[str, Any],
                      group_names: dict[str, dict[str, Any]]) -> None:
        summary = {k: report[k] for k in ("dhis2", "planned", "stats", "uids_stored",
                                          "requests", "ok", "notes")}
        summary["batches"] = report["batches"]
        summary["errors"] = [e["message"] for e in report["errors"][:100]]
        if report.get("failure"):
            summary["failure"] = report["failure"]
        if report["ok"]:  # (what DHIS2 has after a push that failed part-way is not known)
            summary["group_names"] = group_names
        with self.reg.write(origin=self.origin, author=self.author) as conn:
            _log(conn, version.id, "dhis2_push", "push" if report["ok"] else "push_failed",
                 [{"after": summary}])


def _change(before: Any, after: Any) -> dict[str, Any]:
    """One field's change in a push report, saying what it is: a value ``before`` and
    ``after`` — unlike a group's ``added``/``removed`` member lists, which are lists of
    names (two members removed are not a rename from one to the other)."""
    return {"before": before, "after": after}


def _geom_kind(geojson: Any) -> str | None:
    if not isinstance(geojson, dict):
        return None
    return f"{geojson.get('type')} (changed)"


def _refers_to(error: ObjectError, uids: set[str]) -> bool:
    """A dry run validates batch by batch: a reference to a unit an earlier batch would
    create is not an error (it would exist by then)."""
    if error.error_code not in ("E5002", "E4015"):
        return False
    return _mentions(error, uids)


def _mentions(error: ObjectError, uids: set[str]) -> bool:
    text_ = f"{error.message} {error.value or ''}"
    return any(uid in text_ for uid in uids)


def push(reg: Registry, client: Dhis2Client, source: str, number: int | None = None, *,
         dry_run: bool = False, allow_delete: bool = False, **options: Any) -> dict[str, Any]:
    """Push a version to DHIS2 (see :class:`Dhis2PushJob`); raises ConflictError with the
    report (``error.details['report']``) when DHIS2 refuses something."""
    return Dhis2PushJob(reg, client, source, number, dry_run=dry_run,
                        allow_delete=allow_delete, **options).run()


def push_history(reg: Registry, source: str, *, limit: int = 20) -> list[dict[str, Any]]:
    """The stored push reports of a source, newest first."""
    with reg.read() as conn:
        rows = conn.execute(text(
            "SELECT c.fid, c.at, v.number, c.op, c.after, c.author, c.origin FROM change_log c "
            "JOIN source_version v ON v.fid = c.version_id JOIN data_source s "
            "ON s.fid = v.source_id WHERE s.name = :s AND c.entity = 'dhis2_push' "
            "ORDER BY c.fid DESC LIMIT :n"), {"s": source, "n": limit}).all()
    return [{"id": r[0], "at": r[1], "version": r[2], "op": r[3], "report": json_value(r[4]),
             "author": r[5], "origin": r[6]} for r in rows]


__all__ = ["Dhis2PullJob", "Dhis2PushJob", "pull", "push", "push_history"]
