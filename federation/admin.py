"""The hub operator's commands, each one function: run by the hub's admin socket, its admin HTTP API, or the CLI on its files.

`HUB_OPERATIONS` is what the socket serves (federation/app.py); a stopped hub
is opened by the CLI itself (runtime/admin.py picks the way). Results are data; `render` gives the CLI's lines.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from federation.keepers import fetch_statement
from protocol.errors import BadRequest, ProblemType
from protocol.keys import PublicKey
from runtime import enrollment
from runtime.admin import Blob, Operation
from runtime.enrollment import Enrolled, Nodes, NoParams, Revoked, RevokeParams
from runtime.registry import Kind

if TYPE_CHECKING:
    from federation.service import Hub  # which serves these operations on its socket

log = logging.getLogger("liberation.hub")


async def list_nodes(hub: Hub, params: NoParams) -> Nodes:
    return enrollment.list_nodes(hub.registry)


class EnrollParams(BaseModel):
    name: str
    public_key: str  # base64 or PEM
    kind: Kind = "node"
    url: str | None = None  # a keeper's: where it answers (its statement is fetched there)


class Enrollment(BaseModel):
    record: Enrolled
    changed: bool  # the key was enrolled already, under the other kind: its kind changed

    def render(self) -> str:
        r = self.record
        return f"{'changed' if self.changed else 'enrolled'} {r.name} ({r.kind}): key id {r.key_id}"


async def enroll(hub: Hub, params: EnrollParams) -> Enrollment:
    """Enroll a node's (or a child hub's) public key; the same key and name with the other kind changes its kind.

    A share keeper's (`kind` keeper) comes with the `url` it answers on: its statement is fetched there,
    and its sealing key kept only if the key being enrolled signed it (federation/keepers.py).
    """
    try:
        public_key = PublicKey.parse(params.public_key.strip())
    except ValueError:
        raise BadRequest("the public key is not an Ed25519 public key (base64 or PEM)", slug=ProblemType.INVALID_KEY) from None
    if (params.kind == "keeper") != (params.url is not None):
        raise BadRequest(
            "a keeper is enrolled with the `url` it answers on, and only a keeper", slug=ProblemType.INVALID_ENROLLMENT
        )
    known = any(r.key_id == public_key.key_id for r in hub.registry.nodes())
    if params.url is not None:
        statement = await asyncio.to_thread(fetch_statement, params.url)
        record = await asyncio.to_thread(hub.keepers.enroll, params.name, public_key, params.url, statement)
        log.info("keeper enrolled", extra={"node": record.key_id, "node_name": record.name})
        return Enrollment(record=Enrolled.of(record), changed=False)
    record = await asyncio.to_thread(hub.registry.enroll, params.name, public_key, params.kind)
    log.info("kind changed" if known else "enrolled",
             extra={"node": record.key_id, "node_name": record.name, "kind": record.kind})
    return Enrollment(record=Enrolled.of(record), changed=known)


async def revoke(hub: Hub, params: RevokeParams) -> Revoked:
    """Revoke a node by key id or name: its later snapshots are refused, what was merged stays."""
    done = await enrollment.revoke(hub.registry, params)
    log.info("revoked", extra={"node": done.record.key_id, "node_name": done.record.name})
    return done


class ImportParams(BaseModel):
    envelope: Blob


class Imported(BaseModel):
    status: str  # accepted or duplicate
    node: str
    window_start: int

    def render(self, name: str) -> str:
        return f"{name}: {self.status} (node {self.node}, window {self.window_start})"


async def import_envelope(hub: Hub, params: ImportParams) -> Imported:
    """A snapshot envelope carried by hand, through the same checks and group commit as `POST /v1/snapshots`."""
    result = await hub.intake.submit(params.envelope)
    return Imported(status=result.status, node=result.node, window_start=result.window_start)


NODES: Operation[Hub, NoParams, Nodes] = Operation("nodes", NoParams, Nodes, list_nodes)
ENROLL: Operation[Hub, EnrollParams, Enrollment] = Operation("enroll", EnrollParams, Enrollment, enroll)
REVOKE: Operation[Hub, RevokeParams, Revoked] = Operation("revoke", RevokeParams, Revoked, revoke)
IMPORT: Operation[Hub, ImportParams, Imported] = Operation("import", ImportParams, Imported, import_envelope)
HUB_OPERATIONS: tuple[Operation[Hub, Any, Any], ...] = (NODES, ENROLL, REVOKE, IMPORT)
