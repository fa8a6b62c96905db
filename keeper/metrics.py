"""The keeper's Prometheus metrics, served on the operator's listener only (runtime/standard_metrics.py: the base)."""

from __future__ import annotations

from runtime.standard_metrics import ServiceMetrics

PREFIX = "liberation_keeper_"
"""Every metric of a share keeper starts with it."""


class KeeperMetrics(ServiceMetrics):
    """Rounds answered, answers sent again, requests refused (one label value per check), answer latency."""

    def __init__(self) -> None:
        super().__init__(PREFIX)
        self.answered = self.counter("rounds_answered", "Rounds answered (noise drawn once each)")
        self.repeated = self.counter("answers_repeated", "Requests answered with the stored bytes of a round")
        self.checked = self.counter("rounds_checked", "Participant sets checked (nothing stored)")
        self.refused = self.counter("requests_refused", "Requests refused, by check", ["reason"])
        self.answer_seconds = self.histogram(
            "answer_seconds", "Checking, opening, noising and signing one round", (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        )
