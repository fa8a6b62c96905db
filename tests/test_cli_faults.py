"""No traceback reaches a user: every `liberation` command, taken from the argparse tree (a new
command is covered without a line here), run as a real process under the faults an operator meets:
a broken or misspelt settings file, files that are missing or are directories, URLs without a
scheme, refused or answering 404, a data dir another process holds, a port in use, `| head`.

Each fault must give one line on stderr starting `liberation: ` and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from liberation.cli import EXIT_PIPE, build_parser
from runtime.admin import SOCKET_NAME
from tests.servers import METRICS_ANY_PORT, Process

TIMEOUT_SECONDS = 120
WORKERS = 3


@dataclass(frozen=True)
class Leaf:
    """One runnable command: its words (`node budget`) and its parser."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def option(self, flag: str) -> argparse.Action | None:
        return next((a for a in self.parser._actions if flag in a.option_strings), None)

    def arguments(self) -> Iterator[argparse.Action]:
        """What must be given (positionals, required options) and keys (`--key`, required in all but name)."""
        for action in self.parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.option_strings or action.required or "BASE64" in str(action.metavar or ""):
                yield action


def leaves(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[Leaf]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaves(sub, (*words, name))
            return
    yield Leaf(words, parser)


LEAVES = list(leaves(build_parser()))


def kind(action: argparse.Action) -> str:
    """What an argument takes, from its metavar: a file, a directory, a URL, a key, or text."""
    label = str(action.metavar or action.dest).upper()
    if "BASE64" in label:
        return "key"
    for word in ("URL", "FILE", "DIR"):
        if word in label:
            return word.lower()
    return "text"


@dataclass
class World:
    """What the faults need: files, a running node and hub whose sockets are gone, a taken port."""

    root: Path
    node_dir: Path
    hub_dir: Path
    not_found_url: str
    taken_port: int
    files: dict[str, Path] = field(default_factory=dict)

    def path(self, name: str, text: str | None = None) -> Path:
        path = self.root / name
        if text is not None:
            path.write_text(text)
        return path


@dataclass(frozen=True)
class Fault:
    """A fault: which commands it applies to, and the arguments that cause it."""

    name: str
    applies: Callable[[Leaf], bool]
    values: Callable[[World], dict[str, str]]  # kind -> value, overriding the defaults
    options: Callable[[Leaf, World], list[str]] = lambda leaf, world: []
    must_fail: bool = True  # False: a command may also cope (`node key` reads its key with the node running)


def has(flag: str) -> Callable[[Leaf], bool]:
    return lambda leaf: leaf.option(flag) is not None


def takes(kinds: set[str]) -> Callable[[Leaf], bool]:
    return lambda leaf: any(kind(a) in kinds for a in leaf.arguments())


def service_dir(leaf: Leaf, world: World) -> Path | None:
    return {"node": world.node_dir, "hub": world.hub_dir}.get(leaf.words[0])


FAULTS = [
    Fault("broken-toml", has("--config"), lambda w: {},
          lambda leaf, w: ["--config", str(w.path("broken.toml", "port = \n"))]),
    Fault("misspelt-setting", has("--config"), lambda w: {},
          lambda leaf, w: ["--config", str(w.path("typo.toml", "prot = 8701\n"))]),
    Fault("config-is-a-directory", has("--config"), lambda w: {},
          lambda leaf, w: ["--config", str(w.root)]),
    Fault("file-missing", takes({"file", "key"}),
          lambda w: {"file": str(w.root / "absent"), "key": str(w.root / "absent")}),
    Fault("file-is-a-directory", takes({"file"}), lambda w: {"file": str(w.root)}),
    Fault("url-without-scheme", takes({"url"}), lambda w: {"url": "127.0.0.1:1"}),
    Fault("url-refused", takes({"url"}), lambda w: {"url": "http://127.0.0.1:1"}),
    Fault("url-not-found", takes({"url"}), lambda w: {"url": w.not_found_url}),
    Fault("data-dir-is-a-file", has("--data-dir"), lambda w: {},  # `node sites list` reads only the settings
          lambda leaf, w: ["--data-dir", str(w.path("a-file", "x"))], must_fail=False),
    Fault("dir-is-a-file", takes({"dir"}), lambda w: {"dir": str(w.path("a-file", "x"))}),
    Fault("data-dir-held", lambda leaf: leaf.option("--data-dir") is not None and leaf.words[0] in ("node", "hub"),
          lambda w: {}, lambda leaf, w: ["--data-dir", str(service_dir(leaf, w))], must_fail=False),
    Fault("port-in-use", has("--port"), lambda w: {}, lambda leaf, w: ["--port", str(w.taken_port)]),
]
if os.getuid() != 0:  # root reads a file of mode 000 all the same
    FAULTS.append(Fault("file-unreadable", takes({"file"}), lambda w: {"file": str(w.files["unreadable"])}))


def argv(leaf: Leaf, world: World, values: dict[str, str], workdir: Path) -> list[str]:
    defaults = {
        "file": str(world.files["events"]), "dir": str(workdir / "dir"), "url": "http://127.0.0.1:1",
        "key": world.files["public_key"].read_text().strip(), "text": "x",
    }
    words: list[str] = list(leaf.words)
    if leaf.option("--data-dir") is not None:
        words += ["--data-dir", str(workdir / "data")]
    if leaf.option("--port") is not None:
        words += ["--port", "0"]
    for action in leaf.arguments():
        value = values.get(kind(action), defaults[kind(action)])
        words += [action.option_strings[0], value] if action.option_strings else [value]
    return words


@dataclass(frozen=True)
class Outcome:
    command: str
    code: int | None
    stdout: str
    stderr: str


def run(words: list[str], *, closed_stdout: bool = False) -> Outcome:
    env = {**os.environ, **METRICS_ANY_PORT}
    proc = subprocess.Popen(
        [sys.executable, "-m", "liberation", *words], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )
    if closed_stdout:
        assert proc.stdout is not None
        proc.stdout.close()  # the reader left before the first line: `liberation ... | head -0`
    try:
        out, err = proc.communicate(timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        return Outcome(" ".join(words), None, (out or b"").decode(errors="replace"), err.decode(errors="replace"))
    return Outcome(" ".join(words), proc.returncode, (out or b"").decode(errors="replace"), err.decode(errors="replace"))


def problems(outcome: Outcome, *, must_fail: bool) -> list[str]:
    found = []
    text = outcome.stdout + outcome.stderr
    if "Traceback" in text or "Exception ignored" in text:
        found.append("a traceback reached the user")
    if outcome.code is None:
        found.append(f"still running after {TIMEOUT_SECONDS} s")
    elif outcome.code == 0:
        if must_fail:
            found.append("exit code 0")
    elif outcome.code != EXIT_PIPE:
        said = [line for line in outcome.stderr.splitlines() if not line.startswith("{")]  # a server's JSON log lines
        if len(said) != 1 or not said[0].startswith("liberation: "):
            found.append(f"exit code {outcome.code} without one `liberation: ` line: {said[:3]}")
    return [f"{outcome.command}: {p}\n    {outcome.stderr[-600:]}" for p in found]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("faults")
    node = Process(["node", "serve"], root / "node.log",
                   env={"LIBERATION_NODE_DATA_DIR": str(root / "node"), "LIBERATION_NODE_PORT": "0"})
    hub = Process(["hub", "serve"], root / "hub.log",
                  env={"LIBERATION_HUB_DATA_DIR": str(root / "hub"), "LIBERATION_HUB_PORT": "0"})
    taken = socket.socket()
    try:
        # Both hold their data dirs; without their sockets a command can reach them no way.
        (root / "node" / SOCKET_NAME).unlink()
        (root / "hub" / SOCKET_NAME).unlink()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        world = World(root, root / "node", root / "hub", node.url + "/missing", taken.getsockname()[1])
        world.files["events"] = world.path("events.jsonl", '{"app": "runway-calculator"}\n')
        keys = subprocess.run([sys.executable, "-m", "liberation", "keys", "generate", "--out", str(root / "k")],
                              capture_output=True, text=True, check=True)
        assert keys.returncode == 0
        shown = subprocess.run([sys.executable, "-m", "liberation", "keys", "show", str(root / "k")],
                               capture_output=True, text=True, check=True).stdout
        world.files["public_key"] = world.path("public.b64", shown.split("public key:")[1].split()[0])
        world.files["unreadable"] = world.path("unreadable.jsonl", "{}\n")
        os.chmod(world.files["unreadable"], 0)
        yield world
    finally:
        taken.close()
        node.stop()
        hub.stop()


def test_every_command_is_enumerated() -> None:
    """The tree is walked, not listed: these are a floor, a new command only adds to them."""
    names = {leaf.name for leaf in LEAVES}
    assert {"node serve", "node budget", "node import", "node export", "node push", "hub enroll", "hub nodes",
            "hub revoke", "hub import", "hub log verify", "keys show", "catalog show", "demo"} <= names
    assert all(leaf.parser.get_default("func") is not None for leaf in LEAVES)


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_no_command_shows_a_traceback_under(fault: Fault, world: World, tmp_path: Path) -> None:
    cases = []
    for i, leaf in enumerate(leaf for leaf in LEAVES if fault.applies(leaf)):
        words = argv(leaf, world, fault.values(world), tmp_path / str(i))
        cases.append(words + fault.options(leaf, world))  # later options win in argparse
    assert cases, f"{fault.name} applies to no command"
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(run, cases))
    found = [p for outcome in outcomes for p in problems(outcome, must_fail=fault.must_fail)]
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_no_command_shows_a_traceback_when_its_reader_leaves(world: World, tmp_path: Path) -> None:
    """`liberation ... | head`: the reader gone, a command stops quietly (every one that ends by itself)."""
    cases = [
        argv(leaf, world, {}, tmp_path / str(i)) for i, leaf in enumerate(LEAVES)
        if leaf.option("--port") is None and leaf.option("--hub-port") is None  # the servers run until stopped
    ]
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(lambda words: run(words, closed_stdout=True), cases))
    found = [p for outcome in outcomes for p in problems(outcome, must_fail=False)]
    assert not found, "\n".join(found)
    printed = [o for o in outcomes if o.command.startswith(("catalog show", "node budget", "hub nodes"))]
    assert len(printed) == 3 and all(o.code == EXIT_PIPE and o.stderr == "" for o in printed), printed
