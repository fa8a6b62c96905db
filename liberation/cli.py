"""Parse the command line, build settings, hand over to node, hub or protocol. No logic here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protocol.errors import LiberationError

KEY_FILE = "signing.key"

Command = Callable[[argparse.Namespace], int]


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


def _print_public(public: object) -> None:
    from protocol.keys import PublicKey

    assert isinstance(public, PublicKey)
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
        f"window: {window}; epsilon per window {catalog.epsilon_per_window:g}, k_min {catalog.k_min}, "
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
    return 0


def _catalog_hash(args: argparse.Namespace) -> int:
    from protocol.catalog import load_catalog

    print(load_catalog(args.catalog).hash)
    return 0


def _settings(args: argparse.Namespace, load: Callable[..., Any], env_config: str) -> Any:
    """Settings of a service: its TOML (--config or $..._CONFIG), the environment, then flags."""
    overrides = {k: getattr(args, k, None) for k in ("host", "port", "data_dir")}
    return load(args.config or os.environ.get(env_config), **overrides)


def _node_settings(args: argparse.Namespace) -> Any:
    from node.settings import load_node_settings

    return _settings(args, load_node_settings, "LIBERATION_NODE_CONFIG")


def _node_serve(args: argparse.Namespace) -> int:
    from liberation.server import run_app
    from node.app import create_app
    from runtime.logs import configure_logging

    settings = _node_settings(args)
    configure_logging(settings.log_level)
    run_app(create_app(settings), settings.host, settings.port, "node", max_connections=settings.max_connections)
    return 0


def _node_key(args: argparse.Namespace) -> int:
    from node.app import data_paths
    from protocol.keys import load_or_create

    settings = _node_settings(args)
    _print_public(load_or_create(data_paths(settings)["key"]).public)
    return 0


def _node_import(args: argparse.Namespace) -> int:
    from node.app import close_node, open_node
    from node.importer import import_lines, progress_bar

    settings = _node_settings(args)
    node = open_node(settings)
    try:
        show = progress_bar(sys.stderr) if sys.stderr.isatty() and not args.quiet else None
        if args.file == "-":
            summary = import_lines(node, sys.stdin, progress=show)
        else:
            with open(args.file, encoding="utf-8") as lines:
                summary = import_lines(node, lines, progress=show)
    finally:
        close_node(node)
    if show is not None:
        print(file=sys.stderr)
    print(summary.render())
    return 0


def _node_export(args: argparse.Namespace) -> int:
    from node.app import close_node, open_node
    from protocol.windows import parse_window

    settings = _node_settings(args)
    node = open_node(settings)
    try:
        window = parse_window(args.window, node.catalog.window_seconds)
        envelope = node.publisher.export(window)
    finally:
        close_node(node)
    if args.out:
        Path(args.out).write_bytes(envelope)
        print(f"wrote {len(envelope)} bytes to {args.out}", file=sys.stderr)
    elif sys.stdout.isatty():
        print("liberation: the envelope is binary; give --out FILE or redirect stdout", file=sys.stderr)
        return 1
    else:
        sys.stdout.buffer.write(envelope)
    return 0


def _node_adopt(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from node.app import close_node, open_node

    envelope = Path(args.file).read_bytes()
    node = open_node(_node_settings(args))
    try:
        window = node.adopt(envelope)
    finally:
        close_node(node)
    print(
        f"adopted the published snapshot of {datetime.fromtimestamp(window, UTC):%Y-%m-%d %H:%M}Z: the same bytes, no new noise"
    )
    return 0


def _node_budget(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from node.app import close_node, open_node

    node = open_node(_node_settings(args))
    try:
        entries = node.publisher.ledger()
        missing = node.publisher.missing()
        cap = node.publisher.cap
    finally:
        close_node(node)
    print(f"epsilon cap per UTC day: {cap:g}")
    per_window: dict[int, float] = {}
    for entry in entries:
        per_window[entry.window_start] = per_window.get(entry.window_start, 0.0) + entry.epsilon
    notes = {}
    for lost in missing:  # published, the store lost the copy and its ledger rows: spent all the same
        if lost.window_start not in per_window:
            per_window[lost.window_start] = lost.epsilon
            notes[lost.window_start] = "  (copy missing: `liberation node adopt`)"
    if not per_window:
        print("no window exported yet: nothing spent")
    for window, spent in sorted(per_window.items()):
        print(f"  {datetime.fromtimestamp(window, UTC):%Y-%m-%d %H:%M}Z  epsilon {spent:.4f}{notes.get(window, '')}")
    if args.verbose:
        for entry in entries:
            print(f"    {entry.metric:20s} epsilon {entry.epsilon:.4f}  scale {entry.scale:8.2f}  threshold {entry.threshold}")
    return 0


def _hub_settings(args: argparse.Namespace) -> Any:
    from federation.settings import load_hub_settings

    return _settings(args, load_hub_settings, "LIBERATION_HUB_CONFIG")


def _hub_serve(args: argparse.Namespace) -> int:
    from federation.app import create_app
    from liberation.server import run_app
    from runtime.logs import configure_logging

    settings = _hub_settings(args)
    configure_logging(settings.log_level)
    run_app(create_app(settings), settings.host, settings.port, "hub", max_connections=settings.max_connections)
    return 0


def _open_hub(args: argparse.Namespace) -> Any:
    from federation.app import open_hub

    return open_hub(_hub_settings(args))


def _hub_enroll(args: argparse.Namespace) -> int:
    from protocol.keys import PublicKey

    text = Path(args.key).read_text() if Path(args.key).is_file() else args.key
    public_key = PublicKey.parse(text.strip())
    hub = _open_hub(args)
    try:
        known = any(r.key_id == public_key.key_id for r in hub.registry.nodes())
        record = hub.registry.enroll(args.name, public_key, "hub" if args.hub else "node")
    finally:
        hub.store.close()
    print(f"{'changed' if known else 'enrolled'} {record.name} ({record.kind}): key id {record.key_id}")
    return 0


def _hub_revoke(args: argparse.Namespace) -> int:
    hub = _open_hub(args)
    try:
        record = hub.registry.revoke(args.node)
    finally:
        hub.store.close()
    print(f"revoked {record.name}: key id {record.key_id}")
    return 0


def _hub_nodes(args: argparse.Namespace) -> int:
    hub = _open_hub(args)
    try:
        records = hub.registry.nodes()
    finally:
        hub.store.close()
    if not records:
        print("no node enrolled")
    for r in records:
        state = "active" if r.active else "revoked"
        print(f"{r.key_id}  {state:8s} {r.kind:5s} {r.name}")
    return 0


def _hub_import(args: argparse.Namespace) -> int:
    from protocol.errors import Problem

    hub = _open_hub(args)
    failures = 0
    try:
        for name in args.files:
            try:
                result = hub.intake.accept(Path(name).read_bytes())
                print(f"{name}: {result.status} (node {result.node}, window {result.window_start})")
            except Problem as problem:
                failures += 1
                print(f"{name}: refused ({problem.slug}): {problem.detail}")
    finally:
        hub.store.close()
    return 1 if failures else 0


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


def _service_options(parser: argparse.ArgumentParser, service: str) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"{service} settings TOML (or $LIBERATION_{service.upper()}_CONFIG)"
    )
    parser.add_argument("--data-dir", dest="data_dir", metavar="DIR", help=f"data directory (default ./data/{service})")


def _node_options(parser: argparse.ArgumentParser) -> None:
    _service_options(parser, "node")


def _hub_options(parser: argparse.ArgumentParser) -> None:
    _service_options(parser, "hub")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; each leaf sets `func`."""
    parser = argparse.ArgumentParser(
        prog="liberation",
        description="Privacy-first federated movement analytics: track the movement, never the individual.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", help="Ed25519 signing keys").add_subparsers(
        dest="keys_command", required=True, metavar="SUBCOMMAND"
    )
    gen = keys.add_parser("generate", help="generate a signing key in DIR (private key mode 0600)")
    gen.add_argument("--out", required=True, metavar="DIR")
    gen.set_defaults(func=_keys_generate)
    show = keys.add_parser("show", help="print the key id and public key of the key in DIR")
    show.add_argument("dir", metavar="DIR")
    show.set_defaults(func=_keys_show)

    catalog = sub.add_parser("catalog", help="the metric catalog").add_subparsers(
        dest="catalog_command", required=True, metavar="SUBCOMMAND"
    )
    cshow = catalog.add_parser("show", help="what the catalog collects and publishes")
    cshow.add_argument("--catalog", metavar="FILE", help="a catalog TOML file (default: built in)")
    cshow.add_argument("--json", action="store_true", help="print the canonical JSON form")
    cshow.set_defaults(func=_catalog_show)
    chash = catalog.add_parser("hash", help="the catalog's content hash")
    chash.add_argument("--catalog", metavar="FILE")
    chash.set_defaults(func=_catalog_hash)

    node = sub.add_parser("node", help="the community node").add_subparsers(
        dest="node_command", required=True, metavar="SUBCOMMAND"
    )
    serve = node.add_parser("serve", help="run the node's HTTP server")
    _node_options(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 8701)")
    serve.set_defaults(func=_node_serve)
    nkey = node.add_parser("key", help="print the node's key id and public key, for enrollment")
    _node_options(nkey)
    nkey.set_defaults(func=_node_key)
    nimport = node.add_parser("import", help="import historical events from a JSONL file (or -)")
    _node_options(nimport)
    nimport.add_argument("file", metavar="FILE")
    nimport.add_argument("--quiet", action="store_true", help="no progress bar")
    nimport.set_defaults(func=_node_import)

    nexport = node.add_parser("export", help="export a closed window: the signed envelope, for offline transfer")
    _node_options(nexport)
    nexport.add_argument("--window", required=True, help="2026-11-23 (or 2026-11-23T05 with hourly windows)")
    nexport.add_argument("--out", metavar="FILE", help="write the envelope here (default: stdout)")
    nexport.set_defaults(func=_node_export)
    nadopt = node.add_parser(
        "adopt", help="store again the lost copy of a window this node published (an envelope file it signed)"
    )
    _node_options(nadopt)
    nadopt.add_argument("file", metavar="FILE", help="the envelope, as `node export` or a hub's /v1/snapshots/KEY/WINDOW gave it")
    nadopt.set_defaults(func=_node_adopt)
    nbudget = node.add_parser("budget", help="print the privacy ledger: epsilon spent per window")
    _node_options(nbudget)
    nbudget.add_argument("--verbose", "-v", action="store_true", help="one line per metric")
    nbudget.set_defaults(func=_node_budget)

    hub = sub.add_parser("hub", help="the federation hub").add_subparsers(
        dest="hub_command", required=True, metavar="SUBCOMMAND"
    )
    hserve = hub.add_parser("serve", help="run the hub's HTTP server")
    _hub_options(hserve)
    hserve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    hserve.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default 8700)")
    hserve.set_defaults(func=_hub_serve)
    henroll = hub.add_parser("enroll", help="enroll a node's public key (hub stopped; else use the admin API)")
    _hub_options(henroll)
    henroll.add_argument("--name", required=True)
    henroll.add_argument("--key", required=True, metavar="BASE64|FILE", help="base64 or PEM, or a file holding either")
    henroll.add_argument("--hub", action="store_true", help="the key is a child hub's: its snapshots merge many nodes")
    henroll.set_defaults(func=_hub_enroll)
    hrevoke = hub.add_parser("revoke", help="revoke a node, by key id or name")
    _hub_options(hrevoke)
    hrevoke.add_argument("node", metavar="NODE")
    hrevoke.set_defaults(func=_hub_revoke)
    hnodes = hub.add_parser("nodes", help="list enrolled nodes")
    _hub_options(hnodes)
    hnodes.set_defaults(func=_hub_nodes)
    himport = hub.add_parser("import", help="import snapshot envelopes carried by hand (same checks as intake)")
    _hub_options(himport)
    himport.add_argument("files", nargs="+", metavar="FILE")
    himport.set_defaults(func=_hub_import)
    hlog = hub.add_parser("log", help="the transparency log").add_subparsers(
        dest="log_command", required=True, metavar="SUBCOMMAND"
    )
    hverify = hlog.add_parser(
        "verify",
        help="verify a hub's log: its head signed by the pinned hub key, its chain, and that it extends the last check",
        description=(
            "Fetch a hub's transparency log, check that its head is signed by the pinned hub key and that "
            "its entries chain up to that head. With --state, remember the head per hub key and require "
            "every later log to extend it (the same hash at the remembered entry, never shorter): the one "
            "check that catches a rewritten log. With --node, check that each snapshot the node lists is "
            "in the log once, with the epsilon its ledger recorded. Any failure: one line, exit code 1."
        ),
    )
    hverify.add_argument("url", metavar="URL", help="the hub's base URL")
    hverify.add_argument(
        "--key", metavar="BASE64|FILE",
        help="required: the hub's public key (base64 or PEM, or a file of it), obtained apart from the hub's answers",
    )
    hverify.add_argument("--state", metavar="FILE", help="remember the last verified head here (mode 0600), per hub key")
    hverify.add_argument(
        "--node", metavar="URL", action="append", default=[],
        help="a node whose published snapshots must each be in the log once, with its ledger's epsilon (repeatable)",
    )
    hverify.add_argument("--page-size", dest="page_size", type=int, default=1000, metavar="N",
                         help="log entries fetched per request (default 1000)")
    hverify.set_defaults(func=_hub_log_verify)

    demo = sub.add_parser("demo", help="run a demo federation: a hub, three nodes, a month of traffic")
    demo.add_argument("--data-dir", dest="data_dir", default="data/demo", metavar="DIR")
    demo.add_argument("--days", type=int, default=30, help="days of history (default 30)")
    demo.add_argument("--keep", action="store_true", help="keep an existing demo data dir instead of starting afresh")
    demo.add_argument("--import", dest="source", metavar="DIR",
                      help="a federation of your own history: one node per <community>.jsonl in DIR (node import's "
                           "format), every closed window published and merged; no synthetic communities, no trickle")
    demo.add_argument("--hub-port", dest="hub_port", type=int, default=8700,
                      help="with --import: the hub's port (default 8700; 0 picks a free one)")
    demo.add_argument("--catalog", metavar="FILE",
                      help="the federation's catalog TOML for the hub and every node (e.g. one with "
                           'window = "week"); default: the built-in catalog')
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `liberation` console script."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    # What a command creates is for its user only (the systemd units say UMask=0077 too). Our
    # own files get explicit modes; DuckDB makes its WAL (again after every checkpoint) and
    # spill files with the umask's.
    os.umask(os.umask(0o077) | 0o077)
    try:
        return func(args)
    except LiberationError as exc:
        print(f"liberation: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
