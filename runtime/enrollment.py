"""A key registry as operators see it, the same for a hub and a share keeper: listing, revoking, and their results.

One set of shapes serves the admin socket, the admin HTTP API and the CLI, so each prints the
same lines whichever way a command ran (runtime/admin.py).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from runtime.registry import Kind, NodeRecord, Registry


class NoParams(BaseModel):
    pass


class Enrolled(BaseModel):
    """One enrolled key, as the admin API and the CLI show it."""

    key_id: str
    name: str
    public_key: str
    enrolled: int
    revoked: int | None
    active: bool
    kind: Kind

    @classmethod
    def of(cls, record: NodeRecord) -> Enrolled:
        return cls.model_validate(record.to_dict())

    def line(self) -> str:
        return f"{self.key_id}  {'active' if self.active else 'revoked':8s} {self.kind:5s} {self.name}"


class Nodes(BaseModel):
    nodes: list[Enrolled]

    def render(self) -> list[str]:
        return [n.line() for n in self.nodes] or ["no node enrolled"]


class RevokeParams(BaseModel):
    node: str  # key id or name


class Revoked(BaseModel):
    record: Enrolled

    def render(self) -> str:
        return f"revoked {self.record.name}: key id {self.record.key_id}"


def list_nodes(registry: Registry) -> Nodes:
    return Nodes(nodes=[Enrolled.of(r) for r in registry.nodes()])


async def revoke(registry: Registry, params: RevokeParams) -> Revoked:
    """Revoke a key by key id or name: refused from now on; what it sent before stays."""
    return Revoked(record=Enrolled.of(await asyncio.to_thread(registry.revoke, params.node)))
