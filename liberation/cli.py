"""Parse the command line, build settings, hand over to node, hub or protocol, print. No logic here.

A command on a service's data (`node budget`, `hub enroll`, ...) runs through the service's admin
socket when it runs, and on its files when it does not (runtime/admin.py picks); the operation
itself lives in node/admin.py or federation/admin.py. Every error reaches the user as one line
on stderr and a non-zero exit code (`main`), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from liberation.setup_cli import add_catalog_check_command, add_sites_commands
from protocol.errors import LiberationError

if TYPE_CHECKING:
    from aiohttp import web

    from federation.service import Hub
    from federation.settings import HubSettings
    from keeper.app import Keeper
    from node.service import Node
    from node.settings import NodeSettings
    from protocol.keys import PublicKey
    from runtime.admin import Channel
    from runtime.config import ServerSettings

KEY_FILE = "signing.key"
EXIT_ERROR = 1
EXIT_BUG = 70  # EX_SOFTWARE: an error the program did not expect
EXIT_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer whose reader left
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace], int]
T = TypeVar("T")
S = TypeVar("S", bound="ServerSettings")

RUNS_WHILE_SERVING = "Runs whether or not the service runs: through its admin socket if it does, on its files if not."


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _print_lines(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)


# ---- keys, catalog ------------------------------------------------------------------------


def _keys_generate(args: argparse.Namespace) -> int:
    from protocol.keys import SigningKey

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    key.save(out / KEY_FILE)
    print(f"key id: {key.public.key_id}")
    print(f"private key: {out / KEY_FILE} (mode 0600)")
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from protocol.keys import SigningKey

    path = Path(args.dir)
    key = SigningKey.load(path / KEY_FILE if path.is_dir() else path)
    _print_public(key.public)
    return 0


def _print_public(public: PublicKey) -> None:
    print(f"key id:     {public.key_id}")
    print(f"public key: {public.b64}")
    print(public.pem.rstrip())


def _catalog_show(args: argparse.Namespace) -> int:
    from protocol.catalog import load_catalog
    from views.significance import presence_threshold

    catalog = load_catalog(args.catalog)
    if args.json:
        print(catalog.canonical_json.decode())
        return 0
    print(f"catalog {catalog.name} v{catalog.version}  hash {catalog.hash}")
    window = "one UTC day" if catalog.window == "day" else "one ISO week (from Monday 00:00 UTC)"
    print(
        f"window: {window}; epsilon per window {catalog.epsilon_per_window:g} (community snapshot {catalog.epsilon_community:g}, "
        f"federation round {catalog.epsilon_federation:g}), k_min {catalog.k_min}, "
        f"at most {catalog.max_events_per_session} events per session, "
        f"raw rows kept {catalog.retention_days} days after export"
    )
    print("\napps:")
    for name, app in catalog.apps.items():
        print(f"  {name:28s} actions: {', '.join(app.actions)}")
        if app.attributes:
            print(f"  {'':28s} attributes: {', '.join(app.attributes)}")
    print("\nattributes:")
    for name, spec in catalog.attributes.items():
        print(f"  {name:20s} {spec.kind.value:8s} {', '.join(spec.domain)}")
    print("\nmetrics:")
    # epsilon: derived from the weights (protocol/catalog.py, epsilon_shares); `shown`: the least
    # value a cell of one snapshot is shown from (views/significance.py).
    print(f"  {'name':20s} {'unit':8s} {'cells':>6s} {'k*c':>4s} {'weight':>7s} {'epsilon':>8s} {'scale':>7s} "
          f"{'sd':>7s} {'shown':>6s}")
    for m in catalog.metrics:
        shown = presence_threshold(catalog, m, catalog.variance(m))
        print(
            f"  {m.name:20s} {m.unit.value:8s} {catalog.domain_size(m):6d} {m.sensitivity:4d} {m.weight:7g} "
            f"{catalog.epsilon(m):8.4f} {catalog.scale(m):7.2f} {catalog.variance(m) ** 0.5:7.1f} {shown:6d}"
        )
    if catalog.federation is not None:
        from protocol.noise import laplace_variance

        print(f"\nfederation rounds (at least {catalog.federation.min_nodes} nodes; each keeper adds one draw of `scale`):")
        print(f"  {'name':20s} {'epsilon':>8s} {'scale':>7s} {'shown (2 keepers)':>18s}")
        for m in catalog.federation_metrics:
            scale = catalog.federation_scale(m)
            shown = presence_threshold(catalog, m, 2 * laplace_variance(scale), scale)
            print(f"  {m.name:20s} {catalog.federation_epsilon(m):8.3f} {scale:7.1f} {shown:18d}")
    return 0


def _catalog_hash(args: argparse.Namespace) -> int:
    from protocol.catalog import load_catalog

    print(load_catalog(args.catalog).hash)
    return 0


# ---- settings and channels -------------------------------------------------------------------


def _settings(args: argparse.Namespace, load: Callable[..., T], env_config: str) -> T:
    """Settings of a service: its TOML (--config or $..._CONFIG), the environment, then flags."""
    overrides = {k: getattr(args, k, None) for k in ("host", "port", "data_dir")}
    return load(args.config or os.environ.get(env_config), **overrides)


def _node_settings(args: argparse.Namespace) -> NodeSettings:
    from node.settings import load_node_settings

    return _settings(args, load_node_settings, "LIBERATION_NODE_CONFIG")


def _hub_settings(args: argparse.Namespace) -> HubSettings:
    from federation.settings import load_hub_settings

    return _settings(args, load_hub_settings, "LIBERATION_HUB_CONFIG")


def _serve(settings: S, create_app: Callable[[S], web.Application], service: str) -> int:
    """Run a service's app in the foreground until it is stopped (SIGINT, SIGTERM)."""
    from liberation.server import run_app
    from runtime.logs import configure_logging

    configure_logging(settings.log_level)
    run_app(create_app(settings), settings.host, settings.port, service, max_connections=settings.max_connections)
    return 0


def _node_channel(args: argparse.Namespace) -> AbstractAsyncContextManager[Channel[Node]]:
    """The running node's socket, or the node's files opened here."""
    from node.service import offline_node
    from runtime.admin import open_channel

    settings = _node_settings(args)
    return open_channel("node", settings.data_dir, lambda: offline_node(settings))


def _hub_channel(args: argparse.Namespace) -> AbstractAsyncContextManager[Channel[Hub]]:
    """The running hub's socket, or the hub's files opened here."""
    from federation.service import close_hub, open_hub
    from runtime.admin import offline, open_channel

    settings = _hub_settings(args)
    return open_channel("hub", settings.data_dir, lambda: offline(lambda: open_hub(settings), close_hub))


# ---- node -----------------------------------------------------------------------------------


def _node_serve(args: argparse.Namespace) -> int:
    from node.app import create_app

    return _serve(_node_settings(args), create_app, "node")


def _node_key(args: argparse.Namespace) -> int:
    from node.service import data_paths
    from protocol.keys import load_or_create

    _print_public(load_or_create(data_paths(_node_settings(args))["key"]).public)
    return 0


def _batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(lines)
    while batch := list(islice(iterator, size)):
        yield batch


@asynccontextmanager
async def _lines(name: str) -> AsyncIterator[Iterable[str]]:
    if name == "-":
        yield sys.stdin
        return
    with open(name, encoding="utf-8", errors="replace") as lines:  # a bad byte: that line is malformed JSON
        yield lines


def _node_import(args: argparse.Namespace) -> int:
    from node.admin import IMPORT, ImportParams
    from node.importer import BATCH_LINES, ImportSummary, progress_bar

    show = progress_bar(sys.stderr) if sys.stderr.isatty() and not args.quiet else None

    async def run() -> ImportSummary:
        total = ImportSummary()
        async with _lines(args.file) as lines, _node_channel(args) as node:
            for batch in _batches(lines, BATCH_LINES):
                total.add(await node.call(IMPORT, ImportParams(lines=batch)))
                if show is not None:
                    show(total)
        return total

    summary = _run(run())
    if show is not None:
        print(file=sys.stderr)
    print(summary.render())
    return 0


def _node_export(args: argparse.Namespace) -> int:
    from node.admin import EXPORT, ExportParams

    if not args.out and sys.stdout.isatty():
        print("liberation: the envelope is binary; give --out FILE or redirect stdout", file=sys.stderr)
        return EXIT_ERROR

    async def run() -> bytes:
        async with _node_channel(args) as node:
            return (await node.call(EXPORT, ExportParams(window=args.window))).envelope

    envelope = _run(run())
    if args.out:
        Path(args.out).write_bytes(envelope)
        print(f"wrote {len(envelope)} bytes to {args.out}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(envelope)
    return 0


def _node_adopt(args: argparse.Namespace) -> int:
    from node.admin import ADOPT, AdoptParams

    envelope = Path(args.file).read_bytes()

    async def run() -> str:
        async with _node_channel(args) as node:
            return (await node.call(ADOPT, AdoptParams(envelope=envelope))).render()

    print(_run(run()))
    return 0


def _node_budget(args: argparse.Namespace) -> int:
    from node.admin import BUDGET, NoParams

    async def run() -> list[str]:
        async with _node_channel(args) as node:
            return (await node.call(BUDGET, NoParams())).render(verbose=args.verbose)

    _print_lines(_run(run()))
    return 0


def _node_push(args: argparse.Namespace) -> int:
    from node.admin import PUSH, PushParams

    async def run() -> list[str]:
        async with _node_channel(args) as node:
            return (await node.call(PUSH, PushParams(retry=args.retry))).render()

    _print_lines(_run(run()))
    return 0


# ---- share keeper ---------------------------------------------------------------------------


def _keeper_settings(args: argparse.Namespace) -> Any:
    from keeper.settings import load_keeper_settings

    return _settings(args, load_keeper_settings, "LIBERATION_KEEPER_CONFIG")


def _keeper_serve(args: argparse.Namespace) -> int:
    from keeper.app import create_app

    return _serve(_keeper_settings(args), create_app, "keeper")


def _keeper_key(args: argparse.Namespace) -> int:
    import base64

    from keeper.identity import load_or_create_identity

    statement = load_or_create_identity(_keeper_settings(args).data_dir).statement
    _print_public(statement.identity)
    print(f"sealing key (X25519): {base64.b64encode(statement.hpke).decode()}")
    print(f"its signature:        {base64.b64encode(statement.signature).decode()}")
    return 0


def _keeper_channel(args: argparse.Namespace) -> AbstractAsyncContextManager[Channel[Keeper]]:
    """The running keeper's socket, or the keeper's files opened here."""
    from keeper.app import close_keeper, open_keeper
    from runtime.admin import offline, open_channel

    settings = _keeper_settings(args)
    return open_channel("keeper", settings.data_dir, lambda: offline(lambda: open_keeper(settings), close_keeper))


def _keeper_enroll(args: argparse.Namespace) -> int:
    from keeper.admin import ENROLL, EnrollParams

    params = EnrollParams(name=args.name, public_key=_key_text(args.key))

    async def run() -> str:
        async with _keeper_channel(args) as keeper:
            return (await keeper.call(ENROLL, params)).render()

    print(_run(run()))
    return 0


def _keeper_revoke(args: argparse.Namespace) -> int:
    from keeper.admin import REVOKE
    from runtime.enrollment import RevokeParams

    async def run() -> str:
        async with _keeper_channel(args) as keeper:
            return (await keeper.call(REVOKE, RevokeParams(node=args.node))).render()

    print(_run(run()))
    return 0


def _keeper_nodes(args: argparse.Namespace) -> int:
    from keeper.admin import NODES
    from runtime.enrollment import NoParams

    async def run() -> list[str]:
        async with _keeper_channel(args) as keeper:
            return (await keeper.call(NODES, NoParams())).render()

    _print_lines(_run(run()))
    return 0


# ---- hub ------------------------------------------------------------------------------------


def _hub_serve(args: argparse.Namespace) -> int:
    from federation.app import create_app

    return _serve(_hub_settings(args), create_app, "hub")


def _key_text(arg: str) -> str:
    """A key given as text, or the file holding it."""
    try:
        is_file = Path(arg).is_file()
    except (OSError, ValueError):  # a name too long, a NUL: not a file name, so key text
        is_file = False
    return Path(arg).read_text(encoding="utf-8") if is_file else arg


def _hub_enroll(args: argparse.Namespace) -> int:
    from federation.admin import ENROLL, EnrollParams

    if args.hub and args.keeper:
        raise LiberationError("a key is a child hub's (--hub) or a share keeper's (--keeper URL), not both")
    kind = "hub" if args.hub else "keeper" if args.keeper else "node"
    params = EnrollParams(name=args.name, public_key=_key_text(args.key), kind=kind, url=args.keeper)

    async def run() -> str:
        async with _hub_channel(args) as hub:
            return (await hub.call(ENROLL, params)).render()

    print(_run(run()))
    return 0


def _hub_revoke(args: argparse.Namespace) -> int:
    from federation.admin import REVOKE
    from runtime.enrollment import RevokeParams

    async def run() -> str:
        async with _hub_channel(args) as hub:
            return (await hub.call(REVOKE, RevokeParams(node=args.node))).render()

    print(_run(run()))
    return 0


def _hub_nodes(args: argparse.Namespace) -> int:
    from federation.admin import NODES
    from runtime.enrollment import NoParams

    async def run() -> list[str]:
        async with _hub_channel(args) as hub:
            return (await hub.call(NODES, NoParams())).render()

    _print_lines(_run(run()))
    return 0


def _hub_import(args: argparse.Namespace) -> int:
    from federation.admin import IMPORT, ImportParams
    from runtime.admin import Refused

    envelopes = [(name, Path(name).read_bytes()) for name in args.files]

    async def run() -> int:
        failures = 0
        async with _hub_channel(args) as hub:
            for name, envelope in envelopes:
                try:
                    print((await hub.call(IMPORT, ImportParams(envelope=envelope))).render(name))
                except Refused as refused:
                    failures += 1
                    print(f"{name}: refused ({refused.slug}): {refused.detail}")
        return failures

    return EXIT_ERROR if _run(run()) else 0


def _hub_log_verify(args: argparse.Namespace) -> int:
    from liberation.logaudit import audit_hub_log

    state = Path(args.state) if args.state else None
    for line in audit_hub_log(args.url, args.key, state_path=state, nodes=args.node, page_size=args.page_size):
        print(line)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from liberation.demo import run_demo, run_import_demo

    catalog = Path(args.catalog).resolve() if args.catalog else None
    if args.source is not None:
        return run_import_demo(Path(args.data_dir), Path(args.source), hub_port=args.hub_port, catalog=catalog)
    return run_demo(Path(args.data_dir), days=args.days, fresh=not args.keep, catalog=catalog)


# ---- the command tree -------------------------------------------------------------------------


def _service_options(parser: argparse.ArgumentParser, service: str) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"the {service}'s settings TOML (default: $LIBERATION_{service.upper()}_CONFIG, "
        "else defaults and the environment)",
    )
    parser.add_argument(
        "--data-dir", dest="data_dir", metavar="DIR",
        help=f"the {service}'s data directory (default: the settings' data_dir, ./data/{service})",
    )


def _node_options(parser: argparse.ArgumentParser) -> None:
    _service_options(parser, "node")


def _hub_options(parser: argparse.ArgumentParser) -> None:
    _service_options(parser, "hub")


def _keeper_options(parser: argparse.ArgumentParser) -> None:
    _service_options(parser, "keeper")


def _serve_options(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help=f"port to bind; 0 picks a free one, logged as `url` (default {port})")


def _leaf(
    parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, func: Command, help_text: str,
    *, description: str | None = None, while_serving: bool = False,
) -> argparse.ArgumentParser:
    text = description or help_text[:1].upper() + help_text[1:] + "."
    parser = parent.add_parser(
        name, help=help_text, description=f"{text} {RUNS_WHILE_SERVING}" if while_serving else text,
    )
    parser.set_defaults(func=func)
    return parser


def _version() -> str:
    from runtime.version import liberation_version

    return f"liberation {liberation_version()}"


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each leaf sets `func`."""
    parser = argparse.ArgumentParser(
        prog="liberation",
        description="Privacy-first federated movement analytics: track the movement, never the individual.",
    )
    parser.add_argument("--version", action="version", version=_version(), help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", help="Ed25519 signing keys").add_subparsers(
        dest="keys_command", required=True, metavar="SUBCOMMAND"
    )
    gen = _leaf(keys, "generate", _keys_generate, "generate a signing key in DIR (private key mode 0600)")
    gen.add_argument("--out", required=True, metavar="DIR", help="directory to write signing.key into (made if missing)")
    show = _leaf(keys, "show", _keys_show, "print the key id and public key of the key in DIR")
    show.add_argument("dir", metavar="DIR", help="a directory holding signing.key, or the key file itself")

    catalog = sub.add_parser("catalog", help="the metric catalog").add_subparsers(
        dest="catalog_command", required=True, metavar="SUBCOMMAND"
    )
    cshow = _leaf(catalog, "show", _catalog_show, "what the catalog collects and publishes, with epsilon and noise scales")
    cshow.add_argument("--catalog", metavar="FILE", help="a catalog TOML file (default: the built-in catalog)")
    cshow.add_argument("--json", action="store_true", help="print the canonical JSON form (what the hash is taken of)")
    chash = _leaf(catalog, "hash", _catalog_hash, "the catalog's content hash")
    chash.add_argument("--catalog", metavar="FILE", help="a catalog TOML file (default: the built-in catalog)")
    add_catalog_check_command(catalog)

    node = sub.add_parser("node", help="the community node").add_subparsers(
        dest="node_command", required=True, metavar="SUBCOMMAND"
    )
    serve = _leaf(node, "serve", _node_serve, "run the node: HTTP server, exporter, pusher, admin socket")
    _node_options(serve)
    _serve_options(serve, 8701)
    nkey = _leaf(node, "key", _node_key, "print the node's key id and public key, for enrollment at a hub",
                 description="Print the node's key id and public key (base64 and PEM), for enrollment at a hub; "
                             "the key is made on first use. Runs whether or not the node runs.")
    _node_options(nkey)
    nimport = _leaf(node, "import", _node_import, "import historical events from a JSONL file (or -) through the filter",
                    description="Import historical events, one JSON event per line, through the node's privacy "
                                "filter and writer (the live ingest path). Windows already exported or closed for "
                                "export refuse their events (window-closed).", while_serving=True)
    _node_options(nimport)
    nimport.add_argument("file", metavar="FILE", help="a JSONL file of events, or - for standard input")
    nimport.add_argument("--quiet", action="store_true", help="no progress line on a terminal")
    nexport = _leaf(node, "export", _node_export, "the signed envelope of a closed window, for offline transfer",
                    description="Write the signed envelope of a closed window, exporting it now if the node has not "
                                "yet (the same bytes every time after).", while_serving=True)
    _node_options(nexport)
    nexport.add_argument("--window", required=True,
                         help="the window's start: 2026-11-23, 2026-11-23T05 (hourly windows) or unix seconds")
    nexport.add_argument("--out", metavar="FILE", help="write the envelope here (default: standard output, not a terminal)")
    nadopt = _leaf(node, "adopt", _node_adopt,
                   "store again the lost copy of a window this node published (an envelope file it signed)",
                   while_serving=True)
    _node_options(nadopt)
    nadopt.add_argument("file", metavar="FILE", help="the envelope, as `node export` or a hub's /v1/snapshots/KEY/WINDOW gave it")
    nbudget = _leaf(node, "budget", _node_budget, "print the privacy ledger: epsilon spent per window, and the cap",
                    while_serving=True)
    _node_options(nbudget)
    nbudget.add_argument("--verbose", "-v", action="store_true", help="one line per metric: epsilon, scale, threshold")
    npush = _leaf(node, "push", _node_push, "send the snapshots waiting for the hub now, backoff or not",
                  description="Send every snapshot waiting in the outbox to push.hub_url now, whatever its backoff "
                              "(after the hub enrolled this node, say), and print what the hub answered.",
                  while_serving=True)
    _node_options(npush)
    npush.add_argument("--retry", action="store_true", help="also send again the snapshots the hub refused")
    add_sites_commands(node, _node_options)

    hub = sub.add_parser("hub", help="the federation hub").add_subparsers(
        dest="hub_command", required=True, metavar="SUBCOMMAND"
    )
    hserve = _leaf(hub, "serve", _hub_serve, "run the hub: HTTP server (intake, views, admin API), admin socket")
    _hub_options(hserve)
    _serve_options(hserve, 8700)
    henroll = _leaf(hub, "enroll", _hub_enroll, "enroll a node's public key", while_serving=True)
    _hub_options(henroll)
    henroll.add_argument("--name", required=True,
                         help="a unique name for the node: 1-64 letters, digits, space, dot, dash or underscore")
    henroll.add_argument("--key", required=True, metavar="BASE64|FILE",
                         help="the node's public key (`liberation node key`): base64 or PEM, or a file holding either")
    henroll.add_argument("--hub", action="store_true", help="the key is a child hub's: its snapshots merge many nodes")
    henroll.add_argument("--keeper", metavar="URL",
                         help="the key is a share keeper's, answering at URL (its statement is fetched and checked there)")
    hrevoke = _leaf(hub, "revoke", _hub_revoke, "revoke a node: its later snapshots are refused", while_serving=True)
    _hub_options(hrevoke)
    hrevoke.add_argument("node", metavar="NODE", help="the node's key id (32 hex characters) or its enrolled name")
    hnodes = _leaf(hub, "nodes", _hub_nodes, "list enrolled nodes: key id, state, kind, name", while_serving=True)
    _hub_options(hnodes)
    himport = _leaf(hub, "import", _hub_import, "import snapshot envelopes carried by hand (same checks as intake)",
                    while_serving=True)
    _hub_options(himport)
    himport.add_argument("files", nargs="+", metavar="FILE", help="envelope files, as `liberation node export` wrote them")
    hlog = hub.add_parser("log", help="the transparency log").add_subparsers(
        dest="log_command", required=True, metavar="SUBCOMMAND"
    )
    hverify = _leaf(
        hlog, "verify", _hub_log_verify,
        "verify a hub's log: its head signed by the pinned hub key, its chain, and that it extends the last check",
        description=(
            "Fetch a hub's transparency log, check that its head is signed by the pinned hub key and that "
            "its entries chain up to that head. With --state, remember the head per hub key and require "
            "every later log to extend it (the same hash at the remembered entry, never shorter): the one "
            "check that catches a rewritten log. With --node, check that each snapshot the node lists is "
            "in the log once, with the epsilon its ledger recorded. Any failure: one line, exit code 1."
        ),
    )
    hverify.add_argument("url", metavar="URL", help="the hub's base URL, with its scheme: https://hub.example.org")
    hverify.add_argument(
        "--key", metavar="BASE64|FILE",
        help="required: the hub's public key (base64 or PEM, or a file of it), obtained apart from the hub's answers",
    )
    hverify.add_argument("--state", metavar="FILE", help="remember the last verified head here (mode 0600), per hub key")
    hverify.add_argument(
        "--node", metavar="URL", action="append", default=[],
        help="a node's base URL whose published snapshots must each be in the log once, with its ledger's epsilon "
             "(repeatable)",
    )
    hverify.add_argument("--page-size", dest="page_size", type=int, default=1000, metavar="N",
                         help="log entries fetched per request (default 1000)")

    keeper = sub.add_parser("keeper", help="a share keeper of federation rounds").add_subparsers(
        dest="keeper_command", required=True, metavar="SUBCOMMAND"
    )
    kserve = _leaf(keeper, "serve", _keeper_serve, "run the keeper: its HTTP server (rounds, admin API)")
    _keeper_options(kserve)
    _serve_options(kserve, 8710)
    kkey = _leaf(keeper, "key", _keeper_key, "print the keeper's key id, public key and signed sealing key")
    _keeper_options(kkey)
    kenroll = _leaf(keeper, "enroll", _keeper_enroll, "enroll a node whose contributions this keeper opens seeds for",
                    while_serving=True)
    _keeper_options(kenroll)
    kenroll.add_argument("--name", required=True, help="a unique name for the node")
    kenroll.add_argument("--key", required=True, metavar="BASE64|FILE", help="the node's public key, or a file holding it")
    krevoke = _leaf(keeper, "revoke", _keeper_revoke, "revoke a node, by key id or name", while_serving=True)
    _keeper_options(krevoke)
    krevoke.add_argument("node", metavar="NODE", help="the node's key id or its enrolled name")
    knodes = _leaf(keeper, "nodes", _keeper_nodes, "list the nodes enrolled at this keeper", while_serving=True)
    _keeper_options(knodes)

    demo = _leaf(sub, "demo", _demo, "run a demo federation: a hub, two share keepers, three nodes, two weeks of traffic")
    demo.add_argument("--data-dir", dest="data_dir", default="data/demo", metavar="DIR",
                      help="where the demo's data and logs go (default data/demo, recreated unless --keep)")
    demo.add_argument("--days", type=int, default=14, help="days of history (default 14)")
    demo.add_argument("--keep", action="store_true", help="keep an existing demo data dir instead of starting afresh")
    demo.add_argument("--import", dest="source", metavar="DIR",
                      help="a federation of your own history: one node per <community>.jsonl in DIR (node import's "
                           "format), every closed window published and merged; no synthetic communities, no trickle")
    demo.add_argument("--hub-port", dest="hub_port", type=int, default=8700,
                      help="with --import: the hub's port (default 8700; 0 picks a free one)")
    demo.add_argument("--catalog", metavar="FILE",
                      help="the federation's catalog TOML for the hub and every node (e.g. one with "
                           'window = "week"); default: the built-in catalog')
    return parser


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or type(exc).__name__}"


def _quiet_stdout() -> None:
    """The reader of stdout left (`| head`): what is still buffered goes nowhere, without a second error at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `liberation` console script: one line on stderr and a non-zero code for any error."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    # What a command creates is for its user only (the systemd units say UMask=0077 too). Our
    # own files get explicit modes; DuckDB makes its WAL (again after every checkpoint) and
    # spill files with the umask's.
    os.umask(os.umask(0o077) | 0o077)
    try:
        code = func(args)
        sys.stdout.flush()  # here, not at exit: a reader that left is a BrokenPipeError we can handle
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_PIPE
    except LiberationError as exc:
        print(f"liberation: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"liberation: {_os_error(exc)}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the one boundary: a user sees a line, never a traceback
        said = (str(exc).splitlines() or [""])[0][:200]
        print(f"liberation: unexpected error ({type(exc).__name__}: {said}); please report it", file=sys.stderr)
        return EXIT_BUG
    return EXIT_ERROR
