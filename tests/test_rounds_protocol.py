"""Federation rounds' contract: masks cancel, seeds seal and open only for their round, answers combine exactly.

Pure: no servers. The HPKE suite runs against RFC 9180's own test vector (A.2.1); the
uniformity of a contribution alone is a chi-square test over many rounds.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy.stats import chi2

from protocol.catalog import load_catalog, parse_catalog
from protocol.codec import DecodeError, decode_canonical, encode_canonical
from protocol.envelope import SignatureError
from protocol.keys import KeyFormatError, SigningKey
from protocol.rounds import (
    MASK_PREFIX,
    Answer,
    KeeperKey,
    RoundRequest,
    SealError,
    build_contribution,
    check_hpke_key,
    combine,
    keeper_noise_scales,
    keeper_vector,
    mask,
    open_seed,
    participants_digest,
    round_id,
    seal_info,
    sign_answer,
    sign_request,
    to_u64,
    vector_bytes,
    verify_answer,
    verify_contribution,
    verify_request,
)

CATALOG = load_catalog()
DAY = 86_400
W = 1_795_392_000


def keeper(seed: bytes) -> tuple[KeeperKey, X25519PrivateKey, SigningKey]:
    identity = SigningKey.from_seed(hashlib.sha256(b"identity" + seed).digest())
    sealing = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"sealing" + seed).digest())
    raw = sealing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeeperKey.issue(identity, raw), sealing, identity


def contribute(node: SigningKey, x: list[int], keepers: list[KeeperKey], window: int = W) -> bytes:
    return build_contribution(CATALOG, x, key=node, keepers=keepers, window_start=window, window_end=window + DAY,
                              created=window + DAY + 3600)


def answer_of(k: tuple[KeeperKey, X25519PrivateKey, SigningKey], envelopes: list[bytes], noise: list[int]) -> bytes:
    statement, sealing, identity = k
    seeds, nodes, digests = [], [], []
    for env in sorted(envelopes, key=lambda e: verify_contribution(e, max_size=1 << 20).contribution.node):
        v = verify_contribution(env, max_size=1 << 20)
        c = v.contribution
        sealed = c.sealed_for(statement.key_id)
        assert sealed is not None
        seeds.append(open_seed(sealed, sealing, seal_info(c.round, c.node, statement.key_id)))
        nodes.append(c.node)
        digests.append(v.digest)
    a = keeper_vector(CATALOG, seeds, noise)
    body = Answer(statement.key_id, CATALOG.hash, W, W + DAY, W + DAY, tuple(nodes), tuple(digests),
                  keeper_noise_scales(CATALOG), vector_bytes(a))
    return sign_answer(body, identity)


def test_the_sum_of_contributions_and_answers_is_the_true_sum_plus_the_keepers_noise() -> None:
    rng = np.random.default_rng(1)
    keepers = [keeper(b"k1"), keeper(b"k2")]
    nodes = [SigningKey.from_seed(bytes([i]) * 32) for i in range(5)]
    xs = [rng.integers(0, 50, CATALOG.federation_size).tolist() for _ in nodes]
    envelopes = [contribute(n, x, [k[0] for k in keepers]) for n, x in zip(nodes, xs, strict=False)]
    noises = [rng.integers(-300, 300, CATALOG.federation_size).tolist() for _ in keepers]
    answers = [answer_of(k, envelopes, z) for k, z in zip(keepers, noises, strict=False)]
    ys = [verify_contribution(e, max_size=1 << 20).contribution.y for e in envelopes]
    a_s = [verify_answer(a, max_size=1 << 20).answer.a for a in answers]
    total = combine(ys, a_s, CATALOG.federation_size)
    expected = np.sum(xs, axis=0) + np.sum(noises, axis=0)
    assert total.dtype == np.int64 and np.array_equal(total, expected)
    # Without one keeper's answer the sum is noise over the whole uint64 range, not the counts.
    partial = combine(ys, a_s[:1], CATALOG.federation_size)
    assert np.mean(np.abs(partial.astype(np.float64))) > 2**60


def test_negative_counts_and_noise_wrap_as_signed_64_bit() -> None:
    x = [-5, 2**62, -(2**62), 0] + [0] * (CATALOG.federation_size - 4)
    k = keeper(b"w")
    env = contribute(SigningKey.from_seed(b"n" * 32), x, [k[0]])
    ans = answer_of(k, [env], [-(2**62)] + [0] * (CATALOG.federation_size - 1))
    total = combine([verify_contribution(env, max_size=1 << 20).contribution.y],
                    [verify_answer(ans, max_size=1 << 20).answer.a], CATALOG.federation_size)
    assert total[:4].tolist() == [-5 - 2**62, 2**62, -(2**62), 0]


def test_a_contribution_alone_is_indistinguishable_from_uniform() -> None:
    """Chi-square over many rounds: the bytes of y for a fixed, very non-uniform x are uniform."""
    k = keeper(b"u")
    node = SigningKey.from_seed(b"u" * 32)
    x = [0] * CATALOG.federation_size
    x[0], x[1] = 7, 10**6
    counts = np.zeros(256, dtype=np.int64)
    top_bits = np.zeros(16, dtype=np.int64)
    for r in range(200):
        y = np.frombuffer(verify_contribution(contribute(node, x, [k[0]], W + r * DAY), max_size=1 << 20).contribution.y,
                          dtype="<u8")
        counts += np.bincount(np.frombuffer(y.tobytes(), dtype=np.uint8), minlength=256)
        top_bits += np.bincount((y >> np.uint64(60)).astype(np.int64), minlength=16)
    for observed in (counts, top_bits):
        expected = observed.sum() / len(observed)
        statistic = float(((observed - expected) ** 2 / expected).sum())
        # p < 1e-6 would fail: a test that flags real structure, not a fluke.
        assert chi2.sf(statistic, len(observed) - 1) > 1e-6, statistic


def test_the_mask_is_shake256_of_the_prefix_and_seed_little_endian() -> None:
    seed = bytes(range(32))
    stream = hashlib.shake_256(MASK_PREFIX + seed).digest(24)
    assert mask(seed, 3).tolist() == [int.from_bytes(stream[i : i + 8], "little") for i in (0, 8, 16)]
    assert mask(seed, 5)[:3].tolist() == mask(seed, 3).tolist()  # a prefix of the same stream
    with pytest.raises(ValueError):
        mask(b"short", 3)


def test_a_seed_opens_only_for_its_round_node_and_keeper() -> None:
    k1, k2 = keeper(b"a"), keeper(b"b")
    node = SigningKey.from_seed(b"s" * 32)
    v = verify_contribution(contribute(node, [1] * CATALOG.federation_size, [k1[0], k2[0]]), max_size=1 << 20)
    c = v.contribution
    sealed = c.sealed_for(k1[0].key_id)
    assert sealed is not None and len(sealed) == 80
    seed = open_seed(sealed, k1[1], seal_info(c.round, c.node, k1[0].key_id))
    assert len(seed) == 32
    other = SigningKey.from_seed(b"o" * 32).public.key_id
    wrong_infos = [
        seal_info(round_id(c.catalog, W + DAY, W + 2 * DAY), c.node, k1[0].key_id),  # another round
        seal_info(c.round, other, k1[0].key_id),  # another node (a replayed seed)
        seal_info(c.round, c.node, k2[0].key_id),  # another keeper's id
    ]
    for info in wrong_infos:
        with pytest.raises(SealError):
            open_seed(sealed, k1[1], info)
    with pytest.raises(SealError):
        open_seed(sealed, k2[1], seal_info(c.round, c.node, k1[0].key_id))  # another keeper's key
    tampered = sealed[:40] + bytes([sealed[40] ^ 1]) + sealed[41:]
    with pytest.raises(SealError):
        open_seed(tampered, k1[1], seal_info(c.round, c.node, k1[0].key_id))


# RFC 9180, appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305, base mode,
# sequence number 0. Copied from the RFC's text.
RFC9180_A21 = {
    "info": "4f6465206f6e2061204772656369616e2055726e",
    "skEm": "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600",
    "pkEm": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
    "skRm": "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
    "pkRm": "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a",
    "enc": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
    "pt": "4265617574792069732074727574682c20747275746820626561757479",
    "aad": "436f756e742d30",
    "ct": "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
}


def test_the_library_opens_rfc9180_a21() -> None:
    """The suite the rounds use, on the RFC's own vector: keys, KEM, key schedule and AEAD as specified."""
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl  # the aad variant is not public API
    from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

    v = {name: bytes.fromhex(value) for name, value in RFC9180_A21.items()}
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert X25519PrivateKey.from_private_bytes(v["skRm"]).public_key().public_bytes(*raw) == v["pkRm"]
    assert X25519PrivateKey.from_private_bytes(v["skEm"]).public_key().public_bytes(*raw) == v["enc"] == v["pkEm"]
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
    opened = rust_openssl.hpke._decrypt_with_aad(
        suite, v["enc"] + v["ct"], X25519PrivateKey.from_private_bytes(v["skRm"]), info=v["info"], aad=v["aad"])
    assert opened == v["pt"]
    # The rounds' empty aad is not the vector's: its ciphertext does not open without it.
    with pytest.raises(Exception):  # noqa: B017, PT011 - InvalidTag from the binding
        suite.decrypt(v["enc"] + v["ct"], X25519PrivateKey.from_private_bytes(v["skRm"]), info=v["info"])


SMALL_ORDER_X25519 = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p: not canonical
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1: not canonical
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",  # high bit set
]


@pytest.mark.parametrize("hex_key", SMALL_ORDER_X25519)
def test_small_order_and_non_canonical_sealing_keys_are_refused(hex_key: str) -> None:
    with pytest.raises(KeyFormatError):
        check_hpke_key(bytes.fromhex(hex_key))
    identity = SigningKey.from_seed(b"i" * 32)
    with pytest.raises(KeyFormatError):
        KeeperKey.issue(identity, bytes.fromhex(hex_key))


def test_a_keeper_statement_binds_its_sealing_key_to_its_identity() -> None:
    k, _, _ = keeper(b"st")
    assert k.verify() is k
    swapped = KeeperKey(k.identity, keeper(b"other")[0].hpke, k.signature)  # a hub's own sealing key slipped in
    with pytest.raises(SignatureError):
        swapped.verify()


def test_signatures_are_domain_separated() -> None:
    node = SigningKey.from_seed(b"d" * 32)
    k = keeper(b"d")
    env = contribute(node, [0] * CATALOG.federation_size, [k[0]])
    with pytest.raises(SignatureError):
        verify_answer(env, max_size=1 << 20)  # a contribution's signature is no answer's
    with pytest.raises(SignatureError):
        verify_request(env)
    from protocol.envelope import verify_envelope

    with pytest.raises(SignatureError):
        verify_envelope(env)  # nor a snapshot's
    # One bit of the body flipped: the signature is over the bytes as received.
    forged = bytearray(env)
    forged[200] ^= 1
    with pytest.raises((SignatureError, DecodeError)):
        verify_contribution(bytes(forged), max_size=1 << 20)


def test_a_body_naming_another_node_is_refused() -> None:
    node, other = SigningKey.from_seed(b"n" * 32), SigningKey.from_seed(b"m" * 32)
    env = contribute(node, [0] * CATALOG.federation_size, [keeper(b"x")[0]])
    outer = decode_canonical(env, 1 << 20)
    from protocol.rounds import CONTRIBUTION_PREFIX

    resigned = encode_canonical({"body": outer["body"], "pk": other.public.raw,
                                 "sig": other.sign(CONTRIBUTION_PREFIX + outer["body"]), "v": 1})
    with pytest.raises(SignatureError, match="different node"):
        verify_contribution(resigned, max_size=1 << 20)


def test_a_round_request_is_signed_by_the_hub_and_decodes_strictly() -> None:
    hub = SigningKey.from_seed(b"h" * 32)
    k = keeper(b"r")
    env = contribute(SigningKey.from_seed(b"q" * 32), [0] * CATALOG.federation_size, [k[0]])
    request = RoundRequest(CATALOG.hash, W, W + DAY, (env,))
    key, decoded = verify_request(sign_request(request, hub))
    assert key == hub.public and decoded == request
    with pytest.raises(DecodeError):
        RoundRequest.from_bytes(encode_canonical({"catalog": CATALOG.hash, "format": "x"}))


def test_participant_digest_is_order_and_content_sensitive() -> None:
    a = participants_digest(["a" * 32, "b" * 32], ["1" * 64, "2" * 64])
    assert a != participants_digest(["a" * 32, "b" * 32], ["1" * 64, "3" * 64])
    assert a == participants_digest(["a" * 32, "b" * 32], ["1" * 64, "2" * 64])


def test_catalog_declares_both_epsilons_and_the_federation_metrics() -> None:
    assert CATALOG.epsilon_per_window == pytest.approx(CATALOG.epsilon_community + CATALOG.epsilon_federation)
    assert CATALOG.federation is not None and CATALOG.federation.min_nodes >= 2
    assert [m.name for m in CATALOG.federation_metrics] == [m.name for m in CATALOG.metrics
                                                             if m.name in CATALOG.federation.metrics]
    assert math.fsum(CATALOG.federation_epsilon(m) for m in CATALOG.federation_metrics) == pytest.approx(
        CATALOG.epsilon_federation)
    for m in CATALOG.federation_metrics:
        assert CATALOG.federation_scale(m) == pytest.approx(m.sensitivity / CATALOG.federation_epsilon(m))
    assert CATALOG.federation_size == sum(CATALOG.domain_size(m) for m in CATALOG.federation_metrics)
    # A contribution of the default catalog is well under the 32 KiB target.
    env = contribute(SigningKey.generate(), [0] * CATALOG.federation_size, [keeper(b"1")[0], keeper(b"2")[0]])
    assert len(env) <= 32 * 1024


def test_catalogs_whose_rounds_do_not_add_up_are_refused() -> None:
    from protocol.catalog import CatalogError

    raw = CATALOG.model_dump(mode="json")
    for change, message in [
        ({"federation": None}, "declare \\[federation\\]"),
        ({"epsilon_federation": 0.0}, "above 0"),
        ({"federation": {"min_nodes": 3, "metrics": {"nope": 1.0}}}, "not a metric"),
        ({"federation": {"min_nodes": 3, "metrics": {"geo_sessions": 0.5}}}, "add up to 0.5"),
        ({"federation": {"min_nodes": 1, "metrics": {"geo_sessions": 1.0}}}, "greater than or equal to 2"),
    ]:
        with pytest.raises(CatalogError, match=message):
            parse_catalog({**raw, **change})
    legacy = {k: v for k, v in raw.items() if k not in ("epsilon_community", "epsilon_federation", "federation")}
    legacy["epsilon_per_window"] = 1.0  # a catalog from before rounds: its epsilon is the community's
    old = parse_catalog(legacy)
    assert old.epsilon_community == 1.0 and old.federation is None and old.federation_metrics == ()


def test_vectors_are_u64_little_endian() -> None:
    assert vector_bytes(to_u64([1, -1])) == (1).to_bytes(8, "little") + (2**64 - 1).to_bytes(8, "little")
