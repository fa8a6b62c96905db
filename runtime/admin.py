"""The local admin channel: operator commands reach a running service through a Unix socket in its data dir.

Only the data directory's owner can use it: the socket is 0600 in the 0700 data dir, served on
an aiohttp runner and routing table of its own (never the public listener's), and a connection
whose peer is neither the service's user nor root is refused. Each operation is one function
(`Operation.run`): the socket's handler calls it in the running service, and the CLI calls it
directly on files it opened itself when no service runs (`open_channel`), so the result, and what
the CLI prints from it, is the same either way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, BeforeValidator, PlainSerializer, ValidationError

from protocol.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE, LiberationError, Problem, ProblemType
from runtime.datadir import DataDirInUse

log = logging.getLogger("liberation.admin")

SOCKET_NAME = "admin.sock"
MAX_SOCKET_PATH = 107
"""Longest path a Unix socket can be bound at on Linux (sun_path is 108 bytes with its NUL)."""
MAX_REQUEST_BYTES = 64 * 2**20
"""Largest request on the socket: a batch of lines of `node import`, an envelope."""
CALL_TIMEOUT_SECONDS = 900.0
"""Longest one call may take (an export of a big window); connecting has a few seconds."""

def _from_base64(value: Any) -> Any:
    return base64.b64decode(value, validate=True) if isinstance(value, str) else value


Blob = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    PlainSerializer(lambda data: base64.b64encode(data).decode("ascii"), return_type=str, when_used="json"),
]
"""Bytes in an operation's parameters or result (an envelope): raw in Python, base64 in the socket's JSON."""

Service = TypeVar("Service")
P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class Operation(Generic[Service, P, R]):
    """One operator command on a service: its name on the socket, its parameters, its result, its one implementation."""

    name: str
    params: type[P]
    result: type[R]
    run: Callable[[Service, P], Awaitable[R]]


class Hello(BaseModel):
    """What a service's socket answers at `GET /`: which service owns the data dir."""

    service: str
    version: str


class Refused(LiberationError):
    """An operation's deliberate refusal (or failure), as the CLI shows it, whichever way it ran."""

    def __init__(self, detail: str, *, slug: str = ProblemType.UNPROCESSABLE, status: int = 422) -> None:
        super().__init__(detail)
        self.detail = detail
        self.slug = slug
        self.status = status

    @classmethod
    def of(cls, exc: LiberationError) -> Refused:
        if isinstance(exc, Refused):
            return exc
        if isinstance(exc, Problem):
            return cls(exc.detail, slug=exc.slug, status=exc.status)
        return cls(str(exc))


class NotServing(Exception):
    """No service answers on the socket (none, or a stale socket file a killed process left)."""


def socket_path(data_dir: Path) -> Path:
    """Where a service listens for its operator: `admin.sock` in its data dir."""
    return data_dir / SOCKET_NAME


def _peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux), or None where the OS cannot say."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _problem(detail: str, *, slug: str, status: int) -> web.Response:
    body = {"type": PROBLEM_BASE + slug, "title": "Refused", "status": status, "detail": detail}
    return web.json_response(body, status=status, content_type=PROBLEM_CONTENT_TYPE)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _owner_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """File modes keep others out; the peer's credentials are checked all the same."""
    uid = _peer_uid(request)
    if uid is not None and uid not in (os.getuid(), 0):
        return _problem("only the service's user may use its admin socket", slug=ProblemType.NOT_OWNER, status=403)
    try:
        return await handler(request)
    except LiberationError as exc:
        refused = Refused.of(exc)
        return _problem(refused.detail, slug=refused.slug, status=refused.status)
    except web.HTTPException as exc:
        return _problem(exc.reason, slug=ProblemType.BAD_REQUEST, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - the operator hears of it in one line, the log has the type
        log.error("admin operation failed: %s", type(exc).__name__, extra={"path": request.path})
        detail = f"the operation failed ({type(exc).__name__}); see the service's log"
        return _problem(detail, slug=ProblemType.OPERATION_FAILED, status=500)


def admin_app(
    service: str, version: str, target: Callable[[], Any], operations: Sequence[Operation[Any, Any, Any]]
) -> web.Application:
    """The socket's own application: `GET /` says whose it is, `POST /<operation>` runs one."""
    app = web.Application(middlewares=[_owner_only], client_max_size=MAX_REQUEST_BYTES)
    hello = Hello(service=service, version=version).model_dump_json()

    async def greet(request: web.Request) -> web.Response:
        return web.Response(text=hello, content_type="application/json")

    def route(op: Operation[Any, Any, Any]) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                params = op.params.model_validate_json(await request.read())
            except ValidationError as exc:
                detail = f"malformed parameters: {exc.error_count()} error(s)"
                raise Refused(detail, slug=ProblemType.BAD_REQUEST, status=400) from None
            result = await op.run(target(), params)
            return web.Response(text=result.model_dump_json(), content_type="application/json")

        return handle

    app.router.add_get("/", greet)
    for op in operations:
        app.router.add_post(f"/{op.name}", route(op))
    return app


def add_admin_socket(
    app: web.Application,
    *,
    service: str,
    version: str,
    data_dir: Path,
    target: Callable[[web.Application], Any],
    operations: Sequence[Operation[Any, Any, Any]],
) -> None:
    """Serve `operations` on `data_dir/admin.sock` while `app` runs (after the contexts added before this one).

    `target(app)` is the opened service the operations run on. A stale socket a killed process
    left is replaced (the data dir's lock, taken first, says no other service owns the dir).
    """

    async def listener(app: web.Application) -> AsyncIterator[None]:
        path = socket_path(data_dir)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            log.warning(
                "the data dir's path is too long for a Unix socket: commands need the service stopped",
                extra={"service": service, "max_bytes": MAX_SOCKET_PATH},
            )
            yield
            return
        runner = web.AppRunner(admin_app(service, version, lambda: target(app), operations),
                               access_log=None, handle_signals=False)
        await runner.setup()
        site = web.UnixSite(runner, str(path))
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise LiberationError(f"cannot open the admin socket {path}: {reason}") from None
        os.chmod(path, 0o600)  # the 0700 data dir keeps others out already; the socket itself too
        log.info("admin socket listening", extra={"service": service, "admin_socket": str(path)})
        try:
            yield
        finally:
            await runner.cleanup()
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    app.cleanup_ctx.append(listener)


class Channel(Generic[Service]):
    """How the CLI runs operations: through a running service's socket, or on files it opened itself."""

    via: str

    async def call(self, op: Operation[Service, P, R], params: P) -> R:
        raise NotImplementedError


class SocketChannel(Channel[Service]):
    """Operations run by the service that listens on the socket."""

    via = "socket"

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def hello(self) -> Hello:
        try:
            async with self._session.get("http://service/") as resp:
                return Hello.model_validate_json(await resp.read())
        except aiohttp.ClientConnectorError as exc:
            raise NotServing(str(exc)) from None
        except (aiohttp.ClientError, ValidationError) as exc:
            raise LiberationError(f"the admin socket answered something else than a Liberation service: {exc}") from None

    async def call(self, op: Operation[Service, P, R], params: P) -> R:
        try:
            async with self._session.post(
                f"http://service/{op.name}", data=params.model_dump_json(), headers={"Content-Type": "application/json"}
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise _refusal(resp.status, body)
                return op.result.model_validate_json(body)
        except aiohttp.ClientError as exc:
            raise LiberationError(f"the service's admin socket failed mid-way ({type(exc).__name__})") from None
        except TimeoutError:
            raise LiberationError(f"the service did not answer within {CALL_TIMEOUT_SECONDS:g} s") from None


def _refusal(status: int, body: bytes) -> Refused:
    """The Refused a problem+json answer of the socket stands for."""
    try:
        data = json.loads(body)
        slug = str(data.get("type", "")).removeprefix(PROBLEM_BASE) or ProblemType.UNPROCESSABLE
        return Refused(str(data.get("detail", "refused")), slug=slug, status=status)
    except (ValueError, AttributeError):
        return Refused(f"the service answered {status}", status=status)


class LocalChannel(Channel[Service]):
    """Operations run here, on a service opened from its files (none is running)."""

    via = "files"

    def __init__(self, service: Service) -> None:
        self._service = service

    async def call(self, op: Operation[Service, P, R], params: P) -> R:
        # Through JSON both ways, as over the socket: the operation and the CLI see exactly what they would there.
        params = op.params.model_validate_json(params.model_dump_json())
        try:
            result = await op.run(self._service, params)
        except LiberationError as exc:
            raise Refused.of(exc) from None
        return op.result.model_validate_json(result.model_dump_json())


@asynccontextmanager
async def offline(open_: Callable[[], Service], close: Callable[[Service], None]) -> AsyncIterator[Service]:
    """A stopped service opened by this process (`open_` takes the data dir's lock): how the CLI works on its files."""
    service = await asyncio.to_thread(open_)
    try:
        yield service
    finally:
        close(service)


def _owner(data_dir: Path) -> int | None:
    try:
        return data_dir.stat().st_uid
    except OSError:
        return None  # missing (the offline open makes it) or unreachable (the open says why)


@asynccontextmanager
async def open_channel(
    service: str, data_dir: Path, offline: Callable[[], AbstractAsyncContextManager[Service]]
) -> AsyncIterator[Channel[Service]]:
    """The running service's socket if one answers in `data_dir`, else the service opened here by `offline()`.

    `offline()` takes the data dir's lock first: if it is held, a service runs but its socket
    does not answer, and that is the error. Only the data dir's owner works on its files: a command
    of root's would leave files the service's user cannot open.
    """
    path = socket_path(data_dir)
    if path.exists() and len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        connector = aiohttp.UnixConnector(path=str(path))
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_SECONDS, sock_connect=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            channel: SocketChannel[Service] = SocketChannel(session)
            try:
                hello = await channel.hello()
            except NotServing:
                pass  # a socket file a killed process left: open the files (the lock tells if one still runs)
            else:
                if hello.service != service:
                    raise LiberationError(f"{data_dir} is a {hello.service}'s data dir, not a {service}'s")
                yield channel
                return
    owner = _owner(data_dir)
    if owner is not None and owner != os.getuid():
        raise LiberationError(
            f"the {service}'s data dir {data_dir} belongs to user id {owner}, not this one: with the {service} "
            "stopped, run this as that user (files made here would lock the service out of them); with it "
            "running, its admin socket serves root and that user"
        )
    async with AsyncExitStack() as stack:
        try:
            target = await stack.enter_async_context(offline())
        except DataDirInUse as exc:
            raise LiberationError(
                f"{exc}, and no service answers on its admin socket {path}: is the {service} starting or "
                "stopping? Try again in a moment"
            ) from None
        yield LocalChannel(target)
