"""The keeper's Prometheus metrics, in a registry of its own (served on the operator's listener only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class KeeperMetrics:
    """Rounds answered, answers sent again, requests refused (one label value per check), answer latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.answered = Counter("liberation_keeper_rounds_answered", "Rounds answered (noise drawn once each)", registry=r)
        self.repeated = Counter(
            "liberation_keeper_answers_repeated", "Requests answered with the stored bytes of a round", registry=r
        )
        self.checked = Counter("liberation_keeper_rounds_checked", "Participant sets checked (nothing stored)", registry=r)
        self.refused = Counter("liberation_keeper_requests_refused", "Requests refused, by check", ["reason"], registry=r)
        self.answer_seconds = Histogram(
            "liberation_keeper_answer_seconds", "Checking, opening, noising and signing one round",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
