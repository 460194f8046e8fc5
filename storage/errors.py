"""One error hierarchy for the whole registry.

Every error carries a machine ``code`` and a message written for the person who
will read it (a GIS officer, not a developer).  Front ends translate them: the
CLI maps ``exit_code`` and prints ``message``; the server maps ``http_status``.
"""

from __future__ import annotations

from typing import Any


class GeoregError(Exception):
    """Base class: something the user can act on."""

    code = "error"
    exit_code = 1
    http_status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "details": self.details}


class SetupError(GeoregError):
    """The machine lacks something Georeg needs (e.g. SpatiaLite)."""

    code = "setup"
    exit_code = 3
    http_status = 500


class RegistryNotFound(GeoregError):
    code = "registry_not_found"
    exit_code = 4
    http_status = 404


class NotFound(GeoregError):
    """A source, version, unit, type or group that does not exist."""

    code = "not_found"
    exit_code = 4
    http_status = 404


class InvalidInput(GeoregError):
    """Bad input: names the item and field that is wrong."""

    code = "invalid_input"
    exit_code = 2
    http_status = 400


class ConflictError(GeoregError):
    """The change clashes with what the registry holds (duplicate ref, cycle …)."""

    code = "conflict"
    exit_code = 5
    http_status = 409


class PublishedVersionError(ConflictError):
    """Published versions are immutable."""

    code = "published_version"


class CycleError(ConflictError):
    code = "cycle"


class Cancelled(GeoregError):
    code = "cancelled"
    exit_code = 130
    http_status = 499


#: Trigger messages start with ``georeg:<code>:`` so that an error raised inside
#: the database (by an edit from QGIS, GDAL or plain SQL) is readable there and
#: translates back to the right class here.
_TRIGGER_CODES: dict[str, type[GeoregError]] = {
    "published": PublishedVersionError,
    "cycle": CycleError,
    "conflict": ConflictError,
    "invalid": InvalidInput,
}


def from_database_error(exc: BaseException) -> GeoregError | None:
    """Translate a DBAPI error raised by one of our triggers, or None."""
    text = str(getattr(exc, "orig", exc))
    marker = text.find("georeg:")
    if marker < 0:
        return None
    rest = text[marker + len("georeg:") :]
    code, _, message = rest.partition(":")
    cls = _TRIGGER_CODES.get(code.strip())
    if cls is None:
        return None
    message = message.strip().splitlines()[0] if message.strip() else text
    return cls(message)
