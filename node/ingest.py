"""HTTP ingest: `POST /v1/events` (JSON or msgpack, one event or a batch) through the privacy filter.

A batch is all-or-nothing unless `?partial=1`. Nothing is acknowledged before
the writer has committed it. Errors name the event index and field, never a
submitted value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import msgpack
from aiohttp import web
from pydantic import ValidationError

from node.fastfilter import FastFilter
from node.geo import GeoLocator, IPAddress, client_ip, parse_networks
from node.metrics import NodeMetrics
from node.privacy import (
    WINDOW_CLOSED,
    FilteredEvent,
    PrivacyFilter,
    Rejection,
    SaltSource,
)
from node.ratelimit import RateLimiter
from node.rows import RowBlock, RowLayout
from node.settings import NodeSettings
from node.tally import ACCEPTED, DayTally
from node.windows import WindowClosed
from protocol import jsontext
from protocol.errors import (
    BadRequest,
    PayloadTooLarge,
    ProblemType,
    TooManyRequests,
    Unprocessable,
    UnsupportedMediaType,
)
from protocol.events import EVENTS_ADAPTER, MAX_BATCH, Event
from runtime.groupcommit import StorageUnavailable, storage_unavailable

JSON_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})
MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})

Clock = Callable[[], datetime]


class EventSink(Protocol):
    """Where filtered events go: the DuckDB writer.

    `submit` returns once the events are committed, and raises StorageUnavailable
    (nothing stored) or WindowClosed (the window closed before the commit).
    """

    async def submit(self, events: RowBlock) -> None: ...


def utc_now() -> datetime:
    """The server clock, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One event's fault: its index in the batch, the field, a reason slug and a message."""

    index: int
    field: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason, "message": self.message}


def _field_errors(exc: ValidationError, *, offset: int = 0, prefix: int = 0) -> list[FieldError]:
    """FieldErrors from pydantic's, dropping `input` (which may hold a session id)."""
    out: list[FieldError] = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = list(err["loc"])[prefix:]
        index = offset
        if loc and isinstance(loc[0], int):
            index = offset + int(loc.pop(0))
        field = ".".join(str(p) for p in loc) or "event"
        out.append(FieldError(index, field, "invalid-" + field.split(".")[0], err["msg"]))
    return out


def _closed(index: int) -> FieldError:
    return FieldError(index, WINDOW_CLOSED.field, WINDOW_CLOSED.reason, WINDOW_CLOSED.message)


def _problem_for(errors: Sequence[FieldError], status_cls: type[BadRequest] | type[Unprocessable]) -> BadRequest | Unprocessable:
    first = errors[0]
    detail = f"event {first.index}: field `{first.field}`: {first.message}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return status_cls(
        detail,
        slug=ProblemType.INVALID_EVENT if status_cls is BadRequest else ProblemType(first.reason),
        extra={"errors": [e.to_dict() for e in errors[:100]]},
    )


def decode_body(body: bytes, content_type: str) -> Any:
    """Bytes -> JSON-like data; raises the right 4xx for wrong types, bad UTF-8 or bad syntax."""
    if content_type in MSGPACK_TYPES:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception:  # noqa: BLE001 - msgpack raises several unrelated types
            raise BadRequest("body is not valid msgpack", slug=ProblemType.MALFORMED_BODY) from None
    if content_type not in JSON_TYPES:
        raise UnsupportedMediaType(
            "send application/json, text/plain (sendBeacon) or application/msgpack",
            slug=ProblemType.UNSUPPORTED_MEDIA_TYPE,
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8", slug=ProblemType.MALFORMED_BODY) from None
    try:
        return jsontext.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", slug=ProblemType.MALFORMED_BODY
        ) from None


def _items(data: Any) -> tuple[list[Any], bool]:
    """The raw event items of a body, and whether it was a batch."""
    if isinstance(data, list):
        return data, True
    if isinstance(data, dict) and set(data) == {"events"}:
        if not isinstance(data["events"], list):
            raise BadRequest("`events` must be an array", slug=ProblemType.INVALID_EVENT, extra={"errors": []})
        return data["events"], True
    if isinstance(data, dict):
        return [data], False
    raise BadRequest("body must be an event object, an array of events or {\"events\": [...]}", slug=ProblemType.INVALID_EVENT)


def validate_all(items: list[Any]) -> list[Event]:
    """Validate a whole batch: any fault rejects all of it (400 naming index and field)."""
    if not items:
        raise BadRequest("a batch holds at least one event", slug=ProblemType.INVALID_EVENT)
    if len(items) > MAX_BATCH:
        raise PayloadTooLarge(f"a batch holds at most {MAX_BATCH} events", slug=ProblemType.BATCH_TOO_LARGE)
    try:
        return EVENTS_ADAPTER.validate_python(items)
    except ValidationError as exc:
        raise _problem_for(_field_errors(exc), BadRequest) from None


def validate_each(items: list[Any]) -> list[Event | FieldError]:
    """Validate events one by one (partial mode)."""
    if len(items) > MAX_BATCH:
        raise PayloadTooLarge(f"a batch holds at most {MAX_BATCH} events", slug=ProblemType.BATCH_TOO_LARGE)
    results: list[Event | FieldError] = []
    for index, item in enumerate(items):
        try:
            results.append(Event.model_validate(item))
        except ValidationError as exc:
            results.append(_field_errors(exc, offset=index)[0])
    return results


class Ingestor:
    """Filters validated events and hands them to the writer; shared by every ingest endpoint."""

    def __init__(
        self,
        *,
        settings: NodeSettings,
        privacy: PrivacyFilter,
        salts: SaltSource,
        writer: EventSink,
        geo: GeoLocator,
        limiter: RateLimiter,
        metrics: NodeMetrics,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.privacy = privacy
        self.layout = RowLayout(privacy.catalog)
        self.fast = FastFilter(privacy, self.layout)
        self.salts = salts
        self.writer = writer
        self.geo = geo
        self.limiter = limiter
        self.metrics = metrics
        self.clock = clock
        self._trusted = parse_networks(settings.trusted_proxies)
        self.today = DayTally(clock)  # for the operator's setup check

    def client_address(self, request: web.Request) -> IPAddress | None:
        """The client's IP, for the rate limit, the country lookup and Plausible's session key only."""
        return client_ip(request.remote, request.headers.get("X-Forwarded-For"), self._trusted)

    def check_rate(self, address: IPAddress | None) -> None:
        wait = self.limiter.check(address)
        if wait > 0:
            self.metrics.rate_limited.inc()
            raise TooManyRequests("too many requests from this client", retry_after=self.limiter.retry_after(wait))

    def country_of(self, address: IPAddress | None) -> str | None:
        """Country of the address; the address goes no further than this call."""
        return self.geo.country(address)

    async def filter(
        self,
        events: Sequence[Event],
        *,
        address: IPAddress | None,
        session_keys: Sequence[bytes] | None = None,
    ) -> tuple[list[FilteredEvent | Rejection], int]:
        """Run the privacy filter over live events; the country is looked up once, if needed."""
        now = self.clock()
        country: str | None = None
        if address is not None and any(e.geo_hint is None for e in events):
            country = self.country_of(address)
        return self.privacy.apply_many(
            events, now=now, salt_for=self.salts, session_keys=session_keys, client_country=country
        )

    async def filter_batch(self, items: list[Any], *, address: IPAddress | None) -> tuple[RowBlock, int] | None:
        """The fast path of a whole live batch: (rows, attributes dropped), or None when the exact path must decide."""
        now = self.clock()
        return self.fast.run(
            items, now=now, salt_for=self.salts, client_country=lambda: None if address is None else self.country_of(address)
        )

    async def commit(self, events: RowBlock | Sequence[FilteredEvent], dropped: int) -> None:
        """Wait for the writer's commit; a failed commit is a 503, and nothing was acked.

        WindowClosed passes through: the caller answers as the filter would have.
        """
        rows = events if isinstance(events, RowBlock) else self.layout.block(events)
        try:
            await self.writer.submit(rows)
        except StorageUnavailable:
            self.refuse("storage-unavailable", len(events))
            raise storage_unavailable() from None
        self.metrics.accepted.inc(len(events))
        self.metrics.attributes_dropped.inc(dropped)
        self.today.add(ACCEPTED, len(events))

    def count_rejections(self, reasons: Sequence[str]) -> None:
        for reason in reasons:
            self.refuse(reason)

    def refuse(self, reason: str, n: int = 1) -> None:
        """Count `n` events refused for `reason`, in the metrics and in today's tally."""
        self.metrics.rejected.labels(reason).inc(n)
        self.today.add(reason, n)


async def post_events(request: web.Request, ingestor: Ingestor) -> web.Response:
    """`POST /v1/events`: 202 {"accepted", "dropped_attributes"} once committed."""
    address = ingestor.client_address(request)
    ingestor.check_rate(address)
    content_type = request.content_type if request.headers.get("Content-Type") else ""
    body = await request.read()
    try:
        data = decode_body(body, content_type)
        items, _ = _items(data)
    except (BadRequest, UnsupportedMediaType) as problem:
        ingestor.count_rejections([problem.slug])
        raise
    if request.query_string and request.query.get("partial") in {"1", "true"}:
        return await _post_partial(items, address, ingestor)
    fast = await ingestor.filter_batch(items, address=address)
    if fast is None:
        fast = await _filter_exact(items, address, ingestor)
    address = None  # the IP is not needed past the filter
    rows, dropped = fast
    try:
        await ingestor.commit(rows, dropped)
    except WindowClosed:
        # The window closed after the filter saw it open: the answer the filter would now give.
        closed = [_closed(i) for i in range(len(rows))]
        ingestor.count_rejections([e.reason for e in closed])
        raise _problem_for(closed, Unprocessable) from None
    # Two integers: formatted directly, without the JSON encoder (this is every ingest answer).
    return web.Response(
        body=b'{"accepted":%d,"dropped_attributes":%d}' % (len(rows), dropped),
        status=202,
        content_type="application/json",
    )


async def _filter_exact(items: list[Any], address: IPAddress | None, ingestor: Ingestor) -> tuple[RowBlock, int]:
    """Validate, then filter, event by event: the path that names every fault (400 or 422)."""
    try:
        events = validate_all(items)
    except (BadRequest, PayloadTooLarge) as problem:
        ingestor.count_rejections([problem.slug] * max(1, min(len(items), MAX_BATCH)))
        raise
    results, dropped = await ingestor.filter(events, address=address)
    errors = [
        FieldError(i, r.field, r.reason, r.message)
        for i, r in enumerate(results)
        if isinstance(r, Rejection)
    ]
    if errors:
        ingestor.count_rejections([e.reason for e in errors])
        raise _problem_for(errors, Unprocessable)
    return ingestor.layout.block([r for r in results if isinstance(r, FilteredEvent)]), dropped


async def _post_partial(items: list[Any], address: IPAddress | None, ingestor: Ingestor) -> web.Response:
    checked = validate_each(items)
    valid = [c for c in checked if isinstance(c, Event)]
    filtered, dropped = await ingestor.filter(valid, address=address)
    filtered_iter = iter(filtered)
    results: list[dict[str, Any]] = []
    accepted: list[FilteredEvent] = []
    for index, item in enumerate(checked):
        outcome: FilteredEvent | Rejection | FieldError = item if isinstance(item, FieldError) else next(filtered_iter)
        if isinstance(outcome, FilteredEvent):
            accepted.append(outcome)
            results.append({"index": index, "status": "accepted"})
        else:
            field_error = (
                outcome if isinstance(outcome, FieldError) else FieldError(index, outcome.field, outcome.reason, outcome.message)
            )
            results.append({"status": "rejected", **field_error.to_dict(), "index": index})
    rejected = [r for r in results if r["status"] == "rejected"]
    ingestor.count_rejections([r["reason"] for r in rejected])
    if not accepted:
        raise Unprocessable("no event of the batch was accepted", slug=ProblemType.NOTHING_ACCEPTED, extra={"results": results})
    try:
        await ingestor.commit(accepted, dropped)
    except WindowClosed:
        # Every accepted event is of the one live window, which closed after the filter.
        ingestor.count_rejections([WINDOW_CLOSED.reason] * len(accepted))
        for i, result in enumerate(results):
            if result["status"] == "accepted":
                results[i] = {"status": "rejected", **_closed(i).to_dict()}
        raise Unprocessable(
            "no event of the batch was accepted", slug=ProblemType.NOTHING_ACCEPTED, extra={"results": results}
        ) from None
    return web.json_response(
        {"accepted": len(accepted), "rejected": len(rejected), "dropped_attributes": dropped, "results": results},
        status=202,
    )
