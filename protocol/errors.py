"""The one error shape of node and hub: RFC 9457 problem+json, one enumerated set of problem types.

    LiberationError                 base of every error the project raises on purpose
    ├── Problem                     an HTTP-facing error: status + problem type
    │   ├── BadRequest (400)        malformed body, wrong types, bad field
    │   ├── Unauthorized (401)
    │   ├── Forbidden (403)
    │   ├── NotFound (404)
    │   ├── MethodNotAllowed (405)
    │   ├── RequestTimeout (408)    the body did not arrive in time
    │   ├── Conflict (409)
    │   ├── PayloadTooLarge (413)
    │   ├── UnsupportedMediaType (415)
    │   ├── Unprocessable (422)     well-formed but refused by the catalog or a rule
    │   ├── TooManyRequests (429)   carries Retry-After
    │   └── ServiceUnavailable (503) carries Retry-After
    └── (module errors: codec.DecodeError, keys.KeyFileError, catalog.CatalogError, ...)

Every problem type a service can answer is a member of `ProblemType`; the
table in docs/protocol.md is generated from it (`python -m protocol.errors`).
Rendering over HTTP lives in runtime/problems.py: the contract has no server.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Any, ClassVar

PROBLEM_BASE = "https://liberation-analytics.org/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemType(StrEnum):
    """Every problem type (`PROBLEM_BASE + value`) node, hub and keeper answer; `describe` says when."""

    BAD_REQUEST = "bad-request"
    MALFORMED_BODY = "malformed-body"
    INCOMPLETE_BODY = "incomplete-body"
    INVALID_EVENT = "invalid-event"
    INVALID_QUERY = "invalid-query"
    UNKNOWN_VIEW = "unknown-view"
    INVALID_WINDOW = "invalid-window"
    INVALID_ENROLLMENT = "invalid-enrollment"
    INVALID_KEY = "invalid-key"
    INVALID_SIGNATURE = "invalid-signature"
    KEY_MISMATCH = "key-mismatch"
    MALFORMED_ENVELOPE = "malformed-envelope"
    MALFORMED_SNAPSHOT = "malformed-snapshot"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    ORIGIN_NOT_ALLOWED = "origin-not-allowed"
    UNKNOWN_KEY = "unknown-key"
    REVOKED_KEY = "revoked-key"
    NOT_FOUND = "not-found"
    ADMIN_OFF = "admin-off"
    NO_SNAPSHOT = "no-snapshot"
    NO_WINDOW = "no-window"
    UNKNOWN_NODE = "unknown-node"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    REQUEST_TIMEOUT = "request-timeout"
    BODY_TIMEOUT = "body-timeout"
    CONFLICT = "conflict"
    ALREADY_ENROLLED = "already-enrolled"
    NAME_TAKEN = "name-taken"
    EQUIVOCATION = "equivocation"
    PAYLOAD_TOO_LARGE = "payload-too-large"
    BATCH_TOO_LARGE = "batch-too-large"
    SNAPSHOT_TOO_LARGE = "snapshot-too-large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type"
    UNPROCESSABLE = "unprocessable"
    NOTHING_ACCEPTED = "nothing-accepted"
    UNDECLARED_APP = "undeclared-app"
    UNDECLARED_ACTION = "undeclared-action"
    TIMESTAMP_SKEW = "timestamp-skew"
    TIMESTAMP_FUTURE = "timestamp-future"
    WINDOW_CLOSED = "window-closed"
    INVALID_NAME = "invalid-name"
    INVALID_KIND = "invalid-kind"
    UNKNOWN_CATALOG = "unknown-catalog"
    WINDOW_OUT_OF_RANGE = "window-out-of-range"
    WINDOW_NOT_FINAL = "window-not-final"
    INVALID_NODE_COUNT = "invalid-node-count"
    PRIVACY_PARAMETERS_MISMATCH = "privacy-parameters-mismatch"
    CELLS_OUT_OF_DOMAIN = "cells-out-of-domain"
    OVERLAPPING_WINDOW = "overlapping-window"
    RATE_LIMITED = "rate-limited"
    UNAVAILABLE = "unavailable"
    STORAGE_UNAVAILABLE = "storage-unavailable"
    INTAKE_BUSY = "intake-busy"
    NOT_OWNER = "not-owner"
    OPERATION_FAILED = "operation-failed"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[ProblemType, str] = {
    ProblemType.BAD_REQUEST: "The request is malformed (a problem of aiohttp's own, or no more specific type).",
    ProblemType.MALFORMED_BODY: "The body is not valid JSON/msgpack/UTF-8, or its transfer encoding is broken.",
    ProblemType.INCOMPLETE_BODY: "The connection closed before the whole body arrived.",
    ProblemType.INVALID_EVENT: "An event is not the ingest schema; `errors` lists field, reason and message per event.",
    ProblemType.INVALID_QUERY: "A views query parameter is missing, malformed or out of range.",
    ProblemType.UNKNOWN_VIEW: "No view of that name; the views index lists them.",
    ProblemType.INVALID_WINDOW: "A window parameter is not an aligned UTC window.",
    ProblemType.INVALID_ENROLLMENT: "An enrollment request is not `{public_key, name, kind}` as documented.",
    ProblemType.INVALID_KEY: "A public key is not 32 bytes of base64/hex, or is of small order.",
    ProblemType.INVALID_SIGNATURE: "An envelope's key is unusable or its signature does not verify.",
    ProblemType.KEY_MISMATCH: "A signed body names another key than the one that signed it.",
    ProblemType.MALFORMED_ENVELOPE: "An envelope is not in its one canonical layout; `reason` says how.",
    ProblemType.MALFORMED_SNAPSHOT: "A signed body is not a canonical snapshot; `reason` says how.",
    ProblemType.UNAUTHORIZED: "The admin bearer token is missing or wrong.",
    ProblemType.FORBIDDEN: "The request is not allowed.",
    ProblemType.ORIGIN_NOT_ALLOWED: "The browser's Origin is not in the node's `cors_origins`.",
    ProblemType.UNKNOWN_KEY: "The signing key is not enrolled at this hub (a node retries after enrollment).",
    ProblemType.REVOKED_KEY: "The signing key was revoked by the hub's operator.",
    ProblemType.NOT_FOUND: "No such route or resource.",
    ProblemType.ADMIN_OFF: "The admin API is off (no admin token configured).",
    ProblemType.NO_SNAPSHOT: "No stored snapshot for that key and window.",
    ProblemType.NO_WINDOW: "No merged data for that window.",
    ProblemType.UNKNOWN_NODE: "No enrolled node of that name or key id.",
    ProblemType.METHOD_NOT_ALLOWED: "The route exists but not for this method; `Allow` lists those it takes.",
    ProblemType.REQUEST_TIMEOUT: "The request took too long.",
    ProblemType.BODY_TIMEOUT: "The body did not arrive within 20 seconds.",
    ProblemType.CONFLICT: "The request conflicts with the current state.",
    ProblemType.ALREADY_ENROLLED: "That key is already enrolled.",
    ProblemType.NAME_TAKEN: "Another key is enrolled under that name.",
    ProblemType.EQUIVOCATION: "The node already published different bytes for this window (an incident is recorded).",
    ProblemType.PAYLOAD_TOO_LARGE: "The body is over the route's size limit; it was not read.",
    ProblemType.BATCH_TOO_LARGE: "An ingest batch holds more events than allowed.",
    ProblemType.SNAPSHOT_TOO_LARGE: "An envelope is over the hub's limit derived from its catalogs.",
    ProblemType.UNSUPPORTED_MEDIA_TYPE: "The Content-Type is not one the route reads.",
    ProblemType.UNPROCESSABLE: "Well-formed, but refused by a rule.",
    ProblemType.NOTHING_ACCEPTED: "Every event of the batch was refused; `errors` says why.",
    ProblemType.UNDECLARED_APP: "The event's app is not declared in the catalog.",
    ProblemType.UNDECLARED_ACTION: "The event's action is not declared for its app.",
    ProblemType.TIMESTAMP_SKEW: "A live event's timestamp is too far from the server clock.",
    ProblemType.TIMESTAMP_FUTURE: "An imported event's timestamp is in the future.",
    ProblemType.WINDOW_CLOSED: "The event's window is already closed (exported or past its grace).",
    ProblemType.INVALID_NAME: "A node or site name is not a slug.",
    ProblemType.INVALID_KIND: "An enrollment kind other than `node` or `hub`.",
    ProblemType.UNKNOWN_CATALOG: "The catalog hash is not one this hub merges.",
    ProblemType.WINDOW_OUT_OF_RANGE: "The window is not aligned, has not ended, or is past the horizon.",
    ProblemType.WINDOW_NOT_FINAL: "The window is still open to late snapshots; export it later.",
    ProblemType.INVALID_NODE_COUNT: "`nodes` is not 1 for a node key (or over 2^20 for a child hub).",
    ProblemType.PRIVACY_PARAMETERS_MISMATCH: "A metric's epsilon, scale, threshold or variance is not the catalog's.",
    ProblemType.CELLS_OUT_OF_DOMAIN: "A metric is missing, or an index or value is outside its domain.",
    ProblemType.OVERLAPPING_WINDOW: "The node already sent an overlapping window of the other length.",
    ProblemType.RATE_LIMITED: "Too many requests from this network; `Retry-After` says when to come back.",
    ProblemType.UNAVAILABLE: "The service cannot take the request now (storage busy or failing); retry.",
    ProblemType.STORAGE_UNAVAILABLE: "The store could not commit; nothing was acked, retry after `Retry-After`.",
    ProblemType.INTAKE_BUSY: "Both large-envelope verifiers are busy; retry after `Retry-After`.",
    ProblemType.NOT_OWNER: "The admin socket refuses a process of another user than the service's (or root).",
    ProblemType.OPERATION_FAILED: "An operator command failed unexpectedly on the admin socket; the service's log says why.",
}


def problem_table() -> str:
    """The Markdown table of every problem type, as docs/protocol.md shows it."""
    lines = ["| type | when |", "|---|---|"]
    lines += [f"| `{t.value}` | {t.description} |" for t in ProblemType]
    return "\n".join(lines) + "\n"


class LiberationError(Exception):
    """Base of every deliberate error; the CLI turns it into one line and exit code 1."""


class Problem(LiberationError):
    """An error a client caused or must know about, rendered as problem+json.

    `slug` names the problem type (`PROBLEM_BASE + slug`); `detail` is for
    humans and must never contain request data (no IP, session id, or echo
    of a submitted value).
    """

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    default_slug: ClassVar[ProblemType] = ProblemType.BAD_REQUEST

    def __init__(
        self,
        detail: str,
        *,
        slug: ProblemType | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.slug = slug or self.default_slug
        self.extra = extra or {}
        self.headers = headers or {}

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_dict(self) -> dict[str, Any]:
        """The RFC 9457 body: type, title, status, detail, plus extension members."""
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extra)
        return body


class BadRequest(Problem):
    status = 400
    title = "Bad request"
    default_slug = ProblemType.BAD_REQUEST


class Unauthorized(Problem):
    status = 401
    title = "Unauthorized"
    default_slug = ProblemType.UNAUTHORIZED


class Forbidden(Problem):
    status = 403
    title = "Forbidden"
    default_slug = ProblemType.FORBIDDEN


class NotFound(Problem):
    status = 404
    title = "Not found"
    default_slug = ProblemType.NOT_FOUND


class MethodNotAllowed(Problem):
    status = 405
    title = "Method not allowed"
    default_slug = ProblemType.METHOD_NOT_ALLOWED


class RequestTimeout(Problem):
    status = 408
    title = "Request timeout"
    default_slug = ProblemType.REQUEST_TIMEOUT


class Conflict(Problem):
    status = 409
    title = "Conflict"
    default_slug = ProblemType.CONFLICT


class PayloadTooLarge(Problem):
    status = 413
    title = "Payload too large"
    default_slug = ProblemType.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(Problem):
    status = 415
    title = "Unsupported media type"
    default_slug = ProblemType.UNSUPPORTED_MEDIA_TYPE


class Unprocessable(Problem):
    status = 422
    title = "Unprocessable content"
    default_slug = ProblemType.UNPROCESSABLE


class TooManyRequests(Problem):
    status = 429
    title = "Too many requests"
    default_slug = ProblemType.RATE_LIMITED

    def __init__(self, detail: str, *, retry_after: int, slug: ProblemType | None = None) -> None:
        super().__init__(detail, slug=slug, headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(Problem):
    status = 503
    title = "Service unavailable"
    default_slug = ProblemType.UNAVAILABLE

    def __init__(self, detail: str, *, retry_after: int, slug: ProblemType | None = None) -> None:
        super().__init__(detail, slug=slug, headers={"Retry-After": str(retry_after)})


if __name__ == "__main__":
    sys.stdout.write(problem_table())
