"""Regenerate the federation round vector, byte for byte: `python -m tests.vectors.make_round_vectors`.

Fixed inputs only: a three-cell catalog, Ed25519 seeds, X25519 keys, round seeds, the HPKE
ephemeral key material (sealed with tests/vectors/hpke_reference.py, so the bytes reproduce),
and the keepers' noise. Writes tests/vectors/rounds/minimal.json and the block of
docs/protocol.md section 13.9 between its markers (tests/test_round_vectors.py checks both).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.catalog import parse_catalog
from protocol.codec import encode_canonical
from protocol.envelope import ENVELOPE_VERSION
from protocol.keys import SigningKey
from protocol.rounds import (
    ANSWER_PREFIX,
    CONTRIBUTION_PREFIX,
    HPKE_KEY_PREFIX,
    MASK_PREFIX,
    Answer,
    Contribution,
    SealedSeed,
    combine,
    keeper_noise_scales,
    keeper_vector,
    mask,
    participants_digest,
    round_document,
    round_id,
    seal_info,
    to_u64,
    vector_bytes,
)
from tests.vectors.hpke_reference import RAW, seal

HERE = Path(__file__).parent / "rounds"
DOC = Path(__file__).parent.parent.parent / "docs" / "protocol.md"
DOC_BEGIN, DOC_END = "<!-- round-vector:begin -->\n", "<!-- round-vector:end -->"

CATALOG_TOML = """\
name = "round-vector"
version = 1
epsilon_community = 0.5
epsilon_federation = 0.5
max_events_per_session = 10

[apps.demo]
actions = ["start", "complete"]

[[metrics]]
name = "usage"
unit = "sessions"
dimensions = ["app_action"]
max_cells = 2
weight = 1

[[metrics]]
name = "tools"
unit = "sessions"
dimensions = ["tool_count"]
max_cells = 1
weight = 1

[federation]
min_nodes = 2

[federation.metrics]
usage = 0.5
tools = 0.5
"""
WINDOW_START = 1_737_590_400  # 2025-01-23T00:00:00Z
WINDOW_END = WINDOW_START + 86_400
NODE_SEED = bytes(range(32))
X = [7, 3, 9]  # the node's bounded true counts: demo/start, demo/complete, tools "1"
KEEPERS: list[dict[str, Any]] = [
    {"identity_seed": bytes(range(32, 64)), "sealing_private": bytes(range(64, 96)), "seed": bytes([0xA1]) * 32,
     "ikm_e": bytes([0xE1]) * 32, "noise": [-3, 12, 0]},
    {"identity_seed": bytes(range(96, 128)), "sealing_private": bytes(range(128, 160)), "seed": bytes([0xB2]) * 32,
     "ikm_e": bytes([0xE2]) * 32, "noise": [5, -1, -8]},
]
CREATED = WINDOW_END + 3600


def catalog() -> Any:
    return parse_catalog(tomllib.loads(CATALOG_TOML))


def _envelope(body: bytes, key: SigningKey, prefix: bytes) -> tuple[bytes, bytes]:
    signature = key.sign(prefix + body)
    return signature, encode_canonical({"body": body, "pk": key.public.raw, "sig": signature, "v": ENVELOPE_VERSION})


def build() -> dict[str, Any]:
    """The vector: every input and every intermediate value, hex."""
    cat = catalog()
    node = SigningKey.from_seed(NODE_SEED)
    rid = round_id(cat.hash, WINDOW_START, WINDOW_END)
    keepers = []
    y = to_u64(X).copy()
    sealed_seeds = []
    for k in sorted(KEEPERS, key=lambda k: SigningKey.from_seed(k["identity_seed"]).public.key_id):
        identity = SigningKey.from_seed(k["identity_seed"])
        sealing = X25519PrivateKey.from_private_bytes(k["sealing_private"])
        sealing_public = sealing.public_key().public_bytes(*RAW)
        info = seal_info(rid, node.public.key_id, identity.public.key_id)
        sealed = seal(sealing_public, k["seed"], info, b"", k["ikm_e"])
        m = mask(k["seed"], cat.federation_size)
        y += m
        sealed_seeds.append(SealedSeed(identity.public.key_id, sealed))
        keepers.append({
            "identity_seed_hex": k["identity_seed"].hex(),
            "key_id": identity.public.key_id,
            "identity_public_key_hex": identity.public.raw.hex(),
            "sealing_private_key_hex": k["sealing_private"].hex(),
            "sealing_public_key_hex": sealing_public.hex(),
            "statement_signature_hex": identity.sign(HPKE_KEY_PREFIX + sealing_public).hex(),
            "round_seed_hex": k["seed"].hex(),
            "mask": [int(v) for v in m],
            "hpke_info_hex": info.hex(),
            "hpke_ikm_e_hex": k["ikm_e"].hex(),
            "sealed_hex": sealed.hex(),
            "noise": k["noise"],
            "_identity": identity, "_seed": k["seed"],
        })
    body = Contribution(node.public.key_id, cat.hash, WINDOW_START, WINDOW_END, CREATED, vector_bytes(y),
                        tuple(sealed_seeds)).to_bytes()
    signature, envelope = _envelope(body, node, CONTRIBUTION_PREFIX)
    digest = hashlib.sha256(body).hexdigest()
    answers = []
    for k in keepers:
        a = keeper_vector(cat, [k.pop("_seed")], k["noise"])
        answer_body = Answer(k["key_id"], cat.hash, WINDOW_START, WINDOW_END, CREATED + 60, (node.public.key_id,),
                             (digest,), keeper_noise_scales(cat), vector_bytes(a)).to_bytes()
        answer_signature, answer_envelope = _envelope(answer_body, k.pop("_identity"), ANSWER_PREFIX)
        k.update({"answer_a": [int(v) for v in a], "answer_body_hex": answer_body.hex(),
                  "answer_sha256": hashlib.sha256(answer_body).hexdigest(),
                  "answer_signature_hex": answer_signature.hex(), "answer_envelope_hex": answer_envelope.hex()})
        answers.append(answer_body)
    a_vectors = [Answer.from_bytes(b, max_size=len(b)).a for b in answers]
    aggregate = combine([vector_bytes(y)], a_vectors, cat.federation_size)
    assert aggregate.tolist() == (np.array(X) + sum(np.array(k["noise"]) for k in keepers)).tolist()
    document = round_document(cat.hash, WINDOW_START, WINDOW_END, [(node.public.key_id, digest)],
                              [(k["key_id"], k["answer_sha256"]) for k in keepers],
                              np.asarray(aggregate, "<i8").tobytes())
    return {
        "_about": "One node, two share keepers, a three-cell catalog: docs/protocol.md section 13.9.",
        "catalog_toml": CATALOG_TOML,
        "catalog_hash": cat.hash,
        "window_start": WINDOW_START,
        "window_end": WINDOW_END,
        "round_id_hex": rid.hex(),
        "mask_prefix_hex": MASK_PREFIX.hex(),
        "contribution_prefix_hex": CONTRIBUTION_PREFIX.hex(),
        "answer_prefix_hex": ANSWER_PREFIX.hex(),
        "hpke_key_prefix_hex": HPKE_KEY_PREFIX.hex(),
        "node_seed_hex": NODE_SEED.hex(),
        "node_key_id": node.public.key_id,
        "node_public_key_hex": node.public.raw.hex(),
        "x": X,
        "keepers": keepers,
        "y": [int(v) for v in y],
        "y_hex": vector_bytes(y).hex(),
        "contribution_body_hex": body.hex(),
        "contribution_sha256": digest,
        "contribution_signature_hex": signature.hex(),
        "contribution_envelope_hex": envelope.hex(),
        "participants_sha256": participants_digest([node.public.key_id], [digest]),
        "aggregate": aggregate.tolist(),
        "round_document_hex": document.hex(),
        "round_sha256": hashlib.sha256(document).hexdigest(),
    }


def render(vector: dict[str, Any]) -> str:
    return json.dumps(vector, indent=2, ensure_ascii=True) + "\n"


def render_doc(vector: dict[str, Any]) -> str:
    """The block of docs/protocol.md 13.9: the vector's key values, one per line."""
    k0, k1 = vector["keepers"]
    lines = [
        f"catalog hash           {vector['catalog_hash']}",
        f"round id               {vector['round_id_hex']}",
        f"node key id            {vector['node_key_id']}   (Ed25519 seed 000102...1f)",
        f"x                      {vector['x']}",
    ]
    for i, k in enumerate((k0, k1)):
        lines += [
            f"keeper {i} key id        {k['key_id']}",
            f"  sealing key (X25519) {k['sealing_public_key_hex']}",
            f"  round seed           {k['round_seed_hex']}",
            f"  mask                 {k['mask']}",
            f"  HPKE info            {k['hpke_info_hex']}",
            f"  sealed seed          {k['sealed_hex']}",
            f"  noise Z              {k['noise']}",
            f"  answer A             {k['answer_a']}",
        ]
    lines += [
        f"y                      {vector['y']}",
        f"y (wire)               {vector['y_hex']}",
        f"contribution sha256    {vector['contribution_sha256']}",
        f"contribution signature {vector['contribution_signature_hex']}",
        f"aggregate              {vector['aggregate']}   (= x + Z0 + Z1)",
        f"round sha256           {vector['round_sha256']}",
    ]
    return "```\n" + "\n".join(lines) + "\n```\n"


def main() -> None:
    vector = build()
    HERE.mkdir(exist_ok=True)
    (HERE / "minimal.json").write_text(render(vector), encoding="utf-8")
    doc = DOC.read_text(encoding="utf-8")
    start, end = doc.index(DOC_BEGIN) + len(DOC_BEGIN), doc.index(DOC_END)
    DOC.write_text(doc[:start] + render_doc(vector) + doc[end:], encoding="utf-8")
    print(f"wrote {HERE / 'minimal.json'} and docs/protocol.md section 13.9")


if __name__ == "__main__":
    main()
