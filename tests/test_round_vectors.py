"""The federation round vector (tests/vectors/rounds/minimal.json, docs/protocol.md 13.9) holds, byte for byte.

Regenerating it gives the same file and the same doc block; an independent RFC 9180 sealer
reproduces RFC 9180 appendix A.2.1 and the vector's sealed seeds, which the library opens;
masks, the contribution, the keepers' answers and the aggregate follow the spec's formulas.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.catalog import parse_catalog
from protocol.keys import SigningKey
from protocol.rounds import (
    HPKE_KEY_PREFIX,
    MASK_PREFIX,
    KeeperKey,
    combine,
    open_seed,
    round_id,
    seal_info,
    verify_answer,
    verify_contribution,
)
from tests.vectors import hpke_reference, make_round_vectors

VECTOR = Path(__file__).parent / "vectors" / "rounds" / "minimal.json"


def vector() -> dict[str, Any]:
    return json.loads(VECTOR.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_the_vector_and_the_doc_regenerate_byte_for_byte() -> None:
    built = make_round_vectors.build()
    assert make_round_vectors.render(built) == VECTOR.read_text(encoding="utf-8")
    doc = make_round_vectors.DOC.read_text(encoding="utf-8")
    begin, end = make_round_vectors.DOC_BEGIN, make_round_vectors.DOC_END
    assert doc[doc.index(begin) + len(begin) : doc.index(end)] == make_round_vectors.render_doc(built)


def test_the_reference_sealer_reproduces_rfc9180_a21() -> None:
    from tests.test_rounds_protocol import RFC9180_A21 as v

    ikm_e = bytes.fromhex("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b")  # A.2.1's ikmE
    assert hpke_reference.derive_private_key(ikm_e) == bytes.fromhex(v["skEm"])
    sealed = hpke_reference.seal(bytes.fromhex(v["pkRm"]), bytes.fromhex(v["pt"]), bytes.fromhex(v["info"]),
                                 bytes.fromhex(v["aad"]), ikm_e)
    assert sealed == bytes.fromhex(v["enc"] + v["ct"])


def test_every_value_follows_the_spec() -> None:
    v = vector()
    catalog = parse_catalog(tomllib.loads(v["catalog_toml"]))
    assert catalog.hash == v["catalog_hash"] and catalog.federation_size == len(v["x"]) == 3
    rid = round_id(catalog.hash, v["window_start"], v["window_end"])
    assert rid.hex() == v["round_id_hex"] and MASK_PREFIX.hex() == v["mask_prefix_hex"]
    node = SigningKey.from_seed(bytes.fromhex(v["node_seed_hex"]))
    assert node.public.key_id == v["node_key_id"]
    contribution = verify_contribution(bytes.fromhex(v["contribution_envelope_hex"]), max_size=1 << 16)
    assert contribution.digest == v["contribution_sha256"] and contribution.body.hex() == v["contribution_body_hex"]
    c = contribution.contribution
    y = list(v["x"])
    for k in v["keepers"]:
        identity = SigningKey.from_seed(bytes.fromhex(k["identity_seed_hex"]))
        sealing = X25519PrivateKey.from_private_bytes(bytes.fromhex(k["sealing_private_key_hex"]))
        statement = KeeperKey(identity.public, bytes.fromhex(k["sealing_public_key_hex"]),
                              bytes.fromhex(k["statement_signature_hex"])).verify()
        assert statement.key_id == k["key_id"]
        assert identity.public.verify(bytes.fromhex(k["statement_signature_hex"]),
                                      HPKE_KEY_PREFIX + bytes.fromhex(k["sealing_public_key_hex"]))
        info = seal_info(rid, node.public.key_id, k["key_id"])
        assert info.hex() == k["hpke_info_hex"] and len(info) == 80
        # The library opens what the independent sealer made, and the sealer reproduces it.
        assert c.sealed_for(k["key_id"]) == bytes.fromhex(k["sealed_hex"])
        assert open_seed(bytes.fromhex(k["sealed_hex"]), sealing, info).hex() == k["round_seed_hex"]
        assert hpke_reference.seal(bytes.fromhex(k["sealing_public_key_hex"]), bytes.fromhex(k["round_seed_hex"]), info,
                                   b"", bytes.fromhex(k["hpke_ikm_e_hex"])).hex() == k["sealed_hex"]
        # The mask, from its definition: SHAKE-256(prefix || seed), little-endian uint64s.
        stream = hashlib.shake_256(MASK_PREFIX + bytes.fromhex(k["round_seed_hex"])).digest(24)
        assert k["mask"] == [int.from_bytes(stream[i : i + 8], "little") for i in (0, 8, 16)]
        y = [(a + b) % 2**64 for a, b in zip(y, k["mask"], strict=True)]
        # A = -mask + Z (mod 2^64)
        assert k["answer_a"] == [(z - m) % 2**64 for z, m in zip(k["noise"], k["mask"], strict=True)]
        answer = verify_answer(bytes.fromhex(k["answer_envelope_hex"]), max_size=1 << 16)
        assert answer.digest == k["answer_sha256"] and answer.public_key == identity.public
        assert list(answer.answer.digests) == [v["contribution_sha256"]]
    assert y == v["y"] and c.y.hex() == v["y_hex"]
    assert bytes.fromhex(v["y_hex"]) == b"".join(n.to_bytes(8, "little") for n in v["y"])
    answers = [verify_answer(bytes.fromhex(k["answer_envelope_hex"]), max_size=1 << 16).answer.a for k in v["keepers"]]
    assert combine([c.y], answers, 3).tolist() == v["aggregate"]
    assert v["aggregate"] == [x + sum(k["noise"][i] for k in v["keepers"]) for i, x in enumerate(v["x"])]
    assert hashlib.sha256(bytes.fromhex(v["round_document_hex"])).hexdigest() == v["round_sha256"]
