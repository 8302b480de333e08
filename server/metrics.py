"""Prometheus metrics with etcd's names, in a registry of the server's own.

Why prometheus_client: the exposition format and histogram bookkeeping are its whole purpose, it
is the reference Python implementation, and it has no dependencies.
"""
from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

# etcd's disk histograms: 1 ms doubling to about 8 s
_DISK_BUCKETS = tuple(0.001 * 2**i for i in range(14))


def grpc_code_label(code_name: str) -> str:
    """grpc_code label as etcd's go-grpc-prometheus writes it: Go's names ("InvalidArgument")."""
    if code_name == "CANCELLED":
        return "Canceled"
    if code_name == "OK":
        return "OK"
    return "".join(part.capitalize() for part in code_name.split("_"))


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._call_children: dict[tuple[str, str, str, str], tuple] = {}
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.wal_fsync = Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            buckets=_DISK_BUCKETS,
            registry=r,
        )
        self.backend_commit = Histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            buckets=_DISK_BUCKETS,
            registry=r,
        )
        self.grpc_started = Counter(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.proposals_committed = Gauge(
            "etcd_server_proposals_committed_total", "The total number of consensus proposals committed.", registry=r
        )
        self.proposals_applied = Gauge(
            "etcd_server_proposals_applied_total", "The total number of consensus proposals applied.", registry=r
        )
        self.proposals_pending = Gauge(
            "etcd_server_proposals_pending", "The current number of pending proposals to commit.", registry=r
        )
        self.proposals_failed = Counter(
            "etcd_server_proposals_failed", "The total number of failed proposals seen.", registry=r
        )
        self.has_leader = Gauge(
            "etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.", registry=r
        )
        self.is_leader = Gauge(
            "etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.", registry=r
        )
        self.db_size = Gauge(
            "etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.",
            registry=r,
        )
        self.keys_total = Gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", registry=r)
        self.watchers = Gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", registry=r)
        self.slow_watchers = Gauge(
            "etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.", registry=r
        )
        self.leases = Gauge("etcdproof_leases", "Number of live leases.", registry=r)
        self.read_indexes = Counter(
            "etcdproof_read_index_requests", "ReadIndex requests issued (each confirms a batch of reads).", registry=r
        )
        self.linearizable_reads = Counter(
            "etcdproof_linearizable_reads", "Reads that waited for a ReadIndex confirmation.", registry=r
        )

    def count_call(self, kind: str, service: str, method: str, code_name: str) -> None:
        """One finished RPC (gRPC or through the gateway): started and handled counters."""
        key = (kind, service, method, code_name)
        pair = self._call_children.get(key)
        if pair is None:  # label lookups cost more than the increments: do them once per label set
            pair = (self.grpc_started.labels(kind, service, method),
                    self.grpc_handled.labels(kind, service, method, grpc_code_label(code_name)))
            self._call_children[key] = pair
        pair[0].inc()
        pair[1].inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
