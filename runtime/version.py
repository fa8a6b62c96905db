"""The running version of Liberation Analytics: the installed distribution's, for `--version`, `/healthz` and metrics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "liberation-analytics"


def liberation_version() -> str:
    """The installed version, or "unknown" when run from a tree that was never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
