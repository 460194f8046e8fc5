"""A fake DHIS2 server for the tests: real HTTP on 127.0.0.1, state you can write to.

Starts from the recorded responses of the Sierra Leone demo server (2.36 or
2.41, ``tests/data/dhis2_recordings``): its org units, levels and groups become
the fake's state, and every read is *generated from that state* — so the
contract test (``test_fake_dhis2_contract.py``) proves that the generation
(paging, pagers, the ``fields`` syntax) reproduces the recordings exactly.
Writes are real: ``POST /api/metadata`` (VALIDATE or COMMIT, the import
strategies and atomic modes) and ``PUT /api/organisationUnitGroups/{id}``
validate like DHIS2 does and change the state, and answer with import reports
in the envelope of the version (bare ImportReport with HTTP 200 on 2.36 or on
``/api/37/…``; the WebMessage wrapper, HTTP 409 on errors, from 2.38).

Also: basic auth and personal access tokens (2.37+ only, as in DHIS2), a log
of every request (``fake.requests``) and fault injection for the next N
matching requests (``fake.inject("drop_mid", count=2, method="POST")``):

* ``timeout`` — sleep ``seconds`` first (then answer, as a slow server does);
* ``error500`` — answer 500 without doing anything;
* ``drop`` — close the connection without answering (nothing done);
* ``drop_mid`` — do the work (commit!), then cut the answer in the middle;
* ``conflict409`` — answer 409 without doing anything.

Properties the recordings do not have (shortName, openingDate, created,
lastUpdated) are filled the way the Sierra Leone server fills them: shortName
= name (at most 50 characters), openingDate 1970-01-01.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import functools
import json
import math
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import yaml

RECORDINGS = Path(__file__).parent / "data" / "dhis2_recordings"
VERSIONS = ("2.36", "2.41")
CONTEXT_PATH = "http://localhost:8080"  # what the recorded server called itself
BASE_TIMESTAMP = "2024-01-01T00:00:00.000"
DEFAULT_OPENING = "1970-01-01T00:00:00.000"

OU = "org.hisp.dhis.organisationunit.OrganisationUnit"
OUG = "org.hisp.dhis.organisationunit.OrganisationUnitGroup"
OUGS = "org.hisp.dhis.organisationunit.OrganisationUnitGroupSet"
UID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{10}$")
FAULT_KINDS = ("timeout", "error500", "drop", "drop_mid", "conflict409", "tracker_exception")


# --- recordings -------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    file: str
    method: str
    url: str
    status: int
    body: str
    content_type: str

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.url).query, keep_blank_values=True)

    @property
    def path_and_query(self) -> str:
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def json(self) -> Any:
        return json.loads(self.body)


@functools.cache
def recordings(version: str) -> tuple[Recording, ...]:
    """Every recorded response of one version (``responses`` library YAML files)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = []
    for path in sorted((RECORDINGS / version).glob("*.yaml")):
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
        for item in doc.get("responses") or []:
            r = item["response"]
            out.append(Recording(path.name, r["method"], r["url"], int(r["status"]),
                                 r["body"], r.get("content_type") or "text/plain"))
    return tuple(out)


def _recorded(version: str, file: str) -> list[Any]:
    return [r.json() for r in recordings(version) if r.file == file and r.method == "GET"
            and r.body.lstrip().startswith(("{", "["))]


# --- fields syntax ------------------------------------------------------------------------


def _split_top(spec: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in spec:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return [t for t in out if t]


@functools.lru_cache(maxsize=256)
def parse_fields(spec: str) -> tuple[tuple[str, str | None], ...]:
    """``id,name,parent[id,name],!code`` → [(name, sub-spec or None)] (``!x`` kept as is)."""
    out = []
    for token in _split_top(spec):
        sub = None
        if "[" in token and token.endswith("]"):
            token, sub = token[: token.index("[")], token[token.index("[") + 1 : -1]
        token = token.split("~", 1)[0].strip()  # transformers are not supported: ignored
        out.append((token, sub))
    return tuple(out)


# --- the state ----------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _parse_time(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    text = str(value).strip().replace("Z", "")
    text = re.sub(r"[+-]\d{2}:?\d{2}$", "", text) if "T" in text else text
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            return dt.datetime.combine(dt.date.fromisoformat(text[:10]), dt.time())
        except ValueError:
            return None


def _dhis2_date(value: Any) -> Any:
    """Dates as DHIS2 writes them: ``2020-01-01T00:00:00.000``."""
    parsed = _parse_time(value)
    if parsed is None:
        return value
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def new_uid() -> str:
    return secrets.choice(string.ascii_letters) + "".join(
        secrets.choice(string.ascii_letters + string.digits) for _ in range(10))


UNIT_COMPUTED = ("level", "path", "children", "ancestors", "organisationUnitGroups",
                 "displayName", "displayShortName", "href", "access", "favorite", "favorites")
GROUP_COMPUTED = ("groupSets", "displayName", "displayShortName", "href", "access")
SET_COMPUTED = ("displayName", "displayShortName", "href", "access")
IDENTIFIABLE = ("id", "name", "code", "created", "lastUpdated", "displayName")
NAMEABLE = IDENTIFIABLE + ("shortName", "description", "displayShortName")


class State:
    """Org units, groups, group sets and levels, kept in the server's order."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.units: dict[str, dict[str, Any]] = {}
        for page in _recorded(version, "organisation_units.yaml"):
            for u in page["organisationUnits"]:
                path = u.get("path", "").strip("/").split("/")
                unit: dict[str, Any] = {
                    "id": u["id"], "name": u["name"], "shortName": u["name"][:50].strip(),
                    "openingDate": DEFAULT_OPENING, "created": BASE_TIMESTAMP,
                    "lastUpdated": BASE_TIMESTAMP,
                    "parent": path[-2] if len(path) > 1 else None,
                }
                for key in ("code", "geometry", "openingDate", "closedDate", "shortName"):
                    if u.get(key) is not None:
                        unit[key] = u[key]
                self.units[u["id"]] = unit
        self.groups: dict[str, dict[str, Any]] = {}
        for page in _recorded(version, "organisation_unit_groups.yaml"):
            for g in page["organisationUnitGroups"]:
                self.groups[g["id"]] = {
                    "id": g["id"], "name": g["name"], "shortName": g["name"][:50],
                    "created": BASE_TIMESTAMP, "lastUpdated": BASE_TIMESTAMP,
                    "organisationUnits": [m["id"] for m in g.get("organisationUnits") or []],
                }
        self.levels: list[dict[str, Any]] = []
        for doc in _recorded(version, "organisation_unit_levels.yaml"):
            self.levels.extend(doc)
        sets = json.loads((RECORDINGS / "iaso_groupsets.json").read_text(encoding="utf-8"))
        self.group_sets: dict[str, dict[str, Any]] = {}
        for gs in sets["organisationUnitGroupSets"]:
            self.group_sets[gs["id"]] = {
                "id": gs["id"], "name": gs["name"], "shortName": gs["name"][:50],
                "compulsory": False, "dataDimension": True,
                "includeSubhierarchyInAnalytics": False,
                "created": BASE_TIMESTAMP, "lastUpdated": BASE_TIMESTAMP,
                "organisationUnitGroups": [g["id"] for g in gs["organisationUnitGroups"]
                                           if g["id"] in self.groups],
            }

        self.data_elements: dict[str, dict[str, Any]] = {}
        for page in _recorded(version, "data_elements.yaml"):
            for de in page.get("dataElements") or []:
                self.data_elements[de["id"]] = dict(de)
        self.programs = copy.deepcopy(PROGRAMS)
        self.events: dict[str, dict[str, Any]] = {}
        #: (dataElement, period, orgUnit, categoryOptionCombo, attributeOptionCombo) → value
        self.data_values: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}

    # --- derived properties --------------------------------------------------------

    def ancestors(self, uid: str) -> list[str]:
        out: list[str] = []
        parent = self.units[uid].get("parent")
        while parent is not None and parent in self.units and parent not in out:
            out.append(parent)
            parent = self.units[parent].get("parent")
        return list(reversed(out))

    def path(self, uid: str) -> str:
        return "/" + "/".join([*self.ancestors(uid), uid])

    def children(self, uid: str) -> list[str]:
        return [u for u, o in self.units.items() if o.get("parent") == uid]

    def groups_of(self, uid: str) -> list[str]:
        return [g for g, o in self.groups.items() if uid in o["organisationUnits"]]


# --- rendering ---------------------------------------------------------------------------


class Props:
    """Every property an object has — stored ones and computed ones (computed only when
    asked for: children and group lists mean scanning the state).  References come back as
    (kind, id) or (kind, [ids])."""

    COMPUTED = {
        "unit": ("displayName", "displayShortName", "level", "path", "parent", "children",
                 "ancestors", "organisationUnitGroups"),
        "group": ("displayName", "displayShortName", "organisationUnits", "groupSets"),
        "set": ("displayName", "displayShortName", "organisationUnitGroups"),
    }

    def __init__(self, state: State, kind: str, obj: dict[str, Any]) -> None:
        self.s, self.kind, self.obj = state, kind, obj

    def keys(self) -> list[str]:
        computed = self.COMPUTED.get(self.kind, ())
        return [k for k in self.obj if k not in computed] + list(computed)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, name: object) -> bool:
        return name in self.obj or name in self.COMPUTED.get(self.kind, ())

    def get(self, name: str, default: Any = None) -> Any:
        s, obj, kind = self.s, self.obj, self.kind
        if name in ("displayName", "displayShortName") and kind in self.COMPUTED:
            return obj.get("name" if name == "displayName" else "shortName")
        if kind == "unit":
            uid = obj["id"]
            if name == "level":
                return len(s.ancestors(uid)) + 1
            if name == "path":
                return s.path(uid)
            if name == "parent":
                return ("unit", obj["parent"]) if obj.get("parent") else None
            if name == "children":
                return ("units", s.children(uid))
            if name == "ancestors":
                return ("units", s.ancestors(uid))
            if name == "organisationUnitGroups":
                return ("groups", s.groups_of(uid))
        elif kind == "group":
            if name == "organisationUnits":
                return ("units", list(obj["organisationUnits"]))
            if name == "groupSets":
                return ("sets", [k for k, v in s.group_sets.items()
                                 if obj["id"] in v["organisationUnitGroups"]])
        elif kind == "set" and name == "organisationUnitGroups":
            return ("groups", list(obj["organisationUnitGroups"]))
        return obj.get(name, default)


class Renderer:
    """Objects of the state → JSON, following a ``fields`` spec."""

    def __init__(self, state: State) -> None:
        self.s = state

    def _props(self, kind: str, obj: dict[str, Any]) -> Props:
        return Props(self.s, kind, obj)

    def _owner(self, kind: str, obj: dict[str, Any]) -> list[str]:
        computed = {"unit": UNIT_COMPUTED, "group": GROUP_COMPUTED,
                    "set": SET_COMPUTED}.get(kind, ())
        names = [k for k in obj if k not in computed]
        if kind == "unit":
            names.append("path")
        return names

    def render(self, kind: str, obj: dict[str, Any], spec: str) -> dict[str, Any]:
        props = self._props(kind, obj)
        wanted: list[tuple[str, str | None]] = []
        excluded: set[str] = set()
        for name, sub in parse_fields(spec):
            if name.startswith("!"):
                excluded.add(name[1:])
            elif name in (":all", "*"):
                wanted.extend((k, None) for k in props)
            elif name in (":owner", ":persisted"):
                wanted.extend((k, None) for k in self._owner(kind, obj))
            elif name == ":identifiable":
                wanted.extend((k, None) for k in IDENTIFIABLE)
            elif name == ":nameable":
                wanted.extend((k, None) for k in NAMEABLE)
            else:
                wanted.append((name, sub))
        out: dict[str, Any] = {}
        for name, sub in wanted:
            if name in excluded or name not in props:
                continue
            value = props.get(name)
            if value is None:
                continue
            if isinstance(value, tuple):  # a reference or a collection of references
                ref_kind, ref = value
                if isinstance(ref, list):
                    out[name] = [self._ref(ref_kind, r, sub) for r in ref]
                else:
                    out[name] = self._ref(ref_kind, ref, sub)
            else:
                out[name] = value  # serialised at once: no copy needed
        return out

    def _ref(self, kind: str, uid: str, sub: str | None) -> dict[str, Any]:
        if not sub:
            return {"id": uid}
        table = {"unit": self.s.units, "units": self.s.units, "groups": self.s.groups,
                 "sets": self.s.group_sets}[kind]
        obj = table.get(uid)
        if obj is None:
            return {"id": uid}
        single = {"units": "unit", "groups": "group", "sets": "set"}.get(kind, kind)
        return self.render(single, obj, sub)


# --- filters ------------------------------------------------------------------------------


class BadRequest(Exception):
    pass


def _filter_value(props: Props, path: str) -> Any:
    head, _, rest = path.partition(".")
    value = props.get(head)
    if isinstance(value, tuple):
        kind, ref = value
        if rest in ("", "id"):
            return ref
        return None
    return value


def _compare(value: Any, op: str, arg: str) -> bool:
    if op in ("null", "!null"):
        return (value is None) == (op == "null")
    if op in ("empty", "!empty"):
        return (not value) == (op == "empty")
    if value is None:
        return op in ("!eq", "ne", "neq", "!in", "!like", "!ilike")
    if isinstance(value, list):  # collection: match if any member matches
        return any(_compare(v, op, arg) for v in value)
    if op in ("in", "!in"):
        items = [x.strip() for x in arg.strip("[]").split(",") if x.strip()]
        return (str(value) in items) == (op == "in")
    if op in ("like", "!like", "ilike", "!ilike", "$like", "like$", "$ilike", "ilike$"):
        a, b = (str(value), arg) if "i" not in op else (str(value).lower(), arg.lower())
        if op.startswith("$"):
            hit = a.startswith(b)
        elif op.endswith("$"):
            hit = a.endswith(b)
        else:
            hit = b in a
        return hit != op.startswith("!")
    if isinstance(value, bool):
        left: Any = value
        right: Any = arg.lower() == "true"
    elif isinstance(value, int):
        left, right = value, int(arg)
    elif _parse_time(value) is not None and _parse_time(arg) is not None and \
            re.match(r"^\d{4}-\d{2}-\d{2}", str(value)):
        left, right = _parse_time(value), _parse_time(arg)
    else:
        left, right = str(value), arg
    if op == "ieq":
        return str(left).lower() == str(right).lower()
    ops = {"eq": left == right, "!eq": left != right, "ne": left != right, "neq": left != right,
           "gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}
    if op not in ops:
        raise BadRequest(f"Operator not supported: `{op}`")
    return bool(ops[op])


def matches(props: Props, filters: list[str], junction: str = "AND") -> bool:
    if not filters:
        return True
    results = []
    for f in filters:
        parts = f.split(":", 2)
        if len(parts) < 2:
            raise BadRequest(f"Unable to parse filter `{f}`")
        path, op = parts[0], parts[1]
        arg = parts[2] if len(parts) > 2 else ""
        if path.partition(".")[0] not in props and path not in ("id",):
            raise BadRequest(f"Unknown path property: `{path}`")
        results.append(_compare(_filter_value(props, path), op, arg))
    return all(results) if junction.upper() != "OR" else any(results)


# --- faults and the request log -----------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    remaining: int
    method: str | None = None
    path: str | None = None  # substring of the request path
    seconds: float = 2.0

    def matches(self, method: str, path: str) -> bool:
        return (self.remaining > 0 and (self.method is None or self.method == method)
                and (self.path is None or self.path in path))


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    body: Any
    status: int = 0
    fault: str | None = None
    auth: str | None = None

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.query if k == name), None)


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list → JSON; str → text/plain
    headers: dict[str, str] = field(default_factory=dict)


def web_message(status: int, message: str, *, state: str = "ERROR", **extra: Any) -> Reply:
    names = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
             405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error"}
    return Reply(status, {"httpStatus": names.get(status, str(status)), "httpStatusCode": status,
                          "status": state, "message": message, **extra})


# --- form data: events (/api/events, /api/tracker) and data value sets ------------------------

#: The event program the fake knows.  Not recorded: the Sierra Leone demo's "Inpatient
#: morbidity and mortality" program and stage, with the value types the demo gives its data
#: elements (their names and ids are in the recorded ``data_elements.yaml``).
PROGRAMS: dict[str, dict[str, Any]] = {
    "eBAyeGv0exc": {
        "name": "Inpatient morbidity and mortality",
        "stages": {"Zj7UnCAulEk": {
            "qrur9Dvnyt5": "INTEGER_ZERO_OR_POSITIVE",  # Age in years
            "oZg33kd9taw": "TEXT",  # Gender
            "eMyVanycQSC": "DATE",  # Admission Date
            "msodh3rEMJa": "DATE",  # Discharge Date
            "K6uUAvq500H": "TEXT",  # Diagnosis (ICD-10)
            "fWIAEtYVEGk": "TEXT",  # Mode of Discharge
        }},
    },
}
DEFAULT_COC = "HllvX50cXC0"  # the demo's default category option combo
PERIOD_RE = re.compile(r"^(\d{4}|\d{6}|\d{8}|\d{4}W\d{1,2}|\d{4}Q[1-4]|\d{4}S[12]|\d{4}BiW\d{1,2})$")
IMPORT_OPTIONS = {"idSchemes": {}, "dryRun": False, "async": False,
                  "importStrategy": "CREATE_AND_UPDATE", "mergeMode": "REPLACE",
                  "reportMode": "FULL", "skipExistingCheck": False, "sharing": False,
                  "skipNotifications": False, "skipAudit": False, "force": False}


def _value_error(value_type: str, value: Any) -> str | None:
    """Why ``value`` does not fit ``value_type`` (DHIS2's words), or None."""
    text_value = str(value)
    if value_type in ("NUMBER", "INTEGER", "INTEGER_ZERO_OR_POSITIVE", "INTEGER_POSITIVE"):
        try:
            number = float(text_value)
        except ValueError:
            return "value_not_numeric"
        if value_type.startswith("INTEGER") and not number.is_integer():
            return "value_not_integer"
        if value_type == "INTEGER_ZERO_OR_POSITIVE" and number < 0:
            return "value_not_zero_or_positive_integer"
        return None
    if value_type == "DATE":
        try:
            dt.date.fromisoformat(text_value[:10])
        except ValueError:
            return "value_not_valid_date"
    return None


def _numeric(state: State, de: str) -> str:
    """Value type of an aggregate data element: the program's table, else numeric."""
    for program in state.programs.values():
        for stage in program["stages"].values():
            if de in stage:
                return str(stage[de])
    return "NUMBER"


def data_value_set_import(fake: FakeDhis2, body: dict[str, Any], params: dict[str, str]
                          ) -> dict[str, Any]:
    """``POST /api/dataValueSets``: the ImportSummary (conflicts per value, with indexes on
    2.38+); valid values are stored (upsert by their key), invalid ones ignored."""
    s = fake.state
    dry = params.get("dryRun", "false").lower() == "true"
    counts = {"imported": 0, "updated": 0, "ignored": 0, "deleted": 0}
    conflicts: list[dict[str, Any]] = []
    modern = fake.minor >= 38

    def conflict(obj: str, message: str, code: str, index: int, prop: str,
                 objects: dict[str, str] | None = None) -> None:
        c: dict[str, Any] = {"object": obj, "value": message}
        if modern:
            c.update(objects=objects or {}, errorCode=code, property=prop, indexes=[index])
        conflicts.append(c)

    values = body.get("dataValues") or []
    for i, raw in enumerate(values):
        de = raw.get("dataElement")
        ou = raw.get("orgUnit") or body.get("orgUnit")
        pe = str(raw.get("period") or body.get("period") or "")
        coc = raw.get("categoryOptionCombo") or DEFAULT_COC
        aoc = raw.get("attributeOptionCombo") or body.get("attributeOptionCombo") or DEFAULT_COC
        value = raw.get("value")
        if de not in s.data_elements:
            conflict(str(de), "Data element not found or not accessible", "E7610", i,
                     "dataElement", {"dataElement": str(de)})
        elif ou not in s.units:
            conflict(str(ou), "Organisation unit not found or not accessible", "E7612", i,
                     "orgUnit", {"organisationUnit": str(ou)})
        elif not PERIOD_RE.match(pe):
            conflict(pe, "Period not valid", "E7611", i, "period", {"period": pe})
        elif value is None or str(value) == "":
            conflict(str(de), "Data value or comment not specified", "E7630", i, "value",
                     {"dataElement": str(de)})
        elif (why := _value_error(_numeric(s, de), value)) is not None:
            if modern:
                conflict(str(de), f"Value must match data element's `{de}` type constraints: "
                         f"Data value is not {why.replace('value_not_', '').replace('_', ' ')}",
                         "E7619", i, "value", {"dataElement": str(de), "value": why})
            else:
                conflicts.append({"object": str(value), "value": "Data value is not numeric, "
                                  f"must match data element type: {de}"})
        else:
            key = (de, pe, ou, coc, aoc)
            counts["updated" if key in s.data_values else "imported"] += 1
            if not dry:
                s.data_values[key] = {"dataElement": de, "period": pe, "orgUnit": ou,
                                      "categoryOptionCombo": coc, "attributeOptionCombo": aoc,
                                      "value": str(value), "lastUpdated": _now()}
            continue
        counts["ignored"] += 1
    status = "SUCCESS" if not conflicts else "WARNING"
    summary: dict[str, Any] = {"responseType": "ImportSummary", "status": status,
                               "importOptions": dict(IMPORT_OPTIONS, dryRun=dry),
                               "description": "Import process completed successfully",
                               "importCount": counts, "dataSetComplete": "false"}
    if conflicts:
        summary["conflicts"] = conflicts
    return summary


def _event_problems(fake: FakeDhis2, ev: dict[str, Any], tracker: bool
                    ) -> list[tuple[str, str]]:
    """(error code, message) for an incoming event: tracker codes, or /api/events words."""
    s = fake.state
    out: list[tuple[str, str]] = []
    program = s.programs.get(ev.get("program") or "")
    ou = ev.get("orgUnit")
    stage_id = ev.get("programStage")
    if program is None:
        out.append(("E1069", f"Could not find Program: `{ev.get('program')}`, linked to Event."
                    if tracker else f"Event.program does not point to a valid program: "
                    f"{ev.get('program')}"))
        return out
    if ou not in s.units:
        out.append(("E1011", f"Could not find OrganisationUnit: `{ou}`, linked to Event."
                    if tracker else f"Event.orgUnit does not point to a valid organisation "
                    f"unit: {ou}"))
    elif s.units[ou].get("closedDate"):
        out.append(("E1029", f"Event OrganisationUnit: `{ou}`, is closed."))
    stage = program["stages"].get(stage_id or "")
    if stage is None:
        out.append(("E1013", f"Could not find ProgramStage: `{stage_id}`, linked to Event."
                    if tracker else f"Event.programStage does not point to a valid programStage: "
                    f"{stage_id}"))
        return out
    when = ev.get("occurredAt" if tracker else "eventDate")
    if not when:
        out.append(("E1031", "Event OccurredAt date is missing."))
    else:
        try:
            dt.date.fromisoformat(str(when)[:10])
        except ValueError:
            out.append(("E1051", f"Invalid event date: `{when}`."))
    for dv in ev.get("dataValues") or []:
        de = dv.get("dataElement")
        if de not in stage:
            out.append(("E1304", f"Data element `{de}` is not a valid data element."
                        if tracker else f"Data element {de} is not part of the program stage"))
        elif (why := _value_error(stage[de], dv.get("value"))) is not None:
            out.append(("E1302", f"Data element `{de}` value is not valid: `{why}`"
                        if tracker else f"{de}: {why}"))
    return out


def _store_event(fake: FakeDhis2, ev: dict[str, Any], tracker: bool) -> bool:
    """Upsert an event by its uid; True when it was new."""
    uid = ev["event"]
    new = uid not in fake.state.events
    stored = copy.deepcopy(ev)
    if not tracker:
        stored["occurredAt"] = stored.pop("eventDate", None)
    stored.setdefault("status", "COMPLETED")
    stored["updatedAt"] = _now()
    fake.state.events[uid] = stored
    return new


def tracker_import(fake: FakeDhis2, body: dict[str, Any], params: dict[str, str]
                   ) -> tuple[int, dict[str, Any]]:
    """``POST /api/tracker?async=false`` (events only): the tracker import report."""
    events = body.get("events") or []
    atomic = params.get("atomicMode", "ALL").upper()
    validate = params.get("importMode", "COMMIT").upper() == "VALIDATE"
    errors: list[dict[str, Any]] = []
    ok: list[dict[str, Any]] = []
    for ev in events:
        ev.setdefault("event", new_uid())
        problems = _event_problems(fake, ev, tracker=True)
        if problems:
            errors += [{"message": m, "errorCode": c, "trackerType": "EVENT", "uid": ev["event"]}
                       for c, m in problems]
        else:
            ok.append(ev)
    commit = not validate and (atomic == "OBJECT" or not errors)
    created = updated = 0
    reports = []
    bad = {e["uid"] for e in errors}
    for i, ev in enumerate(events):
        reports.append({"trackerType": "EVENT", "uid": ev["event"], "index": i,
                        "errorReports": [e for e in errors if e["uid"] == ev["event"]]})
    if commit:
        for ev in ok:
            if _store_event(fake, ev, tracker=True):
                created += 1
            else:
                updated += 1
    ignored = len(events) - created - updated
    stats = {"created": created, "updated": updated, "deleted": 0, "ignored": ignored,
             "total": len(events)}
    status = "ERROR" if errors else "OK"
    report = {"status": status,
              "validationReport": {"errorReports": errors, "warningReports": []},
              "stats": stats,
              "bundleReport": {"status": status, "stats": stats, "typeReportMap": {
                  "EVENT": {"trackerType": "EVENT", "stats": stats,
                            "objectReports": [r for r in reports if r["uid"] not in bad or
                                              not commit]}}},
              "message": "An error has occurred." if errors else ""}
    code = 409 if errors and fake.minor >= 38 else 200
    return code, report


def events_import(fake: FakeDhis2, body: dict[str, Any], params: dict[str, str]
                  ) -> tuple[int, dict[str, Any]]:
    """``POST /api/events`` (deprecated, before the new tracker): ImportSummaries in a web
    message, one summary per event (``reference`` = its uid), 409 when any failed."""
    dry = params.get("dryRun", "false").lower() == "true"
    summaries = []
    totals = {"imported": 0, "updated": 0, "deleted": 0, "ignored": 0}
    for ev in body.get("events") or []:
        ev.setdefault("event", new_uid())
        problems = _event_problems(fake, ev, tracker=False)
        count = {"imported": 0, "updated": 0, "ignored": 0, "deleted": 0}
        summary: dict[str, Any] = {"responseType": "ImportSummary", "reference": ev["event"]}
        if problems:
            count["ignored"] = 1
            summary.update(status="ERROR", description=problems[0][1],
                           conflicts=[{"object": c, "value": m} for c, m in problems[1:]])
        else:
            if dry:
                count["imported"] = 1
            elif _store_event(fake, ev, tracker=False):
                count["imported"] = 1
            else:
                count["updated"] = 1
            summary.update(status="SUCCESS")
        summary["importCount"] = count
        for k in totals:
            totals[k] += count[k]
        summaries.append(summary)
    failed = any(x["status"] == "ERROR" for x in summaries)
    response = {"responseType": "ImportSummaries", "status": "ERROR" if failed else "SUCCESS",
                **totals, "importOptions": dict(IMPORT_OPTIONS, dryRun=dry),
                "importSummaries": summaries, "total": len(summaries)}
    if failed:
        return 409, {"httpStatus": "Conflict", "httpStatusCode": 409, "status": "ERROR",
                     "message": "An error occurred, please check import summary.",
                     "response": response}
    return 200, {"httpStatus": "OK", "httpStatusCode": 200, "status": "OK",
                 "message": "Import was successful.", "response": response}


# --- metadata import --------------------------------------------------------------------------


def _err(code: str, message: str, klass: str, prop: str | None, uid: str | None,
         args: list[Any], value: Any = None) -> dict[str, Any]:
    report: dict[str, Any] = {"message": message, "mainKlass": klass, "errorCode": code,
                              "errorProperties": [str(a) for a in args], "args": [str(a) for a in args]}
    if prop:
        report["errorProperty"] = prop
    if uid:
        report["mainId"] = uid
    if value is not None:
        report["value"] = value
    return report


def _label(obj: dict[str, Any], klass: str) -> str:
    return f"{obj.get('name') or ''} [{obj.get('id')}] ({klass.rsplit('.', 1)[-1]})"


TYPES = (("organisationUnits", OU, "unit"), ("organisationUnitGroups", OUG, "group"),
         ("organisationUnitGroupSets", OUGS, "set"))


class MetadataImport:
    """One ``POST /api/metadata``: validate every object, then commit (or not)."""

    def __init__(self, fake: FakeDhis2, body: dict[str, Any], params: dict[str, str],
                 user: str) -> None:
        self.fake, self.s = fake, fake.state
        self.body, self.user = body, user
        self.mode = params.get("importMode", "COMMIT").upper()
        self.strategy = params.get("importStrategy", "CREATE_AND_UPDATE").upper()
        self.atomic = params.get("atomicMode", "ALL").upper()
        self.report_mode = params.get("importReportMode", "ERRORS").upper()
        for name, value, allowed in (
                ("importMode", self.mode, ("COMMIT", "VALIDATE")),
                ("importStrategy", self.strategy,
                 ("CREATE_AND_UPDATE", "CREATE", "UPDATE", "DELETE", "NEW_AND_UPDATES", "NEW",
                  "UPDATES", "DELETES")),
                ("atomicMode", self.atomic, ("ALL", "NONE")),
                ("importReportMode", self.report_mode, ("ERRORS", "FULL", "DEBUG",
                                                        "ERRORS_NOT_OWNER"))):
            if value not in allowed:
                raise BadRequest(f"Value `{value}` is not valid for parameter `{name}`")
        self.strategy = {"NEW_AND_UPDATES": "CREATE_AND_UPDATE", "NEW": "CREATE",
                         "UPDATES": "UPDATE", "DELETES": "DELETE"}.get(self.strategy,
                                                                        self.strategy)

    def run(self) -> dict[str, Any]:
        plan: dict[str, list[tuple[int, dict[str, Any], str]]] = {}  # key -> (index, obj, op)
        reports: dict[str, list[dict[str, Any]]] = {}
        incoming: dict[str, dict[str, dict[str, Any]]] = {}
        for key, klass, _kind in TYPES:
            objs = self.body.get(key) or []
            if not isinstance(objs, list):
                raise BadRequest(f"`{key}` must be a list")
            plan[key], reports[key] = [], []
            seen: set[str] = set()
            incoming[key] = {}
            for index, raw in enumerate(objs):
                if not isinstance(raw, dict):
                    raise BadRequest(f"`{key}` item {index} is not an object")
                obj = dict(raw)
                if not obj.get("id") and self.strategy != "DELETE":
                    obj["id"] = new_uid()
                uid = obj.get("id")
                errors: list[dict[str, Any]] = []
                if uid in seen:
                    errors.append(_err("E5004", f"Id `{uid}` for type `{klass.rsplit('.', 1)[-1]}` "
                                       "exists on more than 1 object in the payload, removing all "
                                       "but the first found.", klass, "id", uid, [uid, klass]))
                elif not isinstance(uid, str) or not UID_RE.match(uid):
                    errors.append(_err("E4014", f"Invalid UID `{uid}` for property `id`",
                                       klass, "id", None, [uid, "id"]))
                else:
                    seen.add(uid)
                    incoming[key][uid] = obj
                plan[key].append((index, obj, "?"))
                reports[key].append({"klass": klass, "index": index, "uid": uid,
                                     "displayName": obj.get("name"), "errorReports": errors})
        # existence per strategy, then validation (references see the whole payload)
        for key, klass, kind in TYPES:
            table = self._table(kind)
            for i, (index, obj, _) in enumerate(plan[key]):
                rep = reports[key][i]
                if rep["errorReports"]:
                    continue
                uid = obj["id"]
                exists = uid in table
                if self.strategy == "CREATE" and exists:
                    rep["errorReports"].append(_err(
                        "E5000", "Found matching object for reference, but import mode is "
                        f"CREATE. Identifier was {uid}, and object was {_label(obj, klass)}.",
                        klass, "id", uid, [uid, _label(obj, klass)]))
                elif self.strategy in ("UPDATE", "DELETE") and not exists:
                    rep["errorReports"].append(_err(
                        "E5001", f"No matching object for reference. Identifier was {uid}, and "
                        f"object was {_label(obj, klass)}.", klass, "id", uid,
                        [uid, _label(obj, klass)]))
                op = "delete" if self.strategy == "DELETE" else ("update" if exists else "create")
                plan[key][i] = (index, obj, op)
        if self.strategy == "DELETE":
            self._validate_deletes(plan, reports)
        else:
            self._validate(plan, reports, incoming)
        has_errors = any(r["errorReports"] for reps in reports.values() for r in reps)
        commit = self.mode == "COMMIT" and (self.atomic == "NONE" or not has_errors)
        stats_by_type = {}
        for key, _klass, _kind in TYPES:
            st = {"created": 0, "updated": 0, "deleted": 0, "ignored": 0, "total": 0}
            for (_index, _obj, op), rep in zip(plan[key], reports[key], strict=True):
                st["total"] += 1
                if rep["errorReports"] or not commit:
                    st["ignored"] += 1 if (rep["errorReports"] or self.atomic == "ALL"
                                           and has_errors) else 0
                    continue
                st[{"create": "created", "update": "updated", "delete": "deleted"}[op]] += 1
            stats_by_type[key] = st
        if commit:
            self._apply(plan, reports)
        status = "ERROR" if has_errors else "OK"
        type_reports = []
        total = {"created": 0, "updated": 0, "deleted": 0, "ignored": 0, "total": 0}
        for key, klass, _kind in TYPES:
            if not plan[key]:
                continue
            st = stats_by_type[key]
            for k in total:
                total[k] += st[k]
            objs = [r for r in reports[key]
                    if r["errorReports"] or self.report_mode in ("FULL", "DEBUG")]
            type_reports.append({"klass": klass, "stats": st, "objectReports": objs})
        return {"status": status, "stats": total, "typeReports": type_reports,
                "importParams": self._params()}

    def _params(self) -> dict[str, Any]:
        params = {"userOverrideMode": "NONE", "importMode": self.mode, "identifier": "UID",
                  "preheatMode": "REFERENCE", "importStrategy": self.strategy,
                  "atomicMode": self.atomic, "flushMode": "AUTO", "skipSharing": False,
                  "skipTranslation": False, "skipValidation": False,
                  "metadataSyncImport": False, "username": self.user}
        if self.s.version == "2.36":
            params["mergeMode"] = "REPLACE"
        return params

    def _table(self, kind: str) -> dict[str, dict[str, Any]]:
        return {"unit": self.s.units, "group": self.s.groups, "set": self.s.group_sets}[kind]

    def _validate(self, plan: dict[str, list[tuple[int, dict[str, Any], str]]],
                  reports: dict[str, list[dict[str, Any]]],
                  incoming: dict[str, dict[str, dict[str, Any]]]) -> None:
        s = self.s
        for key, klass, kind in TYPES:
            table = self._table(kind)
            unique: dict[str, dict[Any, str]] = {"code": {}}
            if kind != "unit":
                unique.update(name={}, shortName={})
            # as dhis2-core's preheat: the values stored before the import, those of the
            # objects being imported included (a code moving from one unit to another in
            # the same import is refused)
            for prop in unique:
                for uid, obj in table.items():
                    if obj.get(prop):
                        unique[prop][obj[prop]] = uid
            for (_index, obj, _op), rep in zip(plan[key], reports[key], strict=True):
                if rep["errorReports"]:
                    continue
                errs = rep["errorReports"]
                uid = obj["id"]
                label = _label(obj, klass)
                required = ["name", "shortName"] + (["openingDate"] if kind == "unit" else [])
                for prop in required:
                    if obj.get(prop) in (None, ""):
                        errs.append(_err("E4000", f"Missing required property `{prop}`.", klass,
                                         prop, uid, [prop]))
                for prop, limit in (("name", 230), ("shortName", 50), ("code", 50)):
                    value = obj.get(prop)
                    if isinstance(value, str) and len(value) > limit:
                        errs.append(_err("E4001", f"Maximum length of property `{prop}`is {limit}, "
                                         f"but given length was {len(value)}.", klass, prop, uid,
                                         [prop, limit, len(value)], value))
                for prop, seen in unique.items():
                    value = obj.get(prop)
                    if not value:
                        continue
                    other = seen.get(value)
                    if other is not None and other != uid:
                        errs.append(_err("E5003", f"Property `{prop}` with value `{value}` on "
                                         f"object {label} already exists on object {other}.",
                                         klass, prop, uid, [prop, value, label, other], value))
                    else:
                        seen[value] = uid
                if kind == "unit":
                    opening, closed = _parse_time(obj.get("openingDate")), _parse_time(
                        obj.get("closedDate"))
                    for prop in ("openingDate", "closedDate"):
                        if obj.get(prop) not in (None, "") and _parse_time(obj[prop]) is None:
                            errs.append(_err("E4027", f"Value `{obj[prop]}` is not a valid for "
                                             f"property `{prop}`", klass, prop, uid,
                                             [obj[prop], prop]))
                    if opening and closed and closed < opening:
                        errs.append(_err("E4013", f"Invalid Closing date `{obj['closedDate']}`, "
                                         f"must be after Opening date `{obj['openingDate']}`",
                                         klass, "closedDate", uid,
                                         [obj["closedDate"], obj["openingDate"]]))
                    geom = obj.get("geometry")
                    if geom is not None and not (isinstance(geom, dict) and geom.get("type") in (
                            "Point", "MultiPoint", "Polygon", "MultiPolygon", "LineString")
                            and isinstance(geom.get("coordinates"), list)):
                        raise BadRequest("JSON parse error: invalid GeoJSON geometry for "
                                         f"organisation unit {uid}")
                    parent = obj.get("parent")
                    pid = parent.get("id") if isinstance(parent, dict) else parent
                    if pid and pid not in s.units and pid not in incoming["organisationUnits"]:
                        errs.append(_err("E5002", f"Invalid reference [{pid}] (OrganisationUnit) "
                                         f"on object {label} for association `parent`.", klass,
                                         "parent", uid, [pid, label, "parent"], pid))
                    elif pid and self._cycle(uid, pid, incoming["organisationUnits"]):
                        errs.append(_err("E4016", "Object referenced by the `parent` property is "
                                         f"already associated with another object, value: `{pid}`",
                                         klass, "parent", uid, ["parent", pid], pid))
                members, member_kind = {
                    "unit": (None, None),
                    "group": ("organisationUnits", ("organisationUnits", s.units)),
                    "set": ("organisationUnitGroups", ("organisationUnitGroups", s.groups)),
                }[kind]
                if members and member_kind:
                    ref_key, ref_table = member_kind
                    for m in obj.get(members) or []:
                        mid = m.get("id") if isinstance(m, dict) else m
                        if mid not in ref_table and mid not in incoming[ref_key]:
                            errs.append(_err("E5002", f"Invalid reference [{mid}] "
                                             f"({'OrganisationUnit' if kind == 'group' else 'OrganisationUnitGroup'})"
                                             f" on object {label} for association `{members}`.",
                                             klass, members, uid, [mid, label, members], mid))
        # a unit whose parent was refused cannot be imported either
        refused = {r["uid"] for r in reports["organisationUnits"] if r["errorReports"]}
        changed = True
        while changed:
            changed = False
            for (_index, obj, _op), rep in zip(plan["organisationUnits"],
                                               reports["organisationUnits"], strict=True):
                parent = obj.get("parent")
                pid = parent.get("id") if isinstance(parent, dict) else parent
                if not rep["errorReports"] and pid in refused and pid not in s.units:
                    rep["errorReports"].append(_err(
                        "E5002", f"Invalid reference [{pid}] (OrganisationUnit) on object "
                        f"{_label(obj, OU)} for association `parent`.", OU, "parent",
                        obj["id"], [pid, _label(obj, OU), "parent"], pid))
                    refused.add(obj["id"])
                    changed = True

    def _cycle(self, uid: str, pid: str, incoming: dict[str, dict[str, Any]]) -> bool:
        seen = {uid}
        current: str | None = pid
        while current is not None:
            if current in seen:
                return True
            seen.add(current)
            obj = incoming.get(current) or self.s.units.get(current)
            if obj is None:
                return False
            parent = obj.get("parent")
            current = parent.get("id") if isinstance(parent, dict) else parent
        return False

    def _validate_deletes(self, plan: dict[str, list[tuple[int, dict[str, Any], str]]],
                          reports: dict[str, list[dict[str, Any]]]) -> None:
        deleting = {obj.get("id") for obj in (o for _i, o, _op in plan["organisationUnits"])}
        for (_index, obj, _op), rep in zip(plan["organisationUnits"], reports["organisationUnits"],
                                           strict=True):
            if rep["errorReports"]:
                continue
            kids = [c for c in self.s.children(obj["id"]) if c not in deleting]
            if kids:
                rep["errorReports"].append(_err(
                    "E4030", "Object could not be deleted because it is associated with another "
                    "object: OrganisationUnit", OU, None, obj["id"], ["OrganisationUnit"]))

    def _apply(self, plan: dict[str, list[tuple[int, dict[str, Any], str]]],
               reports: dict[str, list[dict[str, Any]]]) -> None:
        s, now = self.s, _now()
        keys = [k for k, _c, _kind in TYPES]
        if self.strategy == "DELETE":
            keys.reverse()
        for key in keys:
            kind = {k: kd for k, _c, kd in TYPES}[key]
            table = self._table(kind)
            for (_index, obj, op), rep in zip(plan[key], reports[key], strict=True):
                if rep["errorReports"]:
                    continue
                uid = obj["id"]
                if op == "delete":
                    table.pop(uid, None)
                    if kind == "unit":
                        for g in s.groups.values():
                            if uid in g["organisationUnits"]:
                                g["organisationUnits"].remove(uid)
                    elif kind == "group":
                        for gs in s.group_sets.values():
                            if uid in gs["organisationUnitGroups"]:
                                gs["organisationUnitGroups"].remove(uid)
                    continue
                table[uid] = self.fake.stored(kind, obj, table.get(uid), now)


# --- the server ------------------------------------------------------------------------------


class FakeDhis2:
    """``with FakeDhis2("2.41") as fake: Dhis2Client(fake.url, username=…, password=…)``."""

    def __init__(self, version: str = "2.41", *, users: dict[str, str] | None = None,
                 tokens: dict[str, str] | None = None, context_path: str = CONTEXT_PATH) -> None:
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}")
        self.version = version
        self.minor = int(version.split(".")[1])
        self.users = dict(users if users is not None else {"admin": "district"})
        self.tokens = dict(tokens or {})
        self.context_path = context_path
        self.state = State(version)
        self.render = Renderer(self.state)
        self.requests: list[LoggedRequest] = []
        self.faults: list[Fault] = []
        #: (collection, page, fn): fn(fake) runs once, right after that page is served
        self.page_hooks: list[tuple[str, int, Callable[[FakeDhis2], None]]] = []
        self.lock = threading.RLock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        info = [r for r in recordings(version) if r.path == "/api/system/info"]
        self.system_info = info[0].json() if info else {"version": version}

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeDhis2:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> FakeDhis2:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self.server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # --- for the tests --------------------------------------------------------------------

    def inject(self, kind: str, *, count: int = 1, method: str | None = None,
               path: str | None = None, seconds: float = 2.0) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}")
        with self.lock:
            self.faults.append(Fault(kind, count, method, path, seconds))

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()

    def posts(self, path: str = "/metadata") -> list[LoggedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith(path)]

    def unit(self, uid: str, fields: str = ":all") -> dict[str, Any] | None:
        obj = self.state.units.get(uid)
        return None if obj is None else self.render.render("unit", obj, fields)

    def units_named(self, name: str) -> list[dict[str, Any]]:
        return [self.render.render("unit", u, ":all") for u in self.state.units.values()
                if u.get("name") == name]

    def stored(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None,
               now: str) -> dict[str, Any]:
        """An incoming object as the server keeps it (REPLACE: what is not sent is gone)."""
        computed = {"unit": UNIT_COMPUTED, "group": GROUP_COMPUTED, "set": SET_COMPUTED}[kind]
        new = {k: copy.deepcopy(v) for k, v in obj.items()
               if k not in computed and v is not None and k != "path"}
        new["created"] = (old or {}).get("created", now)
        new["lastUpdated"] = now
        if kind == "unit":
            parent = obj.get("parent")
            new["parent"] = parent.get("id") if isinstance(parent, dict) else parent
            for prop in ("openingDate", "closedDate"):
                if new.get(prop):
                    new[prop] = _dhis2_date(new[prop])
        elif kind == "group":
            members = []
            for m in obj.get("organisationUnits") or []:
                mid = m.get("id") if isinstance(m, dict) else m
                if mid not in members:
                    members.append(mid)
            new["organisationUnits"] = members
        elif kind == "set":
            new["organisationUnitGroups"] = [g.get("id") if isinstance(g, dict) else g
                                             for g in obj.get("organisationUnitGroups") or []]
            new.setdefault("compulsory", False)
            new.setdefault("dataDimension", True)
        return new

    # --- request handling ------------------------------------------------------------------

    def authenticate(self, header: str | None) -> tuple[str | None, str | None]:
        """(user, how) or (None, why not)."""
        if not header:
            return None, None
        scheme, _, value = header.partition(" ")
        if scheme == "Basic":
            try:
                user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None, "basic"
            if self.users.get(user) == password and user:
                return user, "basic"
            return None, "basic"
        if scheme == "ApiToken":
            if self.minor < 37:  # personal access tokens arrived in 2.37
                return None, "token"
            token_user = self.tokens.get(value.strip())
            return (token_user, "token") if token_user else (None, "token")
        return None, scheme.lower()

    def handle(self, method: str, raw_path: str, query: list[tuple[str, str]], body: Any,
               user: str) -> Reply:
        path = raw_path
        if not path.startswith("/api/") and path != "/api":
            return web_message(404, f"{raw_path} not found")
        rest = path[len("/api"):].strip("/")
        api_version: int | None = None
        m = re.match(r"^(\d{2})(?:/|$)(.*)$", rest)
        if m:
            api_version = int(m.group(1))
            rest = m.group(2)
            if api_version > self.minor or api_version < self.minor - 8:
                return web_message(404, f"API version {api_version} is not supported")
        if rest.endswith(".json"):
            rest = rest[:-5]
        params: dict[str, str] = {}
        for k, v in query:
            params.setdefault(k, v)
        filters = [v for k, v in query if k == "filter"]
        parts = rest.split("/")
        with self.lock:
            try:
                return self._route(method, parts, params, filters, query, body, user,
                                   api_version, raw_path)
            except BadRequest as error:
                return web_message(400, str(error))

    def _route(self, method: str, parts: list[str], params: dict[str, str], filters: list[str],
               query: list[tuple[str, str]], body: Any, user: str, api_version: int | None,
               raw_path: str) -> Reply:
        s = self.state
        head = parts[0]
        if head == "system" and len(parts) == 2 and method == "GET":
            if parts[1] == "ping":
                return Reply(200, "pong")
            if parts[1] == "info":
                return Reply(200, copy.deepcopy(self.system_info))
            if parts[1] in ("id", "uid"):
                limit = min(10000, max(1, int(params.get("limit", "1"))))
                return Reply(200, {"codes": [new_uid() for _ in range(limit)]})
        if head == "me" and method == "GET":
            me = {"id": "xE7jOejl9FI", "username": user, "name": "John Traore",
                  "displayName": "John Traore", "firstName": "John", "surname": "Traore",
                  "authorities": ["ALL"]}
            spec = params.get("fields")
            return Reply(200, {k: me[k] for k in me if not spec or k in spec.split(",")})
        collections = {"organisationUnits": ("unit", s.units),
                       "organisationUnitGroups": ("group", s.groups),
                       "organisationUnitGroupSets": ("set", s.group_sets)}
        if head in collections:
            kind, table = collections[head]
            if len(parts) == 1 and method == "GET":
                objs = list(table.values())
                spec = params.get("fields") or "id,displayName"
                return self._list(head, kind, objs, spec, params, filters, query, raw_path)
            if len(parts) == 2 and method == "GET":
                obj = table.get(parts[1])
                if obj is None:
                    return web_message(404, f"{_klass_name(kind)} with id {parts[1]} could not "
                                       "be found.")
                return Reply(200, self.render.render(kind, obj, params.get("fields") or ":all"))
            if len(parts) == 2 and method == "PUT" and kind in ("group", "set"):
                return self._put(kind, parts[1], body, api_version, user)
            return web_message(405, f"Request method '{method}' not supported")
        if head in ("filledOrganisationUnitLevels",) and method == "GET":
            return Reply(200, copy.deepcopy(s.levels))
        if head == "organisationUnitLevels" and method == "GET":
            spec = params.get("fields") or "id,displayName"
            return self._list(head, "level", list(s.levels), spec, params, filters, query,
                              raw_path)
        if head == "metadata" and method == "POST":
            if not isinstance(body, dict):
                return web_message(400, "JSON parse error: the body is not a JSON object")
            report = MetadataImport(self, body, params, user).run()
            return self._envelope(report, api_version)
        if head in ("tracker", "events", "dataValueSets") and len(parts) == 1 \
                and method == "POST":
            if not isinstance(body, dict):
                return web_message(400, "JSON parse error: the body is not a JSON object")
            body = copy.deepcopy(body)
            if head == "tracker":
                if params.get("async", "true").lower() != "false":
                    return Reply(200, {"httpStatus": "OK", "httpStatusCode": 200, "status": "OK",
                                       "message": "Tracker job added", "response": {
                                           "responseType": "TrackerJobWebMessageResponse",
                                           "id": new_uid()}})
                code, report = tracker_import(self, body, params)
                return Reply(code, report)
            if head == "events":
                if self.minor >= 42:
                    return web_message(404, f"{raw_path} not found")
                code, report = events_import(self, body, params)
                return Reply(code, report)
            summary = data_value_set_import(self, body, params)
            if self.minor < 38 or (api_version is not None and api_version < 38):
                return Reply(200, summary)
            if summary["status"] == "SUCCESS":
                return Reply(200, {"httpStatus": "OK", "httpStatusCode": 200, "status": "OK",
                                   "message": "Import was successful.", "response": summary})
            return Reply(409, {"httpStatus": "Conflict", "httpStatusCode": 409,
                               "status": "WARNING", "message": "One more conflicts encountered, "
                               "please check import summary.", "response": summary})
        replay = self._replay(method, raw_path, query)
        if replay is not None:
            return replay
        return web_message(404, f"{raw_path} not found")

    def _replay(self, method: str, raw_path: str, query: list[tuple[str, str]]
                ) -> Reply | None:
        """Recorded requests the fake has no state for (data elements …) answer as recorded."""
        wanted = sorted(query)
        for rec in recordings(self.version):
            if rec.method == method and rec.path == raw_path and sorted(rec.query) == wanted:
                try:
                    return Reply(rec.status, rec.json())
                except ValueError:
                    return Reply(rec.status, rec.body)
        return None

    def _list(self, collection: str, kind: str, objs: list[dict[str, Any]], spec: str,
              params: dict[str, str], filters: list[str], query: list[tuple[str, str]],
              raw_path: str) -> Reply:
        if filters:
            junction = params.get("rootJunction", "AND")
            objs = [o for o in objs
                    if matches(self.render._props(kind, o), filters, junction)]
        order = params.get("order")
        if order:
            prop, _, direction = order.partition(":")
            objs.sort(key=lambda o: (str(self.render._props(kind, o).get(prop) or "")).lower()
                      if direction.startswith("i") else str(self.render._props(kind, o).get(prop)
                                                            or ""),
                      reverse=direction.endswith("desc"))
        paging = params.get("paging", "true").lower() != "false" and params.get(
            "skipPaging", "false").lower() != "true"
        if not paging:
            return Reply(200, {collection: [self.render.render(kind, o, spec) for o in objs]})
        try:
            page = max(1, int(params.get("page", "1")))
            size = max(1, int(params.get("pageSize", "50")))
        except ValueError as error:
            raise BadRequest(f"Invalid paging parameter: {error}") from None
        total = len(objs)
        count = math.ceil(total / size)
        items = objs[(page - 1) * size : page * size]
        rest = [(k, v) for k, v in query if k not in ("page", "pageSize")]
        link = f"{self.context_path}{raw_path}?"

        def href(n: int) -> str:
            """DHIS2's links: page first (left out for page 1), then pageSize, then the rest."""
            pairs = ([] if n == 1 else [("page", str(n))]) + [("pageSize", str(size))] + rest
            return link + "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)

        pager: dict[str, Any] = {"page": page}
        if self.minor < 38:
            pager.update(pageCount=count, total=total, pageSize=size)
        else:
            pager.update(total=total, pageSize=size)
        if page < count:
            pager["nextPage"] = href(page + 1)
        if page > 1:
            pager["prevPage"] = href(page - 1)
        if self.minor >= 38:
            pager["pageCount"] = count
        reply = Reply(200, {"pager": pager,
                            collection: [self.render.render(kind, o, spec) for o in items]})
        for hook in [h for h in self.page_hooks if h[:2] == (collection, page)]:
            self.page_hooks.remove(hook)
            hook[2](self)  # someone else edits DHIS2 between two pages
        return reply

    def _envelope(self, report: dict[str, Any], api_version: int | None) -> Reply:
        plain = self.minor < 38 or (api_version is not None and api_version < 38)
        if plain:
            return Reply(200, report)
        inner = {"responseType": "ImportReport", "status": report["status"],
                 "stats": report["stats"], "typeReports": report["typeReports"]}
        if report["status"] == "OK":
            return Reply(200, {"httpStatus": "OK", "httpStatusCode": 200, "status": "OK",
                               "response": inner})
        return Reply(409, {"httpStatus": "Conflict", "httpStatusCode": 409, "status": "WARNING",
                           "message": "One or more errors occurred, please see full details in "
                                      "import report.", "response": inner})

    def _put(self, kind: str, uid: str, body: Any, api_version: int | None,
             user: str) -> Reply:
        table = self.state.groups if kind == "group" else self.state.group_sets
        if uid not in table:
            return web_message(404, f"{_klass_name(kind)} with id {uid} could not be found.")
        if not isinstance(body, dict):
            return web_message(400, "JSON parse error: the body is not a JSON object")
        obj = dict(body, id=uid)
        key = "organisationUnitGroups" if kind == "group" else "organisationUnitGroupSets"
        report = MetadataImport(self, {key: [obj]}, {"importStrategy": "UPDATE",
                                                     "importReportMode": "FULL"}, user).run()
        type_report = report["typeReports"][0]
        obj_report = type_report["objectReports"][0]
        inner = {"responseType": "ObjectReport", "uid": uid, "klass": type_report["klass"],
                 "errorReports": obj_report["errorReports"]}
        ok = report["status"] == "OK"
        if self.minor < 38 or (api_version is not None and api_version < 38):
            # before 2.38 a failed PUT still answers 200, with status ERROR
            return Reply(200, {"httpStatus": "OK", "httpStatusCode": 200,
                               "status": "OK" if ok else "ERROR", "response": inner})
        if ok:
            return Reply(200, {"httpStatus": "OK", "httpStatusCode": 200, "status": "OK",
                               "response": inner})
        return Reply(409, {"httpStatus": "Conflict", "httpStatusCode": 409, "status": "ERROR",
                           "message": "One or more errors occurred, please see full details in "
                                      "import report.", "response": inner})


def _klass_name(kind: str) -> str:
    return {"unit": "OrganisationUnit", "group": "OrganisationUnitGroup",
            "set": "OrganisationUnitGroupSet"}.get(kind, kind)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeDhis2

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        entry = LoggedRequest(method, parts.path, query, body)
        with fake.lock:
            fake.requests.append(entry)
            fault = next((f for f in fake.faults if f.matches(method, parts.path)), None)
            if fault is not None:
                fault.remaining -= 1
                entry.fault = fault.kind
        if fault is not None:
            if fault.kind == "timeout":
                time.sleep(fault.seconds)
            elif fault.kind == "error500":
                entry.status = 500
                self._send(web_message(500, "Internal server error (injected)"))
                return
            elif fault.kind == "conflict409":
                entry.status = 409
                self._send(web_message(409, "Conflict (injected)"))
                return
            elif fault.kind == "tracker_exception":
                # what DHIS2 2.38+ answers when the commit itself fails (a database error,
                # a deadlock): 409, status ERROR, no error report for any event, and
                # nothing stored (dhis2-core DefaultTrackerImportService)
                entry.status = 409
                self._send(Reply(409, {
                    "status": "ERROR",
                    "message": "Exception:could not execute statement (injected)",
                    "validationReport": {"errorReports": [], "warningReports": []},
                    "stats": {"created": 0, "updated": 0, "deleted": 0, "ignored": 0,
                              "total": 0},
                    "bundleReport": None}))
                return
            elif fault.kind == "drop":
                entry.status = -1
                self.close_connection = True
                self._hang_up()
                return
        user, how = None, None
        if parts.path != "/api/system/ping":
            user, how = fake.authenticate(self.headers.get("Authorization"))
            entry.auth = how
            if user is None:
                entry.status = 401
                self._send(web_message(401, "Unauthorized"),
                           {"WWW-Authenticate": 'Basic realm="DHIS2"'})
                return
        reply = fake.handle(method, parts.path, query, body, user or "")
        entry.status = reply.status
        if fault is not None and fault.kind == "drop_mid":
            self._send_half(reply)
            return
        self._send(reply)

    def _encode(self, reply: Reply) -> tuple[bytes, str]:
        if isinstance(reply.body, str):
            return reply.body.encode("utf-8"), "text/plain;charset=UTF-8"
        if reply.body is None:
            return b"", "application/json;charset=UTF-8"
        return (json.dumps(reply.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                "application/json;charset=UTF-8")

    def _send(self, reply: Reply, headers: dict[str, str] | None = None) -> None:
        data, ctype = self._encode(reply)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in {**reply.headers, **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_half(self, reply: Reply) -> None:
        """Headers and half of a chunked body, then the connection goes away."""
        data, ctype = self._encode(reply)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = data[: max(1, len(data) // 2)]
            self.wfile.write(f"{len(data):x}\r\n".encode() + half)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True
        self._hang_up()

    def _hang_up(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


__all__ = ["FAULT_KINDS", "FakeDhis2", "Recording", "parse_fields", "recordings"]
