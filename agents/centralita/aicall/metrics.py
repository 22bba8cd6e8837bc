"""The AI call agent's Prometheus metrics."""

from __future__ import annotations

from centralita.metrics import Registry

LATENCY_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
TOOL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0)


class AicallMetrics:
    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        r = self.registry
        self.active_calls = r.gauge("centralita_aicall_active_calls", "AI calls in progress")
        self.calls = r.counter("centralita_aicall_calls_total", "Finished AI calls by end reason", ["reason"])
        self.tool_seconds = r.histogram(
            "centralita_aicall_tool_duration_seconds", "Tool call duration", ["tool", "outcome"], TOOL_BUCKETS
        )
        self.first_audio = r.histogram(
            "centralita_aicall_first_audio_latency_seconds",
            "Caller stops speaking to first assistant audio sent to the caller",
            buckets=LATENCY_BUCKETS,
        )
        self.realtime_errors = r.counter(
            "centralita_aicall_realtime_errors_total", "Error events from the model provider", ["code"]
        )
        self.reconnects = r.counter(
            "centralita_aicall_realtime_reconnects_total", "Model socket reconnects after a drop", ["outcome"]
        )
        self.barge_ins = r.counter("centralita_aicall_barge_ins_total", "Replies cut by the caller speaking")
        self.ari_reconnects = r.counter("centralita_aicall_ari_reconnects_total", "ARI events websocket reconnects")
        self.records_spooled = r.counter(
            "centralita_aicall_records_spooled_total", "Call records kept on disk because the database was away"
        )
