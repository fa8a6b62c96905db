"""The keeper operator's commands, each one function: run by the keeper's admin socket, its admin HTTP API, or the CLI.

`KEEPER_OPERATIONS` is what the socket serves (keeper/app.py); a stopped
keeper is opened by the CLI itself (runtime/admin.py picks the way), so `liberation keeper enroll|revoke|nodes`
work the same whether the keeper runs or not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from protocol.errors import BadRequest, ProblemType
from protocol.keys import PublicKey
from runtime import enrollment
from runtime.admin import Operation
from runtime.enrollment import Enrolled, Nodes, NoParams, Revoked, RevokeParams

if TYPE_CHECKING:
    from keeper.app import Keeper  # which serves these operations on its socket

log = logging.getLogger("liberation.keeper")


async def list_nodes(keeper: Keeper, params: NoParams) -> Nodes:
    return enrollment.list_nodes(keeper.registry)


class EnrollParams(BaseModel):
    name: str
    public_key: str  # base64 or PEM


class Enrollment(BaseModel):
    record: Enrolled

    def render(self) -> str:
        return f"enrolled {self.record.name}: key id {self.record.key_id}"


async def enroll(keeper: Keeper, params: EnrollParams) -> Enrollment:
    """Enroll a node whose contributions this keeper opens seeds for (a keeper enrolls nodes only)."""
    try:
        public_key = PublicKey.parse(params.public_key.strip())
    except ValueError:
        raise BadRequest("the public key is not an Ed25519 public key (base64 or PEM)", slug=ProblemType.INVALID_KEY) from None
    record = await asyncio.to_thread(keeper.registry.enroll, params.name, public_key, "node")
    log.info("enrolled", extra={"node": record.key_id, "node_name": record.name})
    return Enrollment(record=Enrolled.of(record))


async def revoke(keeper: Keeper, params: RevokeParams) -> Revoked:
    """Revoke a node by key id or name: rounds naming it are refused from now on."""
    done = await enrollment.revoke(keeper.registry, params)
    log.info("revoked", extra={"node": done.record.key_id, "node_name": done.record.name})
    return done


NODES: Operation[Keeper, NoParams, Nodes] = Operation("nodes", NoParams, Nodes, list_nodes)
ENROLL: Operation[Keeper, EnrollParams, Enrollment] = Operation("enroll", EnrollParams, Enrollment, enroll)
REVOKE: Operation[Keeper, RevokeParams, Revoked] = Operation("revoke", RevokeParams, Revoked, revoke)
KEEPER_OPERATIONS: tuple[Operation[Keeper, Any, Any], ...] = (NODES, ENROLL, REVOKE)
