"""Real servers for tests: in-process aiohttp apps on 127.0.0.1:0, and whole `liberation` processes."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from node.app import create_app
from node.ingest import Clock, utc_now
from node.service import NODE, Node
from node.settings import NodeSettings
from runtime.metrics_listener import METRICS_LISTENER

URL_PATTERN = re.compile(r'"url": "(http://127\.0\.0\.1:\d+)"')
METRICS_URL_PATTERN = re.compile(r'"metrics_url": "(http://127\.0\.0\.1:\d+)"')
METRICS_ANY_PORT = {
    "LIBERATION_NODE_METRICS_PORT": "0", "LIBERATION_HUB_METRICS_PORT": "0", "LIBERATION_KEEPER_METRICS_PORT": "0",
}
"""Tests never take a service's default metrics port: parallel runs would collide."""


def admin_token() -> str:
    """A fresh hub admin token as an operator makes one: 32 random bytes (the hub refuses weaker)."""
    return secrets.token_urlsafe(32)


@dataclass
class RunningNode:
    url: str
    app: web.Application
    settings: NodeSettings

    @property
    def node(self) -> Node:
        return self.app[NODE]

    @property
    def metrics_url(self) -> str:
        url = self.app[METRICS_LISTENER].url
        assert url is not None
        return url


def node_settings(data_dir: Path, **changes: Any) -> NodeSettings:
    """Test settings: loopback, ephemeral port, no rate limit unless asked."""
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "rate_limit": {"requests_per_second": 0},
    }
    base.update(changes)
    return NodeSettings.model_validate(base)


@asynccontextmanager
async def run_node(settings: NodeSettings, *, clock: Clock = utc_now) -> AsyncIterator[RunningNode]:
    """Start the real node app on 127.0.0.1 with an ephemeral port."""
    app = create_app(settings, clock=clock)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield RunningNode(f"http://127.0.0.1:{port}", app, settings)
    finally:
        await runner.cleanup()


class Process:
    """A `liberation ...` subprocess whose JSON logs are captured to a file."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        umask: int = -1,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """`umask`: the process's umask at start (-1: this one's); `preexec_fn`: run in the child
        before it starts (resource limits of the child alone)."""
        self.log_path = log_path
        self._log = open(log_path, "ab")
        full_env = dict(os.environ)
        full_env.update(METRICS_ANY_PORT)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "liberation", *args],
            stdout=self._log,
            stderr=self._log,
            env=full_env,
            umask=umask,
            preexec_fn=preexec_fn,
        )
        self.url = self._wait_for_url()

    @property
    def metrics_url(self) -> str:
        """The operator's metrics listener, as the process logged it."""
        found = METRICS_URL_PATTERN.findall(self.log_path.read_text(errors="replace"))
        assert found, "no metrics_url logged"
        return str(found[-1])

    def _wait_for_url(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited: {self.log_path.read_text()[-2000:]}")
            found = URL_PATTERN.findall(self.log_path.read_text(errors="replace"))
            if found:
                url = found[-1]
                if _responds(url + "/healthz"):
                    return url
            time.sleep(0.05)
        raise TimeoutError(f"no URL logged in {timeout}s: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class RunningHub:
    url: str
    app: web.Application

    @property
    def hub(self) -> Any:
        from federation.service import HUB

        return self.app[HUB]

    @property
    def metrics_url(self) -> str:
        url = self.app[METRICS_LISTENER].url
        assert url is not None
        return url


@asynccontextmanager
async def run_hub(settings: Any, *, now: Any = None) -> AsyncIterator[RunningHub]:
    """Start the real hub app on 127.0.0.1 with an ephemeral port."""
    import time as _time

    from federation.app import create_app as create_hub_app

    app = create_hub_app(settings, now=now or _time.time)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port)  # 0: an ephemeral port
    await site.start()
    try:
        yield RunningHub(f"http://127.0.0.1:{runner.addresses[0][1]}", app)
    finally:
        await runner.cleanup()
