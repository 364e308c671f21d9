"""Prometheus metrics of the ingest service, on a registry of its own."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ingest.validate import REASONS

log = logging.getLogger(__name__)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "ingest_messages_received", "MQTT messages received", ["kind"], registry=r
        )
        self.written = Counter(
            "ingest_points_written", "Points stored in InfluxDB", ["measurement"], registry=r
        )
        self.rejected = Counter(
            "ingest_messages_rejected", "Messages or points dead-lettered", ["reason"], registry=r
        )
        for reason in REASONS:  # every label visible at 0, so alerts can use rate()
            self.rejected.labels(reason)
        self.retries = Counter(
            "ingest_write_retries", "InfluxDB writes retried after a failure", registry=r
        )
        self.batch_lines = Histogram(
            "ingest_batch_lines",
            "Lines per InfluxDB write",
            buckets=(1, 10, 50, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000),
            registry=r,
        )
        self.write_seconds = Histogram(
            "ingest_write_seconds",
            "Duration of one successful InfluxDB write",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.lag_seconds = Histogram(
            "ingest_lag_seconds",
            "Device timestamp of the oldest reading in a batch to its write",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3_600, 86_400),
            registry=r,
        )
        self.unacked = Gauge(
            "ingest_unacknowledged_messages",
            "Messages received and not yet acknowledged (bounded by the Receive Maximum)",
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "ingest_mqtt_connected", "1 while subscribed to the broker", registry=r
        )
        self.influx_up = Gauge(
            "ingest_influx_up", "1 while the last InfluxDB write succeeded", registry=r
        )

    def serve(self, port: int) -> None:
        try:
            start_http_server(port, registry=self.registry)
        except OSError as exc:
            # Metrics are worth a warning, not an outage of the data path.
            log.warning("metrics port %d unavailable (%s); /metrics is off", port, exc)
        else:
            log.info("metrics on http://0.0.0.0:%d/metrics", port)
