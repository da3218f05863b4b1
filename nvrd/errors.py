"""Domain errors. Services raise these; the API's middleware maps them to HTTP.

Each carries structured fields (the field, the resource) rather than only a message,
so that a problem+json answer can name what was wrong.
"""

from __future__ import annotations


class NvrdError(Exception):
    """Base of every error a service raises on purpose."""

    code = "error"

    def __init__(self, detail: str, **fields: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields


class NotFound(NvrdError):
    code = "not-found"


class Conflict(NvrdError):
    code = "conflict"


class Busy(Conflict):
    code = "busy"


class Invalid(NvrdError):
    """Input that is well-formed but wrong. `field` names it, dotted for nesting."""

    code = "invalid"

    def __init__(self, detail: str, field: str | None = None, **fields: object) -> None:
        super().__init__(detail, field=field, **fields)
        self.field = field


class Forbidden(NvrdError):
    code = "forbidden"


class Unauthenticated(NvrdError):
    """The request did not prove who it is (401)."""

    code = "unauthenticated"


class CredentialFailure(Exception):
    """Mixin: a wrong password or name. The API counts these toward the brute-force
    limit of the client's address."""


class Gone(NvrdError):
    """A handle whose kernel object has vanished."""

    code = "gone"
