"""Metrics every service exposes besides its own: `<prefix>build_info` and the standard `process_*`, `python_*` ones.

And none of prometheus-client's `_created` series: a labelled counter's child is created by its first
increment, so `..._rejected_created{reason=...}` would expose the exact second an event was first
refused for that reason, an event's timestamp (the library's switch is process-wide, and idempotent).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, disable_created_metrics
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from runtime.version import liberation_version


def no_created_series() -> None:
    """Call before creating counters or histograms: no `_created` timestamps (see the module's docstring)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]


def register_standard_metrics(registry: CollectorRegistry, prefix: str) -> None:
    """Add the build info (`<prefix>build_info{version}` 1) and the process, platform and GC collectors."""
    no_created_series()
    Gauge(f"{prefix}build_info", "The running version (value 1)", ["version"], registry=registry).labels(
        liberation_version()
    ).set(1)
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...
    PlatformCollector(registry=registry)  # python_info
    GCCollector(registry=registry)  # python_gc_*
