"""The snapshot body: one window of noisy, thresholded metric cells, and its canonical bytes.

A metric's cells are two integer arrays over the metric's public domain (the
cartesian product of its dimensions' domains in catalog order, row-major, last
dimension fastest): ascending indices and their noisy values, plus the `other`
cells, one per prefix (all dimensions but the last), holding the sum of the
suppressed noisy values. Field by field in docs/protocol.md.
"""

from __future__ import annotations

import operator
from array import array
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    ValidationError,
    model_validator,
)

from protocol.catalog import MAX_DOMAIN, Catalog
from protocol.codec import (
    MAX_ENVELOPE_SIZE,
    DecodeError,
    decode_canonical,
    encode_canonical,
)
from protocol.events import SLUG_PATTERN

FORMAT: Final = "liberation-snapshot/1"
"""The `format` of every body this module reads and writes."""

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
HOUR: Final = 3600
MAX_WINDOW_SECONDS: Final = 31 * 24 * HOUR
MAX_METRICS: Final = 256


def _exact_float(value: object) -> object:
    # Strict pydantic still turns an int into a float; the wire must not (1 and
    # 1.0 are different canonical bytes), so only a float is a float here.
    if type(value) is not float:
        raise ValueError("must be a float")
    return value


# The array validators run once per array, never once per cell: each check
# below is one C-speed pass (a body may hold 100,000 cells).


def _int_tuple(value: object) -> tuple[int, ...]:
    if type(value) is tuple:
        items: tuple[Any, ...] = value
    elif type(value) is list:
        items = tuple(value)
    else:
        raise ValueError("must be an array of integers")
    # Exactly int: a bool is 0xc2/0xc3 on the wire, a numpy integer not msgpack at all.
    if operator.countOf(map(type, items), int) != len(items):
        raise ValueError("must contain only integers")
    return items


def _value_array(value: object) -> tuple[int, ...]:
    items = _int_tuple(value)
    try:
        array("q", items)  # int64 range, in one pass
    except OverflowError:
        raise ValueError("values must fit in int64") from None
    return items


def _index_array(value: object) -> tuple[int, ...]:
    items = _int_tuple(value)
    if items:
        # A node publishes every cell of the domain: compared with its range first, a third of the ordered pass.
        if items != tuple(range(items[0], items[0] + len(items))) and not all(map(operator.lt, items, items[1:])):
            raise ValueError("indices must be strictly ascending")
        if items[0] < 0 or items[-1] > INT64_MAX:
            raise ValueError("indices must be in [0, 2**63)")
    return items


NonNegativeInt64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""An int in [0, 2**63) (never a bool)."""
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False), BeforeValidator(_exact_float)]
"""A finite float > 0 (never an int)."""
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(_exact_float)]
"""A finite float >= 0 (never an int)."""
# The explicit serializer works around pydantic handing a plain validator's
# tuple to the tuple serializer as a list (and warning) in JSON mode.
_AS_LIST = PlainSerializer(list, return_type=list[int], when_used="json")
IndexArray = Annotated[tuple[int, ...], PlainValidator(_index_array, json_schema_input_type=list[int]), _AS_LIST]
"""Strictly ascending int64 indices >= 0 (a list is accepted and stored as a tuple)."""
ValueArray = Annotated[tuple[int, ...], PlainValidator(_value_array, json_schema_input_type=list[int]), _AS_LIST]
"""int64 values (a list is accepted and stored as a tuple)."""
MetricName = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
"""A catalog slug: `[a-z0-9][a-z0-9_-]{0,63}`."""
HexKeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
"""A key id: 32 lowercase hex characters."""
HexHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A SHA-256 digest: 64 lowercase hex characters."""

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class MetricCells(BaseModel):
    """One metric of a snapshot: its noise parameters and its published (noisy, thresholded) cells."""

    model_config = _STRICT

    epsilon: PositiveFloat
    """Privacy budget spent on this metric in this window."""
    scale: PositiveFloat
    """Discrete Laplace scale b of each cell's noise."""
    variance: NonNegativeFloat
    """Noise variance of each published value: 2a/(1-a)^2, a = exp(-1/b), for a node; the sum over merged nodes for a hub."""
    threshold: NonNegativeInt64
    """Cells whose noisy value was below it were suppressed."""
    idx: IndexArray
    """Indices into the metric's ordered public domain."""
    val: ValueArray
    """Noisy value of each cell in `idx`."""
    other_idx: IndexArray
    """Indices into the prefix domain (all dimensions but the last; size 1 for a 1-D metric)."""
    other_val: ValueArray
    """Sum of the suppressed noisy values of each prefix in `other_idx`."""

    @model_validator(mode="after")
    def _same_lengths(self) -> MetricCells:
        if len(self.idx) != len(self.val):
            raise ValueError("idx and val must have the same length")
        if len(self.other_idx) != len(self.other_val):
            raise ValueError("other_idx and other_val must have the same length")
        return self


class Snapshot(BaseModel):
    """A node's (or hub's) signed release for one window; `to_bytes` is the body that gets signed."""

    model_config = _STRICT

    format: Literal["liberation-snapshot/1"]
    """Always FORMAT."""
    node: HexKeyId
    """Key id of the signer."""
    catalog: HexHash
    """Content hash of the metric catalog the cells follow."""
    window_start: NonNegativeInt64
    """Start of the window, unix seconds UTC, a multiple of 3600."""
    window_end: NonNegativeInt64
    """End of the window (exclusive), unix seconds UTC, a multiple of 3600, at most 31 days after the start."""
    seq: Annotated[int, Field(ge=1, le=INT64_MAX)]
    """Sequence number of the signer's snapshots."""
    created: NonNegativeInt64
    """When the snapshot was made, unix seconds."""
    nodes: Annotated[int, Field(ge=1, le=INT64_MAX)]
    """Number of node snapshots merged into this one (1 for a node)."""
    metrics: Annotated[dict[MetricName, MetricCells], Field(max_length=MAX_METRICS)]
    """Cells per metric name; treat as read-only."""

    @model_validator(mode="after")
    def _sane_window(self) -> Snapshot:
        if self.window_start % HOUR or self.window_end % HOUR:
            raise ValueError("window_start and window_end must be whole UTC hours (multiples of 3600)")
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if self.window_end - self.window_start > MAX_WINDOW_SECONDS:
            raise ValueError("a window spans at most 31 days")
        return self

    def to_bytes(self) -> bytes:
        """The canonical msgpack body: a map of the fields above, `metrics` a map of maps."""
        body: dict[str, object] = {name: getattr(self, name) for name in _SNAPSHOT_FIELDS}
        body["metrics"] = {
            name: {field: getattr(cells, field) for field in _CELL_FIELDS}
            for name, cells in self.metrics.items()
        }
        return encode_canonical(body)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_ENVELOPE_SIZE) -> Snapshot:
        """Decode a canonical body strictly; raises DecodeError (reason `shape` for a wrong field)."""
        obj = decode_canonical(data, max_size, **_BODY_BOUNDS)
        if type(obj) is not dict:
            raise DecodeError("shape", "a snapshot body is a map")
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise DecodeError("shape", _describe(exc)) from None


# Upper bounds of the canonical encoding, in bytes (docs/protocol.md sections 1, 2 and 4):
_VALUE_BYTES: Final = 9  # a noisy value: any int64
_METRIC_BYTES: Final = 1 + 61 + 3 * 9 + 9  # map header, its 8 keys, 3 float64s, the threshold
_BODY_BYTES: Final = 241  # map header, 9 keys (70), catalog, created, format, node, nodes, seq, window, metrics header
_ENVELOPE_BYTES: Final = 121  # 84, "body" + bin32 header, "pk" + c4 20 + 32, "sig" + c4 40 + 64, "v" 01


def _uint_bytes(n: int) -> int:
    """Bytes of the canonical encoding of the int n >= 0."""
    return 1 if n < 0x80 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5 if n < 1 << 32 else 9


def _header_bytes(n: int, fixed_below: int) -> int:
    """Bytes of a canonical str or array header for n items (fix form below `fixed_below`, then 8/16/32-bit)."""
    return 1 if n < fixed_below else 2 if fixed_below == 32 and n < 1 << 8 else 3 if n < 1 << 16 else 5


def max_envelope_size(catalog: Catalog) -> int:
    """The size of the largest envelope of a valid snapshot of `catalog`: every cell and `other` published, int64 extremes.

    A verifier that merges only this catalog can refuse anything longer before reading it.
    """
    size = _ENVELOPE_BYTES + _BODY_BYTES
    for metric in catalog.metrics:
        name = len(metric.name.encode())
        size += _METRIC_BYTES + _header_bytes(name, 32) + name
        for count in (catalog.domain_size(metric), catalog.prefix_size(metric)):
            # indices below `count`, int64 values, and the headers of the two arrays
            size += count * (_uint_bytes(count - 1) + _VALUE_BYTES) + 2 * _header_bytes(count, 16)
    return size


_SNAPSHOT_FIELDS: Final = tuple(Snapshot.model_fields)
_BODY_BOUNDS: Final = {
    # Far above what a valid body holds (strings of at most 64 bytes, no byte string, at most
    # 256 metrics, maps of 8 or 9 fields), so a near miss still gets the model's precise `shape`
    # error; far below the body's size, so no claimed length is allocated before it is refused.
    "max_str_len": 1024,
    "max_bin_len": 1024,
    "max_array_len": MAX_DOMAIN,  # a metric's cells: at most its domain
    "max_map_len": 4 * MAX_METRICS,
}
_CELL_FIELDS: Final = tuple(MetricCells.model_fields)


def _describe(exc: ValidationError, limit: int = 3) -> str:
    # Locations and messages only: pydantic's full text echoes input values.
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}" for error in errors[:limit]]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "invalid snapshot: " + "; ".join(parts) + more
