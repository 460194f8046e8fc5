"""Push form submissions to DHIS2: as events or as data value sets, each submission once.

``georeg dhis2 push-data REG --form F --mapping M.json --url U …`` reads the submissions of
form ``F`` that the local server stored (table ``submission``, migration 0003), turns each
into a DHIS2 **event** (tracker, ``POST /api/tracker?async=false`` on 2.38+; the older
``POST /api/events`` before) or a **data value set** (``POST /api/dataValueSets``) as the
mapping file says, and records what happened per submission and target in ``data_export``
(migration 0005).  A submission exported to a target is never sent there again; a failed
one is sent again by the next push, after the user fixed what the error said.

The mapping file (JSON) — every key is checked, errors name the file and the key::

    {
      "kind": "events",                      # or "dataValueSets"
      "program": "eBAyeGv0exc",              # events: the program uid
      "programStage": "Zj7UnCAulEk",         # events: the stage uid
      "orgUnit": {"from": "submission"},     # the submission's unit (default), or
                                             # {"question": "facility"}: an answer holding a
                                             # DHIS2 uid, a unit uuid or a unit ref
      "occurredAt": {"question": "visit_date"},   # events; default {"from": "received"}
      "period": {"question": "month"},       # data values: an answer holding a DHIS2 period,
                                             # {"date": "visit_date", "type": "Monthly"}, a
                                             # fixed "202401"; types Daily/Weekly/Monthly/
                                             # Quarterly/Yearly; "date" may be "received"
      "dataSet": "BfMAe6Itzgt",              # data values, optional
      "attributeOptionCombo": "…",           # data values, optional
      "dataElements": {                      # question → data element (required)
        "age": "qrur9Dvnyt5",
        "cases_u5": {"dataElement": "M62VHgYT2n0", "categoryOptionCombo": "…"}
      },
      "values": {"sex": {"m": "Male", "f": "Female"}}   # optional recoding of answers
    }

Questions are named by their path in the submission (``group/question``) or by their
name alone when it is unique in the submission.  Empty answers are left out; a question
inside a repeat (several answers) makes the submission fail with a message saying so.

Besides ``data_export``, the outcome is written to the server's own columns of the
submission (``export_status``, ``exported_at``, ``export_ref``) for its pages.

Submissions come through a tiny reader interface (:class:`SubmissionReader`): the default
:class:`TableSubmissions` reads the ``submission`` table directly (``status = 'complete'``,
the JSON in ``data`` — or the XML when ``data`` is empty), so it works with whatever the
server module writes there.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import bindparam, text

from storage.errors import GeoregError, InvalidInput, NotFound
from storage.registry import Registry, json_value
from sync.dhis2_client import Dhis2Client, derived_uid, is_uid

KINDS = {"events": "event", "dataValueSets": "data_values"}
PERIOD_TYPES = ("Daily", "Weekly", "Monthly", "Quarterly", "Yearly")
PERIOD_RE = re.compile(r"^(\d{4}|\d{6}|\d{8}|\d{4}W\d{1,2}|\d{4}Q[1-4]|\d{4}S[12]|\d{4}BiW\d{1,2})$")
EVENT_BATCH = 200
MAX_LISTED = 200


# --- the mapping -------------------------------------------------------------------------


@dataclass
class DataElementTarget:
    data_element: str
    category_option_combo: str | None = None


@dataclass
class Mapping:
    kind: str  # "events" | "dataValueSets"
    data_elements: dict[str, DataElementTarget]
    org_unit: dict[str, str] = field(default_factory=lambda: {"from": "submission"})
    program: str | None = None
    program_stage: str | None = None
    occurred_at: dict[str, str] = field(default_factory=lambda: {"from": "received"})
    period: dict[str, str] | str | None = None
    data_set: str | None = None
    attribute_option_combo: str | None = None
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    #: dataValueSets: two submissions for one cell (data element, period, unit…) —
    #: "latest": the one sent last replaces the other (a monthly report corrected);
    #: "sum": DHIS2 gets their total (one submission per visit, counted per month)
    combine: str = "latest"
    file: str = "mapping"

    @property
    def target_suffix(self) -> str:
        if self.kind == "events":
            return f"events:{self.program}"
        return f"dataValueSets:{self.data_set or '-'}"


def load_mapping(path: str | Path) -> Mapping:
    """Read and check a mapping file; InvalidInput names the file and the key."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"Mapping file {p} does not exist.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"Mapping file {p} is not valid JSON: {error}.") from None
    return parse_mapping(raw, str(p))


def parse_mapping(raw: Any, file: str = "mapping") -> Mapping:
    def bad(key: str, expected: str) -> InvalidInput:
        return InvalidInput(f"{file}: {key!r} must be {expected}.", file=file, field=key)

    if not isinstance(raw, dict):
        raise InvalidInput(f"{file}: the mapping must be a JSON object.", file=file)
    known = {"kind", "program", "programStage", "orgUnit", "occurredAt", "period", "dataSet",
             "attributeOptionCombo", "dataElements", "values", "description", "combine"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidInput(f"{file}: unknown key(s) {', '.join(map(repr, unknown))}; expected "
                           f"some of {', '.join(sorted(known))}.", file=file, field=unknown[0])
    kind = raw.get("kind")
    if kind not in KINDS:
        raise bad("kind", '"events" or "dataValueSets"')
    des = raw.get("dataElements")
    if not isinstance(des, dict) or not des:
        raise bad("dataElements", "an object {question: data element uid} with at least one entry")
    data_elements: dict[str, DataElementTarget] = {}
    for question, target in des.items():
        if isinstance(target, str):
            target = {"dataElement": target}
        if not isinstance(target, dict) or not is_uid(target.get("dataElement")):
            raise bad(f"dataElements.{question}", "a DHIS2 uid (11 characters, a letter first) "
                      'or {"dataElement": uid, "categoryOptionCombo": uid}')
        coc = target.get("categoryOptionCombo")
        if coc is not None and not is_uid(coc):
            raise bad(f"dataElements.{question}.categoryOptionCombo", "a DHIS2 uid")
        data_elements[str(question)] = DataElementTarget(target["dataElement"], coc)
    org_unit = raw.get("orgUnit", {"from": "submission"})
    if not (isinstance(org_unit, dict) and (org_unit == {"from": "submission"} or (
            set(org_unit) == {"question"} and isinstance(org_unit["question"], str)))):
        raise bad("orgUnit", '{"from": "submission"} or {"question": "name"}')
    m = Mapping(kind=kind, data_elements=data_elements, org_unit=org_unit, file=file)
    values = raw.get("values", {})
    if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
        raise bad("values", "an object {question: {answer: value sent}}")
    m.values = {q: {str(k): str(v) for k, v in table.items()} for q, table in values.items()}
    if kind == "events":
        for key in ("program", "programStage"):
            if not is_uid(raw.get(key)):
                raise bad(key, "a DHIS2 uid (events need a program and a program stage)")
        m.program, m.program_stage = raw["program"], raw["programStage"]
        occurred = raw.get("occurredAt", {"from": "received"})
        if not (isinstance(occurred, dict) and (occurred == {"from": "received"} or (
                set(occurred) == {"question"} and isinstance(occurred["question"], str)))):
            raise bad("occurredAt", '{"from": "received"} or {"question": "name"}')
        m.occurred_at = occurred
        for key in ("period", "dataSet", "attributeOptionCombo", "combine"):
            if key in raw:
                raise InvalidInput(f"{file}: {key!r} is for dataValueSets, not events.",
                                   file=file, field=key)
    else:
        period = raw.get("period")
        if isinstance(period, str):
            if not PERIOD_RE.match(period):
                raise bad("period", "a DHIS2 period such as 202401, 2024Q1 or 2024W5")
        elif isinstance(period, dict) and set(period) == {"question"}:
            pass
        elif isinstance(period, dict) and set(period) == {"date", "type"}:
            if period["type"] not in PERIOD_TYPES:
                raise bad("period.type", f"one of {', '.join(PERIOD_TYPES)}")
        else:
            raise bad("period", 'a period ("202401"), {"question": "name"} or '
                      '{"date": "name" or "received", "type": "Monthly"}')
        m.period = period
        for key in ("dataSet", "attributeOptionCombo"):
            if key in raw and not is_uid(raw[key]):
                raise bad(key, "a DHIS2 uid")
        m.data_set = raw.get("dataSet")
        m.attribute_option_combo = raw.get("attributeOptionCombo")
        m.combine = raw.get("combine", "latest")
        if m.combine not in ("latest", "sum"):
            raise bad("combine", '"latest" (the submission sent last wins) or "sum" (DHIS2 '
                      "gets the total of the submissions for each cell)")
        for key in ("program", "programStage", "occurredAt"):
            if key in raw:
                raise InvalidInput(f"{file}: {key!r} is for events, not dataValueSets.",
                                   file=file, field=key)
    return m


# --- submissions --------------------------------------------------------------------------


@dataclass
class Submission:
    instance_id: str
    form_id: str
    data: dict[str, Any]
    org_unit_uuid: str | None = None
    received_at: str | None = None


class SubmissionReader(Protocol):
    """Where push-data finds submissions (the local server's ``submission`` table)."""

    def submissions(self, form_id: str) -> Iterator[Submission]: ...


class TableSubmissions:
    """Complete submissions of a form from the ``submission`` table (migration 0003)."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def submissions(self, form_id: str) -> Iterator[Submission]:
        with self.reg.read() as conn:
            known = conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM form WHERE form_id = :f) OR EXISTS "
                "(SELECT 1 FROM submission WHERE form_id = :f)"), {"f": form_id}).scalar()
            if not known:
                # a typo would otherwise send nothing, every night, and say "ok"
                forms = sorted(str(f) for f in conn.execute(text(
                    "SELECT form_id FROM form UNION SELECT DISTINCT form_id FROM submission"
                )).scalars())
                raise NotFound(
                    f"No form {form_id!r} in this registry (no such form and no submission "
                    f"of it); forms: {', '.join(forms) if forms else 'none'} "
                    "(georeg forms list REG).")
            rows = conn.execute(text(
                "SELECT instance_id, form_id, data, xml, org_unit_uuid, received_at "
                "FROM submission WHERE form_id = :f AND status = 'complete' ORDER BY fid"),
                {"f": form_id}).all()
        for r in rows:
            data = json_value(r.data)
            if not isinstance(data, dict) or not data:
                data = xml_to_dict(bytes(r.xml)) if r.xml is not None else {}
            yield Submission(r.instance_id, r.form_id, data, r.org_unit_uuid,
                             str(r.received_at) if r.received_at is not None else None)


def xml_to_dict(xml: bytes) -> dict[str, Any]:
    """A submission's XML as nested dicts (element name → text or children)."""
    from defusedxml import ElementTree

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    def walk(el: Any) -> Any:
        kids = list(el)
        if not kids:
            return (el.text or "").strip()
        out: dict[str, Any] = {}
        for k in kids:
            out[local(k.tag)] = walk(k)
        return out

    root = ElementTree.fromstring(xml)
    return {local(root.tag): walk(root)}


def _flatten(data: Any, prefix: str = "") -> dict[str, list[Any]]:
    """path → its answers (several for a question inside a repeat)."""
    out: dict[str, list[Any]] = {}
    if isinstance(data, list):
        for item in data:
            for path, values in _flatten(item, prefix).items():
                out.setdefault(path, []).extend(values)
    elif isinstance(data, dict):
        for k, v in data.items():
            if str(k).startswith(("@", "#")):
                continue
            path = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, (dict, list)):
                for sub, values in _flatten(v, path).items():
                    out.setdefault(sub, []).extend(values)
            else:
                out.setdefault(path, []).append(v)
    return out


def answer(data: dict[str, Any], question: str) -> Any:
    """The answer to ``question`` (a path ``group/q`` or a name unique in the submission);
    a list when the question is inside a repeat answered more than once."""
    flat = _flatten(data)
    q = question.strip("/")
    hits = {path: v for path, v in flat.items() if path == q or path.endswith("/" + q)}
    if len(hits) > 1:
        raise ValueError(f"question {question!r} is ambiguous (found at {', '.join(hits)}); "
                         "name it by its path, e.g. group/question")
    if not hits:
        return None
    values = [v for v in next(iter(hits.values()))
              if v is not None and not (isinstance(v, str) and not v.strip())]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# --- turning submissions into payloads -----------------------------------------------------


class SubmissionProblem(Exception):
    """A submission that cannot be sent as it is (reported for it, others go on)."""


def event_uid(instance_id: str, target: str) -> str:
    """The event's DHIS2 uid, derived from the submission and the target: the same on every
    attempt, so a retry after a lost answer updates the event instead of making a second."""
    return derived_uid(f"{target}|{instance_id}")


def _period(date: dt.date, kind: str) -> str:
    if kind == "Daily":
        return date.strftime("%Y%m%d")
    if kind == "Weekly":
        year, week, _ = date.isocalendar()
        return f"{year}W{week}"
    if kind == "Monthly":
        return date.strftime("%Y%m")
    if kind == "Quarterly":
        return f"{date.year}Q{(date.month - 1) // 3 + 1}"
    return str(date.year)


def _date(value: Any, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise SubmissionProblem(f"{what} {value!r} is not a date (YYYY-MM-DD)") from None


class Builder:
    def __init__(self, reg: Registry, mapping: Mapping, target: str,
                 known_events: dict[str, str] | None = None) -> None:
        self.reg = reg
        self.m = mapping
        self.target = target
        #: instance_id → the event uid DHIS2 already has for it (sent again: the same event)
        self.known_events = known_events or {}
        self._units: dict[str, tuple[str | None, str]] = {}

    def _unit(self, key: str) -> tuple[str | None, str]:
        """(DHIS2 uid or None, unit name) of a unit known by uuid or ref (newest version)."""
        if key not in self._units:
            with self.reg.read() as conn:
                row = conn.execute(text(
                    "SELECT source_ref, name FROM org_unit WHERE uuid = :k OR source_ref = :k "
                    "ORDER BY version_id DESC LIMIT 1"), {"k": key}).first()
            self._units[key] = (row.source_ref, row.name) if row else (None, "")
        return self._units[key]

    def org_unit(self, sub: Submission) -> tuple[str, str]:
        if self.m.org_unit.get("from") == "submission":
            key = sub.org_unit_uuid
            if not key:
                raise SubmissionProblem("it names no org unit (the mapping takes the "
                                        "submission's unit)")
        else:
            q = self.m.org_unit["question"]
            value = self._answer(sub, q)
            if value is None:
                raise SubmissionProblem(f"question {q!r} (the org unit) is not answered")
            key = str(value).strip()
        ref, name = self._unit(key)
        if ref is None and name == "":
            if is_uid(key):
                return key, key
            raise SubmissionProblem(f"its org unit {key} is not in the registry")
        if not is_uid(ref):
            raise SubmissionProblem(f"its org unit {name!r} has no DHIS2 uid (ref {ref!r}); "
                                    "pull the units from DHIS2 or push them first")
        return str(ref), name

    def _answer(self, sub: Submission, question: str) -> Any:
        try:
            value = answer(sub.data, question)
        except ValueError as error:
            raise SubmissionProblem(str(error)) from None
        if isinstance(value, list):
            raise SubmissionProblem(f"question {question!r} is inside a repeat ({len(value)} "
                                    "answers); push-data sends one value per question")
        table = self.m.values.get(question)
        if table is not None and value is not None:
            value = table.get(str(value), value)
        return value

    def values(self, sub: Submission) -> list[tuple[DataElementTarget, str]]:
        out = []
        for question, target in self.m.data_elements.items():
            value = self._answer(sub, question)
            if value is None:
                continue
            out.append((target, str(value).strip() if isinstance(value, str) else
                        json.dumps(value) if isinstance(value, (dict, list)) else str(value)))
        if not out:
            raise SubmissionProblem("none of the mapped questions is answered")
        return out

    def event(self, sub: Submission, tracker: bool) -> dict[str, Any]:
        ou, _name = self.org_unit(sub)
        if self.m.occurred_at.get("from") == "received":
            if not sub.received_at:
                raise SubmissionProblem("it has no reception date")
            when = _date(sub.received_at, "the reception date")
        else:
            q = self.m.occurred_at["question"]
            raw = self._answer(sub, q)
            if raw is None:
                raise SubmissionProblem(f"question {q!r} (the event date) is not answered")
            when = _date(raw, f"the answer to {q!r}")
        data_values = [{"dataElement": t.data_element, "value": v} for t, v in self.values(sub)]
        uid = self.known_events.get(sub.instance_id) or event_uid(sub.instance_id, self.target)
        ev: dict[str, Any] = {"event": uid,
                              "program": self.m.program, "programStage": self.m.program_stage,
                              "orgUnit": ou, "status": "COMPLETED", "dataValues": data_values}
        ev["occurredAt" if tracker else "eventDate"] = when.isoformat()
        return ev

    def period(self, sub: Submission) -> str:
        p = self.m.period
        if isinstance(p, str):
            return p
        assert isinstance(p, dict)
        if "question" in p:
            raw = self._answer(sub, p["question"])
            if raw is None or not PERIOD_RE.match(str(raw).strip()):
                raise SubmissionProblem(f"question {p['question']!r} (the period) is "
                                        f"{'not answered' if raw is None else repr(raw)}; "
                                        "expected a DHIS2 period such as 202401")
            return str(raw).strip()
        if p["date"] == "received":
            if not sub.received_at:
                raise SubmissionProblem("it has no reception date")
            date = _date(sub.received_at, "the reception date")
        else:
            raw = self._answer(sub, p["date"])
            if raw is None:
                raise SubmissionProblem(f"question {p['date']!r} (the period's date) is not "
                                        "answered")
            date = _date(raw, f"the answer to {p['date']!r}")
        return _period(date, p["type"])

    def data_value_set(self, sub: Submission) -> dict[str, Any]:
        ou, _name = self.org_unit(sub)
        period = self.period(sub)
        body: dict[str, Any] = {"period": period, "orgUnit": ou, "dataValues": []}
        if self.m.data_set:
            body["dataSet"] = self.m.data_set
        if self.m.attribute_option_combo:
            body["attributeOptionCombo"] = self.m.attribute_option_combo
        for t, v in self.values(sub):
            dv = {"dataElement": t.data_element, "period": period, "orgUnit": ou, "value": v}
            if t.category_option_combo:
                dv["categoryOptionCombo"] = t.category_option_combo
            body["dataValues"].append(dv)
        return body


# --- export status -------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def export_target(client: Dhis2Client, suffix: str) -> tuple[str, str]:
    """(the export target of ``suffix`` on this DHIS2, the name earlier versions gave it).

    The target is the server's identity (``systemId``, which DHIS2 keeps for its whole
    life), not the address it is reached by: the LAN address first, the host name later,
    http then https must not make every submission "not yet exported" there — sent again
    as new events.  Without a system id (an old or odd server) the address stands in,
    with the spellings of one address (case, default port) made one."""
    system_id = str(client.system_info().get("systemId") or "").strip()
    legacy = f"{client.base_url}#{suffix}"
    if system_id:
        return f"dhis2:{system_id}#{suffix}", legacy
    parts = urlsplit(client.base_url)
    host = (parts.hostname or "").lower()
    port = parts.port if parts.port not in (None, 80, 443) else None
    return f"dhis2:{host}{f':{port}' if port else ''}{parts.path.rstrip('/')}#{suffix}", legacy


def _adopt_target(reg: Registry, legacy: str, target: str) -> None:
    """Export rows kept under the address-based name (before ``export_target``) move to
    the server's target, so what was exported is not sent again."""
    if legacy == target:
        return
    with reg.read() as conn:
        if conn.execute(text("SELECT 1 FROM data_export WHERE target = :l LIMIT 1"),
                        {"l": legacy}).first() is None:
            return
    with reg.write(origin="dhis2", audit=False) as conn:
        # an event that failed (or whose answer was lost) under the old name may be in
        # DHIS2 with the uid made from that name: the retry must use it, not a new one
        unsent = conn.execute(text(
            "SELECT instance_id FROM data_export WHERE target = :l AND kind = 'event' "
            "AND remote_ref IS NULL"), {"l": legacy}).scalars().all()
        for instance_id in unsent:
            conn.execute(text("UPDATE data_export SET remote_ref = :r WHERE target = :l "
                              "AND instance_id = :i"),
                         {"r": event_uid(instance_id, legacy), "l": legacy, "i": instance_id})
        conn.execute(text(
            "UPDATE data_export SET target = :t WHERE target = :l AND instance_id NOT IN "
            "(SELECT instance_id FROM data_export WHERE target = :t)"), {"t": target, "l": legacy})


def export_states(reg: Registry, target: str, instance_ids: Iterable[str] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """instance_id → {status, remote_ref, attempts, error, exported_at} for one target."""
    sql = ("SELECT instance_id, status, remote_ref, attempts, error, exported_at, details "
           "FROM data_export WHERE target = :t")
    params: dict[str, Any] = {"t": target}
    stmt = text(sql)
    if instance_ids is not None:
        stmt = text(sql + " AND instance_id IN :ids").bindparams(bindparam("ids", expanding=True))
        params["ids"] = sorted(set(instance_ids)) or [""]
    with reg.read() as conn:
        return {r.instance_id: {"status": r.status, "remote_ref": r.remote_ref,
                                "attempts": r.attempts, "error": r.error,
                                "exported_at": r.exported_at, "details": json_value(r.details)}
                for r in conn.execute(stmt, params)}


def _record(reg: Registry, target: str, kind: str, rows: list[dict[str, Any]]) -> None:
    """Upsert export rows: {instance_id, status, remote_ref, error, details}."""
    if not rows:
        return
    now = _now()
    pg = reg.backend.value == "postgis"
    with reg.write(origin="dhis2", audit=False) as conn:
        for r in rows:
            params = {"i": r["instance_id"], "t": target, "k": kind, "s": r["status"],
                      "ref": r.get("remote_ref"), "e": r.get("error"),
                      "d": json.dumps(r.get("details")) if r.get("details") is not None else None,
                      "now": now, "x": now if r["status"] == "exported" else None,
                      "inc": 1 if r.get("attempt", True) else 0}
            details = "CAST(:d AS jsonb)" if pg else ":d"
            updated = conn.execute(text(
                f"UPDATE data_export SET status = :s, remote_ref = COALESCE(:ref, remote_ref), "
                f"error = :e, details = {details}, attempts = attempts + :inc, "
                "last_attempt_at = :now, exported_at = COALESCE(:x, exported_at) "
                "WHERE instance_id = :i AND target = :t"), params).rowcount
            # the server's own column, for its pages: the latest export outcome
            conn.execute(text(
                "UPDATE submission SET export_status = :s, exported_at = COALESCE(:x, "
                "exported_at), export_ref = COALESCE(:ref, export_ref) WHERE instance_id = :i "
                "AND NOT (export_status = 'exported' AND :s = 'failed')"),
                {"s": r["status"], "x": params["x"], "ref": r.get("remote_ref"),
                 "i": r["instance_id"]})
            if not updated:
                conn.execute(text(
                    "INSERT INTO data_export (instance_id, target, kind, status, remote_ref, "
                    "attempts, error, details, first_attempt_at, last_attempt_at, exported_at) "
                    f"VALUES (:i, :t, :k, :s, :ref, :inc, :e, {details}, :now, :now, :x)"),
                    params)


# --- the push -------------------------------------------------------------------------------


def push_data(reg: Registry, client: Dhis2Client, form_id: str, mapping: Mapping, *,
              reader: SubmissionReader | None = None, dry_run: bool = False,
              again: bool = False, batch_size: int = EVENT_BATCH) -> dict[str, Any]:
    """Send the form's submissions not yet exported to this target; the report (plain data).

    ``dry_run``: DHIS2 validates (``importMode=VALIDATE`` / ``dryRun=true``), nothing is
    stored there or here.  ``again``: also re-send submissions already exported.
    """
    reader = reader or TableSubmissions(reg)
    subs = list(reader.submissions(form_id))  # an unknown form: refused before DHIS2 is asked
    requests_before = client.request_count
    target, legacy = export_target(client, mapping.target_suffix)
    kind = KINDS[mapping.kind]
    if dry_run:
        states = export_states(reg, legacy) | export_states(reg, target)
    else:
        _adopt_target(reg, legacy, target)
        states = export_states(reg, target)
    todo = [s for s in subs if again or states.get(s.instance_id, {}).get("status") != "exported"]
    major, minor = client.version
    tracker = (major, minor) >= (2, 38)
    builder = Builder(reg, mapping, target, {
        i: str(st["remote_ref"]) for i, st in states.items()
        if st.get("remote_ref") and is_uid(st["remote_ref"])})
    report: dict[str, Any] = {
        "form": form_id, "target": target, "server": client.base_url, "kind": mapping.kind,
        "dry_run": dry_run,
        "endpoint": ("tracker" if tracker else "events") if mapping.kind == "events"
        else "dataValueSets",
        "submissions": len(subs), "already_exported": len(subs) - len(todo),
        "sent": 0, "exported": 0, "failed": 0, "created": 0, "updated": 0, "errors": [],
        "warnings": []}
    rows: list[dict[str, Any]] = []

    def fail(sub: Submission, message: str, details: Any = None, sent: bool = True) -> None:
        report["failed"] += 1
        where = ""
        if sub.org_unit_uuid:
            _ref, name = builder._unit(sub.org_unit_uuid)
            where = f" (unit {name!r})" if name else ""
        report["errors"].append({"instance_id": sub.instance_id, "unit": where.strip(" ()"),
                                 "message": message, "dhis2": details})
        rows.append({"instance_id": sub.instance_id, "status": "failed",
                     "error": message, "details": details, "attempt": sent})

    ready: list[tuple[Submission, dict[str, Any]]] = []
    for sub in todo:
        try:
            payload = (builder.event(sub, tracker) if mapping.kind == "events"
                       else builder.data_value_set(sub))
        except SubmissionProblem as problem:
            fail(sub, f"Submission {sub.instance_id} was not sent: {problem}.", sent=False)
            continue
        ready.append((sub, payload))
    try:
        if mapping.kind == "events":
            for start in range(0, len(ready), max(1, batch_size)):
                _send_events(client, ready[start:start + batch_size], tracker, dry_run,
                             report, rows, fail)
        else:
            names = {t.data_element: q for q, t in mapping.data_elements.items()}
            sent_before = [s for s in subs if s not in todo]
            if mapping.combine == "sum":
                for subs_of, total in _totals(builder, ready, sent_before, names, fail):
                    _send_data_values(client, subs_of, total, dry_run, report, rows, fail,
                                      names)
            else:
                report["warnings"] = _shared_values(builder, ready, sent_before, names)
                for sub, body in ready:
                    _send_data_values(client, [sub], body, dry_run, report, rows, fail, names)
    finally:
        report["requests"] = client.request_count - requests_before
        if not dry_run:
            _record(reg, target, kind, rows)
    report["errors"] = report["errors"][:MAX_LISTED]
    report["ok"] = report["failed"] == 0
    return report


def _sent_bodies(builder: Builder, sent_before: list[Submission]
                 ) -> list[tuple[str, dict[str, Any]]]:
    """(instance_id, data value set) of the submissions exported before (as sent)."""
    out = []
    for sub in sent_before:
        try:
            out.append((sub.instance_id, builder.data_value_set(sub)))
        except SubmissionProblem:
            continue
    return out


def _cells(body: dict[str, Any]) -> Iterator[tuple[tuple[str, ...], str]]:
    """(cell, value) of a data value set: DHIS2 keeps one value per data element,
    period, org unit and option combo (the attribute combo is the mapping's, one for all)."""
    for dv in body["dataValues"]:
        yield (dv["dataElement"], dv["period"], dv["orgUnit"],
               dv.get("categoryOptionCombo") or ""), str(dv["value"])


def _shared_values(builder: Builder, ready: list[tuple[Submission, dict[str, Any]]],
                   sent_before: list[Submission], names: dict[str, str]) -> list[str]:
    """Warnings for data values two submissions give for the same cell.

    DHIS2 keeps one value per data element, period, org unit and option combos: of two
    submissions for the same facility and month (a per-visit form mapped to a monthly
    data set, say), the one sent last replaces the other instead of adding to it."""
    cells: dict[tuple[str, ...], list[str]] = {}
    bodies = [(sub.instance_id, body) for sub, body in ready]
    for instance_id, body in bodies + _sent_bodies(builder, sent_before):
        for key, _value in _cells(body):
            cells.setdefault(key, []).append(instance_id)
    out = []
    for (de, period, ou, _coc), ids in cells.items():
        if len(ids) < 2:
            continue
        unit = next((name for (ref, name) in builder._units.values() if ref == ou), ou)
        out.append(f"Submissions {', '.join(ids)} all give question {names.get(de, de)!r} "
                   f"(data element {de}) for {unit} in {period}: DHIS2 keeps one value per "
                   "data element, period and unit, so the one sent last replaces the others. "
                   'Map the form as events, or add them up with "combine": "sum".')
    return out[:MAX_LISTED]


def _send_events(client: Dhis2Client, batch: list[tuple[Submission, dict[str, Any]]],
                 tracker: bool, dry_run: bool, report: dict[str, Any],
                 rows: list[dict[str, Any]], fail: Any) -> None:
    if not batch:
        return
    events = [ev for _s, ev in batch]
    if tracker:
        params = {"async": "false", "atomicMode": "OBJECT", "importStrategy":
                  "CREATE_AND_UPDATE", "importMode": "VALIDATE" if dry_run else "COMMIT",
                  "reportMode": "FULL"}
        resp = client.request("POST", "tracker", params=params, json={"events": events},
                              idempotent=True, accept=(409,))
        body = resp.json()
        errors: dict[str, list[dict[str, Any]]] = {}
        for e in (body.get("validationReport") or {}).get("errorReports") or []:
            errors.setdefault(str(e.get("uid")), []).append(e)
        stats = body.get("stats") or {}
        report["created"] += int(stats.get("created") or 0)
        report["updated"] += int(stats.get("updated") or 0)
        report["sent"] += len(batch)
        if body.get("status") == "ERROR" and not errors:
            # the import failed as a whole (DHIS2 could not commit: a database error, a
            # deadlock…): no event was stored, so none is exported — they go next time
            said = body.get("message") or "no reason given"
            for sub, _ev in batch:
                fail(sub, f"DHIS2 stored no event of this batch: {said}", {"dhis2": said})
            raise GeoregError(f"DHIS2 refused the events as a whole: {said}. Nothing of this "
                              "batch was stored; the submissions are sent again next time.")
        for sub, ev in batch:
            problems = errors.get(ev["event"])
            if problems:
                said = "; ".join(f"{p.get('message')} ({p.get('errorCode')})" for p in problems)
                fail(sub, f"DHIS2 refused the event of submission {sub.instance_id}: {said}",
                     problems)
            else:
                report["exported"] += 1
                rows.append({"instance_id": sub.instance_id, "status": "exported",
                             "remote_ref": ev["event"], "details": {"event": ev["event"]}})
        return
    params = {"importStrategy": "CREATE_AND_UPDATE", "dryRun": str(dry_run).lower()}
    resp = client.request("POST", "events", params=params, json={"events": events},
                          idempotent=True, accept=(409,))
    body = resp.json()
    inner = body.get("response", body)
    summaries = {str(s.get("reference")): s for s in inner.get("importSummaries") or []}
    report["created"] += int(inner.get("imported") or 0)
    report["updated"] += int(inner.get("updated") or 0)
    report["sent"] += len(batch)
    for sub, ev in batch:
        s = summaries.get(ev["event"])
        if s is None or s.get("status") == "ERROR":
            said = (s or {}).get("description") or "no import summary for this event"
            more = "; ".join(str(c.get("value")) for c in (s or {}).get("conflicts") or [])
            fail(sub, f"DHIS2 refused the event of submission {sub.instance_id}: {said}"
                 f"{'; ' + more if more else ''}", s)
        else:
            report["exported"] += 1
            rows.append({"instance_id": sub.instance_id, "status": "exported",
                         "remote_ref": ev["event"], "details": {"event": ev["event"]}})


def _send_data_values(client: Dhis2Client, subs: list[Submission], body: dict[str, Any],
                      dry_run: bool, report: dict[str, Any], rows: list[dict[str, Any]],
                      fail: Any, names: dict[str, str]) -> None:
    """One data value set: a submission's values, or (``combine: sum``) the totals the
    ``subs`` add up to — exported, or refused, together."""
    params = {"importStrategy": "CREATE_AND_UPDATE", "dryRun": str(dry_run).lower()}
    resp = client.request("POST", "dataValueSets", params=params, json=body, idempotent=True,
                          accept=(409,))
    raw = resp.json()
    summary = raw.get("response", raw) if isinstance(raw, dict) else {}
    counts = summary.get("importCount") or {}
    report["sent"] += len(subs)
    report["created"] += int(counts.get("imported") or 0)
    report["updated"] += int(counts.get("updated") or 0)
    conflicts = summary.get("conflicts") or []
    ref = f"{body.get('dataSet', '-')}/{body['period']}/{body['orgUnit']}"
    if conflicts or summary.get("status") == "ERROR":
        said = "; ".join(_conflict_words(c, names) for c in conflicts) or \
            str(summary.get("description") or "status ERROR")
        for sub in subs:
            fail(sub, f"DHIS2 refused data values of submission {sub.instance_id}: {said}",
                 conflicts)
    else:
        for sub in subs:
            report["exported"] += 1
            rows.append({"instance_id": sub.instance_id, "status": "exported",
                         "remote_ref": ref, "details": {"importCount": counts} | (
                             {"total_of": len(subs)} if len(subs) > 1 else {})})


def _totals(builder: Builder, ready: list[tuple[Submission, dict[str, Any]]],
            sent_before: list[Submission], names: dict[str, str], fail: Any
            ) -> list[tuple[list[Submission], dict[str, Any]]]:
    """``combine: sum``: for each period and unit the new submissions touch, one data
    value set with, per cell, the total of every submission for it — those sent before
    included (DHIS2 keeps the one value it is given, so it must be the whole total;
    sending it again gives the same)."""
    def number(value: str) -> float | None:
        try:
            return float(value)
        except ValueError:
            return None

    groups: dict[tuple[str, str], tuple[list[Submission], dict[str, Any]]] = {}
    for sub, body in ready:
        odd = [names.get(key[0], key[0]) for key, value in _cells(body) if number(value) is None]
        if odd:
            fail(sub, f"Submission {sub.instance_id} was not sent: the mapping adds the "
                 f"submissions up (combine: sum), and question {odd[0]!r} is not a number.",
                 sent=False)
            continue
        subs, _ = groups.setdefault((body["period"], body["orgUnit"]), ([], body))
        subs.append(sub)
    totals: dict[tuple[str, ...], float] = {}
    bodies = [b for _i, b in _sent_bodies(builder, sent_before)] + [b for _s, b in ready]
    for body in bodies:
        for key, value in _cells(body):
            if (key[1], key[2]) in groups and (n := number(value)) is not None:
                totals[key] = totals.get(key, 0.0) + n
    out = []
    for (period, unit), (subs, model) in groups.items():
        total = {k: v for k, v in model.items() if k != "dataValues"}
        total["dataValues"] = []
        for (de, pe, ou, coc), amount in sorted(totals.items()):
            if (pe, ou) != (period, unit):
                continue
            dv = {"dataElement": de, "period": pe, "orgUnit": ou,
                  "value": str(int(amount)) if amount.is_integer() else repr(amount)}
            if coc:
                dv["categoryOptionCombo"] = coc
            total["dataValues"].append(dv)
        out.append((subs, total))
    return out


def _conflict_words(c: dict[str, Any], names: dict[str, str]) -> str:
    """A data value conflict in the user's terms: the question, then what DHIS2 said."""
    code = f" ({c['errorCode']})" if c.get("errorCode") else ""
    objects = c.get("objects") or {}
    de = objects.get("dataElement") or c.get("object")
    if de not in names:  # 2.36 names the value, not the element: find the element in the text
        de = next((d for d in names if d in str(c.get("value"))), de)
    where = f"question {names[de]!r} (data element {de}): " if de in names else ""
    return f"{where}{c.get('value')}{code}"


def export_history(reg: Registry, form_id: str | None = None, *, limit: int = 100
                   ) -> list[dict[str, Any]]:
    """Rows of data_export (newest first), with the form when the submission is known."""
    sql = ("SELECT e.instance_id, e.target, e.kind, e.status, e.remote_ref, e.attempts, "
           "e.error, e.last_attempt_at, e.exported_at, s.form_id FROM data_export e "
           "LEFT JOIN submission s ON s.instance_id = e.instance_id")
    params: dict[str, Any] = {"n": limit}
    if form_id:
        sql += " WHERE s.form_id = :f"
        params["f"] = form_id
    sql += " ORDER BY e.fid DESC LIMIT :n"
    with reg.read() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]
