"""A small DHIS2 Web API client: what Georeg needs to pull and push org units.

Built on a :class:`requests.Session` (one connection pool, reused), with
timeouts on every call and bounded retries with exponential backoff on the
failures that are worth retrying: refused or dropped connections, timeouts and
502/503/504/500 answers.  What cannot heal by asking again is said at once: a TLS
set-up error (an https:// address on an http-only port, an untrusted certificate),
401, 403, 404.  A POST is retried only when the caller says it is
idempotent (a metadata import whose objects all carry their uid is: sending it
twice creates nothing twice).

Authentication is basic (user + password) or a personal access token
(``Authorization: ApiToken d2pat_…``, DHIS2 2.37+).  Neither ever appears in a
message, a ``repr`` or a report.

Metadata imports (``POST /api/metadata``) come back in two envelopes depending
on the server and the URL's API version — the bare ImportReport with HTTP 200
even on errors (2.36, or ``/api/37/…``), or from 2.38 the WebMessage wrapper
``{"httpStatus": …, "response": {ImportReport}}`` with HTTP 409 when anything
was refused.  :func:`parse_import_report` turns both into one plain
:class:`MetadataImportResult`: stats plus one :class:`ObjectError` per refused
object and field.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from storage.errors import ConflictError, GeoregError, InvalidInput, NotFound

UID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9]{10}$")
_LETTERS = string.ascii_letters
_ALPHANUMERIC = string.ascii_letters + string.digits

#: statuses retried (with backoff) for idempotent requests
RETRY_STATUSES = frozenset({500, 502, 503, 504})
IMPORT_MODES = ("COMMIT", "VALIDATE")
IMPORT_STRATEGIES = ("CREATE_AND_UPDATE", "CREATE", "UPDATE", "DELETE")
ATOMIC_MODES = ("ALL", "NONE")


def generate_uid() -> str:
    """A DHIS2 uid (``CodeGenerator``): 11 characters, a letter first, then letters/digits."""
    return secrets.choice(_LETTERS) + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(10))


def derived_uid(seed: str) -> str:
    """A DHIS2 uid derived from ``seed`` (SHA-256): the same seed gives the same uid on
    every run — a retry, or a dry run and the push that follows it, agree."""
    digest = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    chars = [_LETTERS[digest % len(_LETTERS)]]
    digest //= len(_LETTERS)
    for _ in range(10):
        chars.append(_ALPHANUMERIC[digest % len(_ALPHANUMERIC)])
        digest //= len(_ALPHANUMERIC)
    return "".join(chars)


def is_uid(value: Any) -> bool:
    return isinstance(value, str) and bool(UID_PATTERN.match(value))


def short_klass(klass: str | None) -> str:
    """``org.hisp.dhis.organisationunit.OrganisationUnit`` → ``OrganisationUnit``."""
    return (klass or "").rsplit(".", 1)[-1]


# --- import reports ---------------------------------------------------------------------


@dataclass
class ObjectError:
    """One thing DHIS2 refused: which object (uid, type, position) and field, and why."""

    klass: str
    uid: str | None
    index: int | None
    property: str | None
    message: str
    error_code: str | None
    value: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MetadataImportResult:
    """A metadata import report, whatever envelope it came in."""

    status: str  # OK | WARNING | ERROR
    stats: dict[str, int]
    errors: list[ObjectError] = field(default_factory=list)
    http_status: int = 200
    envelope: str = "plain"  # plain (bare ImportReport) | wrapped (WebMessage)
    message: str | None = None
    type_stats: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "OK" and not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "ok": self.ok, "stats": self.stats,
                "type_stats": self.type_stats, "http_status": self.http_status,
                "envelope": self.envelope, "message": self.message,
                "errors": [e.to_dict() for e in self.errors]}


_EMPTY_STATS = {"created": 0, "updated": 0, "deleted": 0, "ignored": 0, "total": 0}


def _stats(raw: Any) -> dict[str, int]:
    out = dict(_EMPTY_STATS)
    if isinstance(raw, dict):
        for key in out:
            value = raw.get(key)
            if isinstance(value, int):
                out[key] = value
    return out


def _error_reports(raw: Any, klass: str, uid: str | None, index: int | None
                   ) -> Iterator[ObjectError]:
    for er in raw or []:
        if not isinstance(er, dict):
            continue
        prop = er.get("errorProperty")
        if not prop and isinstance(er.get("errorProperties"), list) and er["errorProperties"]:
            first = er["errorProperties"][0]
            prop = first if isinstance(first, str) else None
        yield ObjectError(
            klass=short_klass(er.get("mainKlass") or klass), uid=uid or er.get("mainId"),
            index=index, property=prop, message=str(er.get("message") or "").strip(),
            error_code=er.get("errorCode"), value=er.get("value"),
        )


def parse_import_report(body: Any, http_status: int = 200) -> MetadataImportResult:
    """Bare (2.36, ``/api/37``) or wrapped (2.38+) ImportReport → one plain structure.

    Also understands an ObjectReport WebMessage (the answer to a PUT of one
    object) and an error WebMessage without a report (the message is kept).
    """
    if not isinstance(body, dict):
        raise GeoregError(f"DHIS2 answered the import with something that is not a report "
                          f"(HTTP {http_status}).")
    envelope = "plain"
    message = None
    report = body
    if isinstance(body.get("response"), dict) and ("httpStatusCode" in body
                                                    or "httpStatus" in body):
        envelope = "wrapped"
        message = body.get("message")
        report = body["response"]
    elif "httpStatusCode" in body and "response" not in body:
        # a WebMessage with no report at all (e.g. a 409 "Conflict" before the import ran)
        status = str(body.get("status") or "ERROR")
        return MetadataImportResult(
            status="ERROR" if status == "OK" else status, stats=dict(_EMPTY_STATS),
            errors=[ObjectError("", None, None, None, str(body.get("message") or ""),
                                body.get("errorCode"))],
            http_status=http_status, envelope="wrapped", message=body.get("message"))
    errors: list[ObjectError] = []
    type_stats: dict[str, dict[str, int]] = {}
    if report.get("responseType") == "ObjectReport" or (
            "errorReports" in report and "typeReports" not in report):
        klass = short_klass(report.get("klass"))
        errors.extend(_error_reports(report.get("errorReports"), klass, report.get("uid"),
                                     report.get("index")))
        status = "ERROR" if errors else "OK"
        if envelope == "wrapped" and body.get("status") not in (None, "OK"):
            status = "ERROR"
        return MetadataImportResult(status=status, stats=dict(_EMPTY_STATS), errors=errors,
                                    http_status=http_status, envelope=envelope, message=message)
    if not {"status", "stats", "typeReports", "importSummaries"} & set(report):
        # not an import report at all (e.g. a metadata export, or a proxy's page): never
        # read as "OK, nothing to do"
        raise GeoregError(f"DHIS2 answered the import (HTTP {http_status}) with something "
                          "that is not an import report; nothing is known to be stored.")
    type_reports = report.get("typeReports") or []
    if isinstance(type_reports, dict):  # some versions key them by class
        type_reports = list(type_reports.values())
    for tr in type_reports:
        if not isinstance(tr, dict):
            continue
        klass = short_klass(tr.get("klass"))
        type_stats[klass] = _stats(tr.get("stats"))
        for obj in tr.get("objectReports") or []:
            if not isinstance(obj, dict):
                continue
            errors.extend(_error_reports(obj.get("errorReports"), klass, obj.get("uid"),
                                         obj.get("index")))
        # type-level error reports (rare) belong to no single object
        errors.extend(_error_reports(tr.get("errorReports"), klass, None, None))
    status = str(report.get("status") or ("ERROR" if errors else "OK"))
    return MetadataImportResult(status=status, stats=_stats(report.get("stats")),
                                errors=errors, http_status=http_status, envelope=envelope,
                                message=message, type_stats=type_stats)


# --- the client ------------------------------------------------------------------------


class _ApiTokenAuth(requests.auth.AuthBase):
    """``Authorization: ApiToken …`` (as an AuthBase, so ~/.netrc never overrides it)."""

    def __init__(self, token: str) -> None:
        token = token.strip()
        self._header = token if token.startswith(("ApiToken ", "Bearer ")) else f"ApiToken {token}"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._header
        return r

    def __repr__(self) -> str:
        return "ApiTokenAuth(***)"


def dhis2_base_url(url: str) -> str:
    """The DHIS2 root of ``url`` (no trailing /api), or a clear error for a URL that
    cannot be one."""
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError as error:  # "Invalid IPv6 URL", "Port out of range 0-65535"
        raise InvalidInput(f"--url {url!r} is not a usable address: {error}.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"--url {url!r} is not an http(s) address of a DHIS2 server "
                           "(e.g. https://dhis2.example.org).")
    if parts.username or parts.password:
        raise InvalidInput("Put the DHIS2 credentials in --user/--password-stdin or a token, "
                           "not in the URL (URLs end up in logs and schedules).")
    path = parts.path.rstrip("/")
    if path.endswith("/api"):
        path = path[:-4]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _redirect_base(resp: requests.Response, path: str) -> str | None:
    """The DHIS2 root a redirect points to (its ``Location`` without ``/api/<path>``)."""
    target = resp.headers.get("Location")
    if not target:
        return None
    parts = urlsplit(requests.compat.urljoin(resp.url, target))
    root = parts.path
    cut = root.find("/api/")
    if cut != -1:
        root = root[:cut]
    elif root.endswith("/" + path.lstrip("/")):
        root = root[: -len(path.lstrip("/")) - 1]
    return urlunsplit((parts.scheme, parts.netloc, root.rstrip("/"), "", ""))


def _network_reason(error: BaseException) -> str:
    text = str(error)
    low = text.lower()
    if isinstance(error, requests.Timeout) or "timed out" in low:
        return "the server did not answer in time"
    if "connection refused" in low:
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low \
            or "failed to resolve" in low or "temporary failure in name resolution" in low:
        return "unknown host name"
    if isinstance(error, requests.exceptions.ChunkedEncodingError) or "incomplete" in low \
            or "connection broken" in low:
        return "the connection was cut in the middle of the answer"
    if "remotedisconnected" in low or "connection aborted" in low or "reset by peer" in low:
        return "the server closed the connection"
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS/SSL error"
    return text.splitlines()[0][:200] if text else type(error).__name__


def _tls_reason(error: BaseException) -> str:
    """What went wrong in a TLS set-up, in a few words (OpenSSL's reason, not the stack of
    wrappers urllib3 puts around it)."""
    text = str(error)
    low = text.lower()
    if "certificate verify failed" in low or "certificate_verify_failed" in low:
        detail = re.search(r"certificate verify failed: ([^(\])'\"]+)", text)
        return "the server's certificate is not trusted" + (
            f" ({detail.group(1).strip()})" if detail else "")
    if "hostname mismatch" in low or "doesn't match" in low:
        return "the server's certificate is for another host name"
    if "wrong_version_number" in low or "wrong version number" in low \
            or "record layer failure" in low or "packet length too long" in low:
        return "the server does not speak TLS on this port"
    found = re.search(r"\[SSL: ([A-Z0-9_]+)\]", text)
    return f"TLS/SSL error ({found.group(1).lower().replace('_', ' ')})" if found \
        else "TLS/SSL error"


def _web_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return (resp.text or "").strip().splitlines()[0][:300] if resp.text else ""
    if isinstance(body, dict):
        return str(body.get("message") or body.get("httpStatus") or "")[:300]
    return ""


class Dhis2Client:
    """One DHIS2 server, one authenticated session.

    ``timeout`` is (connect, read) seconds; ``retries`` is how many times a failed
    idempotent request is tried again, waiting ``backoff``, 2×, 4× … (at most
    ``max_backoff``) seconds in between.
    """

    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 token: str | None = None, timeout: float | tuple[float, float] = (10.0, 120.0),
                 retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 page_size: int = 1000, session: requests.Session | None = None) -> None:
        self.base_url = dhis2_base_url(url)
        if token and (username or password):
            raise InvalidInput("Give either a user and password or a token, not both.")
        if not token and not (username and password):
            raise InvalidInput("DHIS2 needs credentials: a user and password "
                               "(--user with --password-stdin) or a personal access token "
                               "(--token-stdin or GEOREG_DHIS2_TOKEN).")
        self.username = username
        self.auth_kind = "token" if token else "basic"
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.max_backoff = max_backoff
        self.page_size = page_size
        self.session = session or requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=4, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.auth = _ApiTokenAuth(token) if token else (username or "", password or "")
        self.session.headers.update({"Accept": "application/json",
                                     "User-Agent": "georeg (python-requests)"})
        self.request_count = 0
        self.info: dict[str, Any] | None = None

    def __repr__(self) -> str:
        who = f"user {self.username!r}" if self.auth_kind == "basic" else "token ***"
        return f"Dhis2Client({self.base_url!r}, {who})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Dhis2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- low level -----------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}/api/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None, idempotent: bool | None = None,
                accept: tuple[int, ...] = ()) -> requests.Response:
        """Send with retries; return the response or raise a GeoregError in the user's terms.

        ``accept``: non-2xx statuses the caller handles itself (e.g. 409 for imports).
        """
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        url = self._url(path)
        attempts = self.retries + 1 if idempotent else 1
        last_reason = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            self.request_count += 1
            try:
                # never followed: requests would re-send a POST as a GET without its body
                # (an http→https redirect turned every metadata import into a metadata
                # export read as "OK, nothing to do"), or drop the credentials on the way
                resp = self.session.request(method, url, params=params, json=json,
                                            timeout=self.timeout, allow_redirects=False)
            except requests.exceptions.SSLError as error:
                # the TLS set-up failed (an https:// address on an http-only port, a
                # certificate not trusted or for another name): asking again gets the
                # same answer, so it is said at once instead of after the backoff
                raise GeoregError(
                    f"Could not open a secure (TLS) connection to DHIS2 at {self.base_url}: "
                    f"{_tls_reason(error)}. Check the address (https:// on a server that "
                    "speaks http?) and the server's certificate.",
                    url=self.base_url, reason="TLS/SSL error") from None
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as error:
                last_reason = _network_reason(error)
                continue
            if resp.status_code in RETRY_STATUSES and resp.status_code not in accept:
                last_reason = f"HTTP {resp.status_code} {_web_message(resp)}".strip()
                continue
            if resp.ok and resp.content and "json" in resp.headers.get("Content-Type", "json"):
                try:
                    resp.json()
                except ValueError:
                    last_reason = "the answer was cut off or is not JSON"
                    continue
            self._raise_for_status(resp, path, accept)
            return resp
        tried = f" (tried {attempts} times)" if attempts > 1 else ""
        raise GeoregError(
            f"Could not complete {method.upper()} {path} on DHIS2 at {self.base_url}: "
            f"{last_reason}{tried}.", url=self.base_url, reason=last_reason)

    def _raise_for_status(self, resp: requests.Response, path: str,
                          accept: tuple[int, ...]) -> None:
        code = resp.status_code
        if 300 <= code < 400 and code not in accept:
            raise InvalidInput(
                f"DHIS2 at {self.base_url} redirects {path} (HTTP {code}) to "
                f"{resp.headers.get('Location') or 'another address'}: give "
                f"{_redirect_base(resp, path) or 'that address'} as the DHIS2 URL.",
                http_status=code)
        if code < 400 or code in accept:
            return
        detail = _web_message(resp)
        where = f"DHIS2 at {self.base_url}"
        if code == 401:
            how = ("the user name and password" if self.auth_kind == "basic"
                   else "the personal access token (tokens need DHIS2 2.37 or later)")
            raise InvalidInput(f"{where} refused the credentials (HTTP 401): check {how}.",
                               http_status=code)
        if code == 403:
            raise GeoregError(f"{where} does not allow this user to {path} (HTTP 403)"
                              f"{': ' + detail if detail else ''}.", http_status=code)
        if code == 404:
            raise NotFound(f"{where} has no {path} (HTTP 404)"
                           f"{': ' + detail if detail else ''}. Is the URL the DHIS2 root?",
                           http_status=code)
        if code == 409:
            raise ConflictError(f"{where} refused {path} (HTTP 409): {detail}",
                                http_status=code)
        if 400 <= code < 500:
            raise InvalidInput(f"{where} refused {path} (HTTP {code}): {detail}",
                               http_status=code)
        raise GeoregError(f"{where} failed on {path} (HTTP {code}): {detail}", http_status=code)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        resp = self.request("GET", path, params=params)
        try:
            return resp.json()
        except ValueError:
            return resp.text

    # --- reading -------------------------------------------------------------------

    def system_info(self) -> dict[str, Any]:
        """``/api/system/info`` (cached): the version, server date, context path …"""
        if self.info is None:
            info = self.get("system/info")
            if not isinstance(info, dict) or "version" not in info:
                # NotFound (exit 4), as for a root whose /api/system/info is a 404: both
                # are an address that is not a DHIS2 root (docs/sync-dhis2.md, exit codes)
                raise NotFound(f"{self.base_url} does not look like a DHIS2 server "
                               "(/api/system/info has no version). Is the URL the DHIS2 root?")
            self.info = info
        return self.info

    @property
    def version(self) -> tuple[int, int]:
        """(2, 41) for "2.41.0.1"; (2, 40) for "2.40-SNAPSHOT"."""
        raw = str(self.system_info().get("version", ""))
        nums = [int(n) for n in re.findall(r"\d+", raw)[:2]]
        if len(nums) < 2:
            raise GeoregError(f"Unrecognised DHIS2 version {raw!r}.")
        return nums[0], nums[1]

    def ping(self) -> bool:
        return self.request("GET", "system/ping").ok

    def me(self) -> dict[str, Any]:
        return dict(self.get("me", {"fields": "id,username,displayName"}) or {})

    def get_paged(self, path: str, key: str, *, fields: str | None = None,
                  filters: list[str] | None = None, params: dict[str, Any] | None = None,
                  page_size: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield (page number, page document) for every page of a collection.

        Walks page numbers (1, 2, …) up to the pager's ``pageCount``.  ``nextPage``
        is only a hint: DHIS2 builds it from its configured base URL, which is not
        always the address we reach it by.
        """
        query: dict[str, Any] = dict(params or {})
        if fields:
            query["fields"] = fields
        if filters:
            query["filter"] = list(filters)
        query["pageSize"] = page_size or self.page_size
        page = 1
        while True:
            query["page"] = page
            doc = self.get(path, query)
            if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
                raise GeoregError(f"DHIS2 answered {path} without a {key!r} list.")
            yield page, doc
            pager = doc.get("pager") or {}
            count = pager.get("pageCount")
            if isinstance(count, int):
                if page >= count:
                    return
            elif not pager.get("nextPage") or not doc[key]:
                return
            page += 1

    def get_all(self, path: str, key: str, **kw: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _, doc in self.get_paged(path, key, **kw):
            out.extend(doc[key])
        return out

    # --- writing -------------------------------------------------------------------

    def import_metadata(self, payload: dict[str, Any], *, import_mode: str = "COMMIT",
                        import_strategy: str = "CREATE_AND_UPDATE", atomic_mode: str = "ALL",
                        report_mode: str = "ERRORS", idempotent: bool = True
                        ) -> MetadataImportResult:
        """``POST /api/metadata``; the report, whichever envelope it came in.

        ``idempotent`` (default True): every object carries its uid, so sending the
        same payload twice (a retry after a lost answer) creates nothing twice.
        """
        if import_mode not in IMPORT_MODES:
            raise InvalidInput(f"importMode must be one of {', '.join(IMPORT_MODES)}.")
        if import_strategy not in IMPORT_STRATEGIES:
            raise InvalidInput(f"importStrategy must be one of {', '.join(IMPORT_STRATEGIES)}.")
        if atomic_mode not in ATOMIC_MODES:
            raise InvalidInput(f"atomicMode must be one of {', '.join(ATOMIC_MODES)}.")
        params = {"importMode": import_mode, "importStrategy": import_strategy,
                  "atomicMode": atomic_mode, "importReportMode": report_mode,
                  "identifier": "UID"}
        resp = self.request("POST", "metadata", params=params, json=payload,
                            idempotent=idempotent, accept=(409,))
        return self._report(resp)

    def put_object(self, path: str, obj: dict[str, Any]) -> MetadataImportResult:
        """PUT a whole object (e.g. an organisationUnitGroup with its members)."""
        resp = self.request("PUT", path, json=obj, accept=(409,))
        return self._report(resp)

    def _report(self, resp: requests.Response) -> MetadataImportResult:
        if not resp.content:
            return MetadataImportResult(status="OK", stats=dict(_EMPTY_STATS),
                                        http_status=resp.status_code)
        try:
            body = resp.json()
        except ValueError:
            raise GeoregError(f"DHIS2 answered HTTP {resp.status_code} with something that is "
                              "not JSON.") from None
        return parse_import_report(body, resp.status_code)


__all__ = ["Dhis2Client", "MetadataImportResult", "ObjectError", "generate_uid", "is_uid",
           "parse_import_report"]
