"""The OpenAPI 3.1 description of the REST API, served at ``/api/openapi.json``.

Written by hand next to the handlers (``local_server/rest_api.py``) and checked against
the running server by schemathesis (``tests/test_openapi.py``): every documented
parameter is fuzzed and every answer must match its documented status, content type
and schema.
"""

from __future__ import annotations

from typing import Any

VERSION = "1.0.0"

_STR = {"type": "string"}
_QSTR = {"type": "string", "pattern": "^[^\\x00]*$"}  # query text: anything but NUL
_NSTR = {"type": ["string", "null"]}
_INT = {"type": "integer"}
_NINT = {"type": ["integer", "null"]}
_NUM_OR_NULL = {"type": ["number", "null"]}
_NUM = r"-?(180(\.0+)?|1[0-7][0-9](\.[0-9]+)?|[0-9]{1,2}(\.[0-9]+)?)"
_BBOX = f"^{_NUM},{_NUM},{_NUM},{_NUM}$"
_SPEC = {"type": "string", "pattern": r"^[^:\x00]+(:[1-9][0-9]{0,8})?$"}
_FIELD = {"enum": ["name", "parent", "type", "code", "opening_date", "closed_date", "location",
                   "territory", "groups"]}


def _diff_fields_pattern() -> str:
    from storage.diff import FIELD_ALIASES, FIELDS

    names = "|".join(sorted({*FIELDS, *FIELD_ALIASES}, key=len, reverse=True))
    return f"^({names})(,({names}))*$"


_DIFF_FIELDS = _diff_fields_pattern()


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK",
          content_type: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {content_type: {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad input (the message names the parameter or field)",
            401: "Not signed in (Digest challenge, or a Bearer token is needed)",
            403: "Not allowed for this user (role or subtree)",
            404: "Not found", 409: "Conflict (already reviewed, published version …)"}
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _p(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[^\\x00/]+$"}, "description": description}


PAGE = [_q("page", {"type": "integer", "minimum": 1, "maximum": 10**9}, "Page number, from 1."),
        _q("limit", {"type": "integer", "minimum": 1, "maximum": 5000},
           "Items per page (default 100).")]
VERSION_PARAMS = [_q("source", _QSTR, "Data source name (default: the first source)."),
                  _q("version", {"type": "integer", "minimum": 1, "maximum": 10**9},
                     "Version number (default: the source's default version, else newest).")]


def _page_of(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object",
            "required": ["count", key, "page", "pages", "limit", "has_next", "has_previous"],
            "properties": {"count": _INT, key: {"type": "array", "items": item}, "page": _INT,
                           "pages": _INT, "limit": _INT, "has_next": {"type": "boolean"},
                           "has_previous": {"type": "boolean"}}}


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "message"],
              "properties": {"error": _STR, "message": _STR, "details": {"type": "object"}}},
    "Version": {"type": "object", "required": ["id", "number", "status"],
                "properties": {"id": _INT, "number": _INT,
                               "status": {"enum": ["draft", "published"]},
                               "default": {"type": "boolean"}, "units": _INT,
                               "description": _NSTR, "created_at": _NSTR,
                               "created_by": _NSTR, "published_at": _NSTR}},
    "VersionRef": {"type": "object", "required": ["id", "source", "number", "status", "label"],
                   "properties": {"id": _INT, "source_id": _INT, "source": _STR,
                                  "number": _INT, "status": _STR, "label": _STR}},
    "Source": {"type": "object", "required": ["id", "name"],
               "properties": {"id": _INT, "name": _STR, "description": _NSTR, "versions": _INT,
                              "default_version": _NINT, "latest_version": _NINT}},
    "OrgUnit": {
        "type": "object", "required": ["uuid", "name", "path", "depth", "validation_status"],
        "properties": {
            "uuid": _STR, "source_ref": _NSTR, "name": _STR, "code": _NSTR, "type": _NSTR,
            "depth": _INT, "path": _STR, "parent_uuid": _NSTR, "parent_ref": _NSTR,
            "parent_name": _NSTR, "validation_status": {"enum": ["new", "valid", "rejected"]},
            "opening_date": _NSTR, "closed_date": _NSTR,
            "aliases": {"type": "array", "items": _STR},
            "extra_fields": {"type": "object"},
            "location": {"type": ["array", "null"], "items": {"type": "number"},
                         "minItems": 2, "maxItems": 2,
                         "description": "[longitude, latitude] (EPSG:4326)"},
            "territory": {"type": ["object", "null"], "description": "GeoJSON geometry"},
        },
    },
    "ChangeRequest": {
        "type": "object",
        "required": ["id", "uuid", "kind", "status", "requested_fields", "approved_fields",
                     "new", "old", "version"],
        "properties": {
            "id": _INT, "uuid": _STR, "kind": {"enum": ["creation", "change"]},
            "status": {"enum": ["new", "approved", "rejected"]}, "version": _STR,
            "version_id": _INT, "source": _STR, "unit_uuid": _NSTR, "unit_name": _NSTR,
            "requested_fields": {"type": "array", "items": _STR},
            "approved_fields": {"type": "array", "items": _STR},
            "new": {"type": "object"}, "old": {"type": "object"},
            "location_accuracy": _NUM_OR_NULL, "created_by": _NSTR, "created_at": _STR,
            "reviewed_by": _NSTR, "reviewed_at": _NSTR, "rejection_comment": _NSTR,
            "applied_to": _STR,
        },
    },
    "Link": {"type": "object", "required": ["id", "left", "right", "status"],
             "properties": {"id": _INT, "run_id": _NINT, "left": {"type": "object"},
                            "right": {"type": "object"}, "score": _NUM_OR_NULL,
                            "status": _STR, "kind": _STR, "reviewer": _NSTR}},
    "Submission": {"type": "object", "required": ["id", "form_id", "instance_id"],
                   "properties": {"id": _INT, "form_id": _STR, "instance_id": _STR,
                                  "received_at": _NSTR, "submitted_by": _NSTR,
                                  "org_unit_ref": _NSTR,
                                  "location": {"type": ["array", "null"]},
                                  "attachments": {"type": "array"},
                                  "data": {"type": ["object", "null"]}}},
    "Diff": {"type": "object", "description": "storage.diff.VersionDiff.to_dict()"},
    "TokenPair": {"type": "object", "required": ["access", "refresh"],
                  "properties": {"access": _STR, "refresh": _STR}},
}


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    ou_params = [
        *VERSION_PARAMS,
        _q("type", _QSTR, "Only units of this org-unit type (name)."),
        _q("level", {"type": "integer", "minimum": 1, "maximum": 1000},
           "Only units at this level (the unit's depth): 1 = the roots, 2 = their "
           "children … Levels start at 1; 0 is refused (400)."),
        _q("parent", _QSTR, "Only the children of this unit (uuid or source ref)."),
        _q("bbox", {"type": "string", "pattern": _BBOX},
           "minlon,minlat,maxlon,maxlat (degrees): units whose point or territory meets the "
           "box. Each axis is taken in order, so a swapped min and max is the same box."),
        _q("q", _QSTR, "Name contains (case-insensitive)."),
        _q("validation_status", {"enum": ["new", "valid", "rejected"]}, "Only this status."),
        _q("format", {"enum": ["json", "geojson"]}, "json (default) or geojson."),
        _q("territory", {"enum": ["true", "false"]}, "Include territories in JSON."),
        *PAGE,
    ]
    units_page = _page_of("org_units", _ref("OrgUnit"))
    units_page["properties"]["version"] = _ref("VersionRef")
    geojson = {"type": "object", "required": ["type", "features"],
               "properties": {"type": {"const": "FeatureCollection"},
                              "features": {"type": "array"}, "count": _INT}}
    paths: dict[str, Any] = {
        "/api/token/": {"post": {
            "summary": "Get a Bearer token (Iaso app and scripts)", "security": [],
            "tags": ["auth"],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["username", "password"],
                "properties": {"username": _STR, "password": _STR}}}}},
            "responses": {"200": _json(_ref("TokenPair")),
                          "400": _json({"type": "object"}, "Missing fields"),
                          "401": _json({"type": "object"}, "Wrong credentials")}}},
        "/api/v1/sources": {"get": {
            "summary": "Data sources", "tags": ["registry"],
            "responses": {"200": _json({"type": "object", "required": ["sources"],
                                        "properties": {"sources": {"type": "array",
                                                                   "items": _ref("Source")}}}),
                          **_errors(401)}}},
        "/api/v1/sources/{source}/versions": {"get": {
            "summary": "Versions of a source", "tags": ["registry"],
            "parameters": [_p("source", "Data source name")],
            "responses": {"200": _json({"type": "object", "required": ["versions"],
                                        "properties": {"versions": {"type": "array",
                                                                    "items": _ref("Version")}}}),
                          **_errors(401, 404)}}},
        "/api/v1/orgunits": {"get": {
            "summary": "Org units of a version, filtered and paged (JSON or GeoJSON)",
            "tags": ["org units"], "parameters": ou_params,
            "responses": {"200": {"description": "OK", "content": {
                "application/json": {"schema": units_page},
                "application/geo+json": {"schema": geojson}}},
                **_errors(400, 401, 404)}}},
        "/api/v1/orgunits/{ident}": {"get": {
            "summary": "One org unit with its territory", "tags": ["org units"],
            "parameters": [_p("ident", "uuid or source ref"), *VERSION_PARAMS],
            "responses": {"200": _json(_ref("OrgUnit")), **_errors(400, 401, 404)}}},
        "/api/v1/diff": {"get": {
            "summary": "Differences between two versions", "tags": ["versions"],
            "description": "A user with subtree roots gets the units with one side inside "
                           "their area (left-hand unit in the left version, or right-hand "
                           "unit in the right one); totals, levels and counts are of those.",
            "parameters": [
                {**_q("left", _SPEC, "Before: SOURCE[:NUMBER]"), "required": True},
                {**_q("right", _SPEC, "After: SOURCE[:NUMBER]"), "required": True},
                _q("fields", {"type": "string", "pattern": _DIFF_FIELDS},
                   "Comma-separated fields to compare (default: all)."),
                _q("include_unchanged", {"enum": ["true", "false"]}, "List unchanged units too.")],
            "responses": {"200": _json(_ref("Diff")), **_errors(400, 401, 404)}}},
        "/api/v1/links": {"get": {
            "summary": "Matching links (pairs of units from two versions)", "tags": ["matching"],
            "description": "A user with subtree roots gets the links with either end inside "
                           "their area.",
            "parameters": [_q("run", {"type": "integer", "minimum": 0, "maximum": 10**12}, "Only this run."),
                           _q("status", _QSTR, "Only links with this status."), *PAGE],
            "responses": {"200": _json(_page_of("links", _ref("Link"))), **_errors(400, 401)}}},
        "/api/v1/submissions": {"get": {
            "summary": "Submissions received (newest first), with attachments",
            "tags": ["submissions"],
            "parameters": [_q("form", _QSTR, "Only this form (form id)."),
                           _q("since", {"type": "string", "format": "date-time"}, "Received after this time (ISO)."), *PAGE],
            "responses": {"200": _json(_page_of("submissions", _ref("Submission"))),
                          **_errors(400, 401, 404)}}},
        "/api/v1/changes": {"get": {
            "summary": "Change requests from the field", "tags": ["change requests"],
            "parameters": [_q("status", {"enum": ["new", "approved", "rejected"]}, "Status."),
                           _q("kind", {"enum": ["creation", "change"]}, "Kind."),
                           _q("source", _QSTR, "Only this data source."), *PAGE],
            "responses": {"200": _json(_page_of("change_requests", _ref("ChangeRequest"))),
                          **_errors(400, 401, 404)}}},
        "/api/v1/changes/{ident}": {"get": {
            "summary": "One change request, with old, new and current values",
            "tags": ["change requests"], "parameters": [_p("ident", "number or uuid")],
            "description": "404 when the unit is outside the user's area; 403 when the "
                           "request moves it under a parent outside that area.",
            "responses": {"200": _json(_ref("ChangeRequest")), **_errors(401, 403, 404)}}},
        "/api/v1/changes/{ident}/approve": {"post": {
            "summary": "Approve some or all requested fields; applied to the draft version",
            "tags": ["change requests"], "parameters": [_p("ident", "number or uuid")],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"fields": {
                    "type": "array", "items": _FIELD, "minItems": 1,
                    "description": "Fields to approve (default: every requested field); "
                                   "each must be one the request asks for."}}}}}},
            "responses": {"200": _json(_ref("ChangeRequest")),
                          **_errors(400, 401, 403, 404, 409)}}},
        "/api/v1/changes/{ident}/reject": {"post": {
            "summary": "Reject a change request with a comment", "tags": ["change requests"],
            "parameters": [_p("ident", "number or uuid")],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["comment"],
                "properties": {"comment": {"type": "string", "pattern": r"\S"}}}}}},
            "responses": {"200": _json(_ref("ChangeRequest")),
                          **_errors(400, 401, 403, 404, 409)}}},
        "/api/v1/schedule": {"get": {
            "summary": "Scheduled sync jobs, their last and next runs, and the latest runs",
            "tags": ["sync"],
            "description": "Reviewers and admins only (run errors name the upstream servers).",
            "parameters": [_q("job", _QSTR, "Only the runs of this job."),
                           _q("limit", {"type": "integer", "minimum": 1, "maximum": 500},
                              "How many runs (default 20).")],
            "responses": {"200": _json({
                "type": "object", "required": ["jobs", "runs"],
                "properties": {
                    "jobs": {"type": "array", "items": {
                        "type": "object", "required": ["name", "kind", "schedule", "enabled"],
                        "properties": {"name": _STR, "kind": _STR, "schedule": _STR,
                                       "enabled": {"type": "boolean"},
                                       "next_run": {"type": ["string", "null"]},
                                       "last_run": {"type": ["object", "null"]}}}},
                    "runs": {"type": "array", "items": {
                        "type": "object", "required": ["id", "job", "outcome"],
                        "properties": {"id": {"type": "integer"}, "job": _STR,
                                       "outcome": _STR, "error": {"type": ["string", "null"]}}}},
                }}), **_errors(400, 401, 403)}}},
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Georeg field server REST API", "version": VERSION,
                 "description": "Org units, versions, diffs, links, submissions and change "
                                "requests of one registry. Authenticate with HTTP Digest or "
                                "a Bearer token from POST /api/token/."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "digest": {"type": "http", "scheme": "digest"}}},
        "security": [{"bearer": []}, {"digest": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
