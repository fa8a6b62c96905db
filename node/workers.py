"""Serving a node: one process, or the main process (DuckDB, salts, exports, pushes) plus ingest worker processes.

With `ingest_workers = N >= 1` the main process serves its app on a Unix
socket in the data dir only (mode 0600), holds the public port bound but not
listening (SO_REUSEPORT, so `--port 0` resolves once and every worker binds
the same port), and supervises N `liberation node worker` processes: started
once the main is ready, restarted if they die, stopped with it. Each worker's
stdin is a pipe from the main: if the main dies, even by SIGKILL, the pipe
closes and the workers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from liberation.server import base_url, make_runner, run_app, tune_gc, wait_for_signal
from node.app import create_app, start_rows_server
from node.handoff import rows_socket
from node.settings import NodeSettings

log = logging.getLogger("liberation.node.workers")

SOCKET_NAME = "ingest.sock"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux
RESTART_DELAY_SECONDS = 0.5
STOP_TIMEOUT_SECONDS = 30.0


class Supervisor:
    """Starts N worker processes and keeps N running until `stop`."""

    def __init__(self, settings: NodeSettings, socket_path: Path, port: int) -> None:
        self._settings = settings
        self._socket = socket_path
        self._port = port
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values()]

    async def start(self) -> None:
        for index in range(self._settings.ingest_workers):
            await self._spawn(index)
            self._watchers.append(asyncio.create_task(self._watch(index), name=f"worker-{index}"))

    async def _spawn(self, index: int) -> None:
        start = {
            "settings": self._settings.model_dump(mode="json"),
            "socket": str(self._socket),
            "port": self._port,
            "index": index,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "liberation", "node", "worker", stdin=subprocess.PIPE
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(start).encode() + b"\n")
        await proc.stdin.drain()  # and the pipe stays open: its end of file tells the worker we are gone
        self._procs[index] = proc
        log.info("worker started", extra={"worker": index, "pid": proc.pid})

    async def _watch(self, index: int) -> None:
        while True:
            code = await self._procs[index].wait()
            if self._stopping:
                return
            log.error("worker exited; restarting it", extra={"worker": index, "code": code})
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            if self._stopping:
                return
            await self._spawn(index)

    async def stop(self) -> None:
        """SIGTERM every worker (each finishes its requests, whose commits need us) and wait for them."""
        self._stopping = True
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.terminate()
        for proc in self._procs.values():
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


def socket_path(settings: NodeSettings) -> Path:
    """The main's Unix socket: in the data dir, or in a private temp dir when that path is too long."""
    path = settings.data_dir.resolve() / SOCKET_NAME
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    return Path(tempfile.mkdtemp(prefix="liberation-")) / SOCKET_NAME  # mkdtemp: mode 0700


def hold_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) host:port with SO_REUSEPORT: resolves port 0 and keeps the port for the workers."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


async def _serve_with_workers(settings: NodeSettings) -> None:
    # No access log here: every request on the socket came through a worker, which logged
    # it (public routes it proxied) or is plumbing (handoffs, salts, counts: hundreds a second).
    runner = make_runner(create_app(settings, handoff=True), "node", access_log=False)
    await runner.setup()  # the node is open: DuckDB, salts, writer
    path = socket_path(settings)
    path.unlink(missing_ok=True)  # left by a main that was killed
    site = web.UnixSite(runner, str(path))
    await site.start()
    os.chmod(path, 0o600)
    rows_path = rows_socket(path)
    rows = await start_rows_server(runner.app, rows_path)
    public = hold_port(settings.host, settings.port)
    host, port = public.getsockname()[:2]
    supervisor = Supervisor(settings, path, port)
    try:
        await supervisor.start()
        tune_gc()
        log.info("listening", extra={"service": "node", "url": base_url(host, port), "ingest_workers": settings.ingest_workers})
        await wait_for_signal()
    finally:
        log.info("stopping", extra={"service": "node"})
        await supervisor.stop()
        public.close()
        rows.close()
        await rows.wait_closed()
        await runner.cleanup()
        for socket_file in (path, rows_path):
            with contextlib.suppress(OSError):
                socket_file.unlink()


def serve_node(settings: NodeSettings) -> None:
    """`liberation node serve`: one process, or the main process and its ingest workers."""
    if settings.ingest_workers == 0:
        run_app(create_app(settings), settings.host, settings.port, "node")
    else:
        asyncio.run(_serve_with_workers(settings))
