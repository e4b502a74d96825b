"""The receiver's Prometheus metrics (served on ``FRAMECDN_RECEIVE_METRICS_PORT``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ReceiveMetrics:
    """Counts what the receiver was sent and what it answered."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.instances = Counter(
            "framecdn_received_instances_total",
            "Instances received, by outcome (stored, duplicate, refused, store_failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "framecdn_received_bytes_total",
            "Bytes of the instances received and committed.",
            registry=self.registry,
        )
        self.associations = Counter(
            "framecdn_received_associations_total",
            "Associations, by how they ended (released, aborted, rejected).",
            ["end"],
            registry=self.registry,
        )
        self.spool_swept = Counter(
            "framecdn_receive_spool_swept_total",
            "Spool files removed after their association was aborted mid-transfer.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "framecdn_receive_in_flight",
            "Instances being ingested now (received, not yet answered).",
            registry=self.registry,
        )
