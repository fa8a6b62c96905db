"""A service's Prometheus metrics: a registry of its own (no process-global state), every name under the
service's prefix, and what every service exposes besides: `<prefix>build_info`, the `process_*` and `python_*` ones.

And none of prometheus-client's `_created` series: a labelled counter's child is created by its first
increment, so `..._rejected_created{reason=...}` would expose the exact second an event was first
refused for that reason, an event's timestamp (the library's switch is process-wide, and idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
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


class ServiceMetrics:
    """The base of a service's metrics: declare them with `counter`, `histogram` and `gauge`; `render` serves them."""

    def __init__(self, prefix: str) -> None:
        """`prefix`: `liberation_node_`, `liberation_hub_`, `liberation_keeper_`: every name starts with it."""
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        register_standard_metrics(self.registry, prefix)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(self.prefix + name, documentation, labels, registry=self.registry)

    def histogram(self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> Histogram:
        return Histogram(self.prefix + name, documentation, labels, buckets=buckets, registry=self.registry)

    def gauge(self, name: str, documentation: str, value: Callable[[], float]) -> Gauge:
        """A gauge read from `value` at each scrape."""
        gauge = Gauge(self.prefix + name, documentation, registry=self.registry)
        gauge.set_function(value)
        return gauge

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
