"""The commands that set a node up for its sites and check a catalog: `node sites`, `catalog check`.

Parse and print only; the work is in node/sites.py and protocol/catalog.py.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from runtime.config import ConfigError


def _config_path(args: argparse.Namespace) -> Path:
    path = args.config or os.environ.get("LIBERATION_NODE_CONFIG")
    if not path:
        raise ConfigError("give --config FILE (or $LIBERATION_NODE_CONFIG): the settings file the node starts with")
    return Path(path)


def _event(text: str) -> tuple[str, str]:
    name, sep, action = text.partition("=")
    if not sep or not name or not action:
        raise argparse.ArgumentTypeError("give NAME=ACTION, e.g. pageview=start")
    return name, action


def _sites_add(args: argparse.Namespace) -> int:
    from node.sites import Site, add_site

    path = _config_path(args)
    site = Site(args.origin, args.app, args.plausible_domain, args.umami_website, dict(args.event))
    changes = add_site(path, site)
    if not changes:
        print(f"{path}: already set, nothing changed")
        return 0
    for line in changes:
        print(f"{path}: {line}")
    print("restart the node to apply: settings are read at start")
    return 0


def _sites_list(args: argparse.Namespace) -> int:
    from node.settings import load_node_settings
    from node.sites import describe_sites

    settings = load_node_settings(args.config or os.environ.get("LIBERATION_NODE_CONFIG"))
    for line in describe_sites(settings):
        print(line)
    return 0


def add_sites_commands(node: argparse._SubParsersAction[argparse.ArgumentParser],
                       node_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """`liberation node sites add|list`."""
    sites = node.add_parser("sites", help="the sites that send events to this node (origins, tracker mappings)")
    sub = sites.add_subparsers(dest="sites_command", required=True, metavar="SUBCOMMAND")
    add = sub.add_parser(
        "add",
        help="allow a site's origin, and map its Plausible domain or Umami website id to an app, in the settings file",
        description=(
            "Add ORIGIN to cors_origins and, with --app, map the site's Plausible domain (plausible.domains) "
            "or Umami website id (umami.websites) to that app, in the node's settings TOML: comments and "
            "other settings are kept, the file is replaced atomically with mode 0600. The node reads its "
            "settings at start: restart it to apply. Works whether or not the node runs."
        ),
    )
    node_options(add)
    add.add_argument("origin", metavar="ORIGIN", help="the site as browsers send it: https://tools.example.org")
    add.add_argument("--app", help="the catalog app the site's events belong to")
    add.add_argument("--plausible-domain", dest="plausible_domain", metavar="DOMAIN",
                     help="the domain Plausible's tracker sends (its data-domain, usually the site's host)")
    add.add_argument("--umami-website", dest="umami_website", metavar="ID",
                     help="the website id Umami's tracker sends (its data-website-id)")
    add.add_argument("--event", type=_event, action="append", default=[], metavar="NAME=ACTION",
                     help="map a tracker event name to a catalog action, e.g. pageview=start (repeatable)")
    add.set_defaults(func=_sites_add)
    show = sub.add_parser("list", help="the origins and tracker mappings the node's settings give")
    node_options(show)
    show.set_defaults(func=_sites_list)


def _catalog_check(args: argparse.Namespace) -> int:
    from liberation.catalogcheck import describe_catalog

    for line in describe_catalog(Path(args.file)):
        print(line)
    return 0


def add_catalog_check_command(catalog: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`liberation catalog check FILE`."""
    check = catalog.add_parser(
        "check",
        help="validate a catalog TOML and print its epsilon, noise scales, thresholds and hash (docs/catalog.md)",
    )
    check.add_argument("file", metavar="FILE", help="the catalog TOML to check (docs/catalog.md says how to write one)")
    check.set_defaults(func=_catalog_check)
