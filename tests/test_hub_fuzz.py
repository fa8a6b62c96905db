"""Hub intake under fuzzing: hostile bytes get a 4xx problem, never a 5xx, and no forgery is ever accepted.

The hub runs in a background thread with its own event loop; hypothesis posts
synchronously over a keep-alive connection. The strategies and the invariant
are also the ones `bench/bench_hub.py` runs 10,000 times against a hub process.

    invariant(data, response)
        4xx   application/problem+json whose `status` is the response's
        2xx   only for bytes that verify as an envelope signed by the enrolled key
        5xx   never
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import federation.intake as intake_module
from federation.settings import HubSettings
from protocol.codec import EnvelopeError, decode_canonical, encode_canonical
from protocol.envelope import sign_body, verify_envelope
from protocol.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from protocol.keys import SigningKey
from tests.servers import admin_token, run_hub
from tests.snapshots import DAY, envelope

TOKEN = admin_token()
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp()
W = int(NOW) - int(NOW) % DAY - 3 * DAY


# ---- a hub in a thread, and a synchronous client --------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


class Client:
    """POSTs to one hub over a keep-alive connection, reconnecting when the server closes it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port is not None
        self._address = (parts.hostname, parts.port)
        self._conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, content_type: str = "application/msgpack", **headers: str) -> Response:
        for attempt in range(2):
            conn = self._conn or http.client.HTTPConnection(*self._address, timeout=60)
            self._conn = None
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": content_type, **headers})
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                if attempt:
                    raise
                continue  # a kept-alive connection the server had closed: once more on a new one
            if resp.will_close:
                conn.close()
            else:
                self._conn = conn
            return Response(resp.status, resp.getheader("Content-Type", ""), data)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class ThreadedHub:
    url: str
    hub: Any


@contextmanager
def hub_in_thread(settings_: HubSettings, *, now: Callable[[], float]) -> Iterator[ThreadedHub]:
    """The real hub app on 127.0.0.1:0, served by its own event loop in a daemon thread."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        try:
            async with run_hub(settings_, now=now) as running:
                state["stop"], state["loop"] = asyncio.Event(), asyncio.get_running_loop()
                state["hub"] = ThreadedHub(running.url, running.hub)
                ready.set()
                await state["stop"].wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fuzz-hub", daemon=True)
    thread.start()
    ready.wait(60)
    if "hub" not in state:
        thread.join(5)
        raise RuntimeError(f"the hub did not start: {state.get('error')!r}")
    try:
        yield state["hub"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(60)


def enroll(client: Client, name: str, key: SigningKey, token: str = TOKEN, kind: str = "node") -> None:
    resp = client.post(
        "/v1/admin/nodes", json.dumps({"name": name, "public_key": key.public.b64, "kind": kind}).encode(),
        content_type="application/json", Authorization=f"Bearer {token}",
    )
    assert resp.status == 201, resp.body


# ---- strategies -------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=24)  # lone surrogates have no encoding
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | st.binary(max_size=80)
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(TEXT, inner, max_size=6), max_leaves=16
)
"""Anything canonical msgpack can hold."""


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bit flips, truncations, insertions and deletions of a valid envelope at chosen positions."""
    n = len(valid)
    position = st.integers(min_value=0, max_value=n)
    return st.one_of(
        st.integers(min_value=0, max_value=8 * n - 1).map(lambda bit: _flip(valid, bit)),
        st.lists(st.integers(min_value=0, max_value=8 * n - 1), min_size=2, max_size=8, unique=True).map(
            lambda bits: _apply_flips(valid, bits)
        ),
        st.integers(min_value=0, max_value=n - 1).map(lambda i: valid[:i]),
        st.tuples(position, st.binary(min_size=1, max_size=16)).map(lambda a: valid[: a[0]] + a[1] + valid[a[0]:]),
        st.tuples(position, st.integers(min_value=1, max_value=64)).map(lambda a: valid[: a[0]] + valid[a[0] + a[1]:]),
        st.tuples(st.integers(min_value=0, max_value=n - 1), st.integers(0, 255)).map(
            lambda a: valid[: a[0]] + bytes([a[1]]) + valid[a[0] + 1:]
        ),
    )


def _apply_flips(data: bytes, bits: list[int]) -> bytes:
    for bit in bits:
        data = _flip(data, bit)
    return data


def _encodable(value: Any) -> bytes:
    return encode_canonical(value)


def envelopes_of(public_raw: bytes) -> st.SearchStrategy[bytes]:
    """Envelope-shaped maps with wrong types, wrong lengths, missing or extra keys, random bodies."""
    field_values = {
        "body": st.binary(max_size=200) | VALUES,
        "pk": st.just(public_raw) | st.binary(min_size=31, max_size=33) | VALUES,
        "sig": st.binary(min_size=63, max_size=65) | VALUES,
        "v": st.just(1) | st.integers(-(2**63), 2**64 - 1) | VALUES,
    }
    whole = st.fixed_dictionaries(field_values)
    fewer = st.fixed_dictionaries({}, optional=field_values)
    more = st.fixed_dictionaries(field_values, optional={"x": VALUES, "sig2": VALUES})
    right_shape = st.fixed_dictionaries(
        {"body": st.binary(max_size=400), "pk": st.just(public_raw), "sig": st.binary(min_size=64, max_size=64), "v": st.just(1)}
    )
    return st.one_of(whole, fewer, more, right_shape).map(_encodable)


def _replace(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    if not isinstance(obj, dict):
        return obj
    out = dict(obj)
    out[path[0]] = _replace(obj.get(path[0]), path[1:], value)
    return out


def _plausible(body: dict[str, Any], metric: str, f: dict[str, Any]) -> dict[str, Any]:
    out = dict(body, window_start=f["window_start"], window_end=f["window_start"] + DAY, nodes=f["nodes"], seq=f["seq"],
               created=f["created"])
    cells = dict(body["metrics"][metric])
    if f["variance"] is not None:  # None: the catalog's, so the snapshot gets past (8) to the cells and the commit
        cells["variance"] = float(f["variance"])
    if cells["val"]:
        cells["val"] = (f["value"],) + tuple(cells["val"][1:])
    out["metrics"] = dict(body["metrics"], **{metric: cells})
    return out


def signed_by(key: SigningKey, valid_body: bytes) -> st.SearchStrategy[bytes]:
    """Bodies the enrolled key really signed: random bytes, random maps, and its valid body with one field replaced.

    These pass the signature check, so they reach the body decode, catalog,
    window, cells and commit steps: a 5xx hiding behind a good signature shows here.
    """
    body = decode_canonical(valid_body, len(valid_body))
    metric = sorted(body["metrics"])[0]
    paths = [(name,) for name in sorted(body)] + [("metrics", metric, f) for f in sorted(body["metrics"][metric])]
    ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
    replacement = VALUES | ints | st.lists(ints, max_size=8) | st.lists(st.integers(0, 4000), max_size=8).map(sorted)
    mutated = st.tuples(st.sampled_from(paths), replacement).map(lambda pv: _encodable(_replace(body, *pv)))
    # Well-typed and in range for the body decoder, so they reach the window, cells and commit steps.
    int64 = st.integers(min_value=1, max_value=2**63 - 1)
    day = body["window_start"] - body["window_start"] % DAY
    plausible = st.fixed_dictionaries(
        {
            "window_start": st.integers(-3, 500).map(lambda d: day - d * DAY) | int64.map(lambda t: t - t % 3600),
            "nodes": st.just(1) | st.integers(1, 3) | int64,
            "seq": int64,
            "created": int64,
            "value": st.integers(-(2**63), 2**63 - 1),
            "variance": st.none() | st.floats(min_value=0, max_value=1e308),
        }
    ).map(lambda f: _encodable(_plausible(body, metric, f)))
    bodies = st.one_of(st.binary(max_size=300), VALUES.map(_encodable), mutated, plausible)
    return bodies.map(lambda b: sign_body(b, key))


def cases(key: SigningKey, valid: bytes) -> st.SearchStrategy[bytes]:
    """Everything fuzzed against a hub where `key` is enrolled and `valid` is its envelope."""
    return st.one_of(
        st.binary(max_size=600),
        VALUES.map(_encodable),
        envelopes_of(key.public.raw),
        mutations(valid),
        signed_by(key, verify_envelope(valid).body),
    )


# ---- the invariant ----------------------------------------------------------------------------


def check(data: bytes, resp: Response, enrolled: bytes) -> str:
    """Assert the invariant on one response; return a label for counting (status and problem slug)."""
    assert resp.status < 500, f"{resp.status} for {data[:64]!r}"
    if 200 <= resp.status < 300:
        try:
            verified = verify_envelope(data)
        except EnvelopeError as exc:
            raise AssertionError(f"accepted bytes that do not verify ({exc.reason}): {data[:64]!r}") from None
        assert verified.public_key.raw == enrolled, "accepted an envelope of another key"
        return str(resp.status)
    assert 400 <= resp.status < 500, resp.status
    assert resp.content_type.startswith(PROBLEM_CONTENT_TYPE), resp.content_type
    problem = json.loads(resp.body)
    assert problem["status"] == resp.status and problem["type"].startswith(PROBLEM_BASE)
    assert {"title", "detail"} <= set(problem)
    return f"{resp.status} {problem['type'].removeprefix(PROBLEM_BASE)}"


def campaign(client: Client, key: SigningKey, valid: bytes, *, examples: int, seed: int | None = None) -> Counter[str]:
    """Post `examples` hypothesis cases; assert the invariant on each (hypothesis shrinks a failure)."""
    seen: Counter[str] = Counter()

    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=seed is not None, print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(cases(key, valid))
    def one(data: bytes) -> None:
        seen[check(data, client.post("/v1/snapshots", data), key.public.raw)] += 1

    one()
    return seen


# ---- tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedHub, Client, SigningKey, bytes]]:
    settings_ = HubSettings(data_dir=tmp_path_factory.mktemp("fuzz") / "hub", port=0, metrics_port=0, admin_token=TOKEN)
    with hub_in_thread(settings_, now=lambda: NOW) as hub:
        client = Client(hub.url)
        key = SigningKey.from_seed(bytes(range(32)))
        enroll(client, "fuzzed", key)
        valid = envelope(key, W, seed=3)
        assert client.post("/v1/snapshots", valid).status == 202
        try:
            yield hub, client, key, valid
        finally:
            client.close()


def test_hostile_bytes_get_a_problem_never_a_5xx_or_a_forgery(fuzz_hub: tuple[ThreadedHub, Client, SigningKey, bytes]) -> None:
    _, client, key, valid = fuzz_hub
    seen = campaign(client, key, valid, examples=500)
    assert sum(seen.values()) >= 400
    # The campaign reached past the signature check, not only the envelope decoder.
    reached = {label.split()[-1] for label in seen}
    assert {"malformed-envelope", "invalid-signature", "malformed-snapshot"} <= reached, seen


def test_the_valid_envelope_stays_idempotent(fuzz_hub: tuple[ThreadedHub, Client, SigningKey, bytes]) -> None:
    _, client, key, valid = fuzz_hub
    resp = client.post("/v1/snapshots", valid)
    assert resp.status == 200 and json.loads(resp.body)["status"] == "duplicate"
    foreign = envelope(SigningKey.generate(), W)
    assert check(foreign, client.post("/v1/snapshots", foreign), key.public.raw) == "403 unknown-key"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="huge-array-header"),
        pytest.param(b"\x91" * 5000 + b"\x00", id="deep-nesting"),
        pytest.param(encode_canonical({"body": b"", "pk": b"\x00" * 32, "sig": b"\x00" * 64, "v": 1}), id="zero-key"),
    ],
)
def test_known_hostile_inputs(fuzz_hub: tuple[ThreadedHub, Client, SigningKey, bytes], data: bytes) -> None:
    _, client, key, _ = fuzz_hub
    label = check(data, client.post("/v1/snapshots", data), key.public.raw)
    assert label.startswith("4"), label


def test_regression_node_counts_the_store_cannot_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by this fuzzer: a signed snapshot claiming 2**32 merged nodes was answered 500 (INTEGER columns).

    Node counts are bounded by the kind of key now (a node's is 1, a child hub's at most MAX_CHILD_NODES);
    the overflow guard behind them is exercised here with that bound lifted.
    """
    settings_ = HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0, admin_token=TOKEN)
    key, other = SigningKey.from_seed(bytes(range(32))), SigningKey.from_seed(bytes(range(1, 33)))
    with hub_in_thread(settings_, now=lambda: NOW) as hub:
        client = Client(hub.url)
        try:
            enroll(client, "one", key, kind="hub")
            enroll(client, "two", other, kind="hub")
            body = decode_canonical(verify_envelope(envelope(key, W)).body, 1 << 20)

            def signed(signer: SigningKey, nodes: int, window: int = W) -> bytes:
                fields = dict(body, node=signer.public.key_id, nodes=nodes, window_start=window, window_end=window + DAY)
                return sign_body(encode_canonical(fields), signer)

            too_many = signed(key, 2**32)
            assert check(too_many, client.post("/v1/snapshots", too_many), key.public.raw) == "422 invalid-node-count"
            monkeypatch.setattr(intake_module, "MAX_CHILD_NODES", 2**31 - 1)
            # Each fits, their sum does not: the second is refused and the first stays merged as it was.
            assert client.post("/v1/snapshots", signed(key, 2**31 - 1)).status == 202
            second = signed(other, 2**31 - 1)
            assert check(second, client.post("/v1/snapshots", second), other.public.raw) == "422 cells-out-of-domain"
            assert hub.hub.store.cursor().execute("SELECT DISTINCT nodes FROM merged").fetchall() == [(2**31 - 1,)]
            monkeypatch.undo()
            assert client.post("/v1/snapshots", signed(other, 5, W - DAY)).status == 202  # intake goes on
        finally:
            client.close()
