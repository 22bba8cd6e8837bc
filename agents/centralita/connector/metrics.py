"""The connector's Prometheus metrics: seed 003's names, plus spool and recording health."""

from __future__ import annotations

from dataclasses import dataclass

from centralita.metrics import Counter, Gauge, Histogram, Registry


@dataclass
class ConnectorMetrics:
    registry: Registry
    ami_connection_status: Gauge
    ami_reconnects: Counter
    cdrs_processed: Counter
    cdrs_sent: Counter
    cdrs_failed: Counter
    cdrs_dead_lettered: Counter
    cdrs_backfilled: Counter
    cdrs_invalid: Counter
    api_request_duration: Histogram
    cdr_filtered: Counter
    cdr_queue_depth: Gauge
    spool_depth: Gauge
    spool_oldest_age: Gauge
    spool_dead: Gauge
    recordings_uploaded: Counter
    recordings_failed: Counter
    recordings_skipped: Counter

    @classmethod
    def create(cls, registry: Registry | None = None) -> ConnectorMetrics:
        r = registry or Registry()
        return cls(
            registry=r,
            ami_connection_status=r.gauge("ami_connection_status", "1 while logged in to AMI, else 0"),
            ami_reconnects=r.counter("ami_connections_total", "AMI logins since start (1 + reconnects)"),
            cdrs_processed=r.counter("cdrs_processed_total", "CDRs received and committed to the spool"),
            cdrs_sent=r.counter("cdrs_sent_total", "CDRs delivered, by sink", ["sink"]),
            cdrs_failed=r.counter(
                "cdrs_failed_total", "CDR delivery attempts that failed (retried), by sink", ["sink"]
            ),
            cdrs_dead_lettered=r.counter(
                "cdrs_dead_lettered_total", "CDRs the receiver refused for good (kept in the spool)", ["sink"]
            ),
            cdrs_backfilled=r.counter("cdrs_backfilled_total", "CDRs recovered from the CSV backend, missed by AMI"),
            cdrs_invalid=r.counter("cdrs_invalid_total", "Cdr events or CSV lines that could not be parsed"),
            api_request_duration=r.histogram("api_request_duration_seconds", "CDR API request time", ["endpoint"]),
            cdr_filtered=r.counter("asterisk_cdr_filtered_total", "CDRs filtered out, by reason", ["reason"]),
            cdr_queue_depth=r.gauge("asterisk_cdr_queue_depth", "Cdr events read from AMI, not yet in the spool"),
            spool_depth=r.gauge("cdr_spool_depth", "CDRs in the spool not yet delivered, by sink", ["sink"]),
            spool_oldest_age=r.gauge(
                "cdr_spool_oldest_undelivered_age_seconds", "Age of the oldest undelivered CDR, by sink", ["sink"]
            ),
            spool_dead=r.gauge("cdr_spool_dead_letters", "Dead-lettered CDRs waiting in the spool, by sink", ["sink"]),
            recordings_uploaded=r.counter("recordings_uploaded_total", "Recordings uploaded"),
            recordings_failed=r.counter("recordings_failed_total", "Recording upload attempts that failed"),
            recordings_skipped=r.counter("recordings_skipped_total", "Recordings skipped by a filter", ["reason"]),
        )
