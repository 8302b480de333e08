"""Server configuration: etcd's flag names, defaults and ETCD_* environment variables.

A flag on the command line wins over its environment variable, as in etcd. Bad values end the
program with a one-line explanation (argparse's error), never a traceback.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_QUOTA = 2 << 30  # etcd's default backend quota, 2 GiB
MAX_QUOTA = 8 << 30  # etcd warns above 8 GiB
API_VERSION = "3.5.0"  # the etcd API level the server speaks (reported by Status)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration ("10m", "1h30m", "500ms") in seconds; a bare number means seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r}")
    return total


@dataclass(frozen=True)
class URL:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_urls(text: str, what: str) -> list[URL]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        u = urlsplit(part)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"{what}: {part!r} must start with http:// (https is not supported)")
        if u.scheme == "https":
            raise ValueError(f"{what}: {part!r}: TLS is not supported by the reference server")
        if u.path not in ("", "/") or u.query:
            raise ValueError(f"{what}: {part!r} must not have a path")
        try:
            port = u.port
        except ValueError:
            raise ValueError(f"{what}: {part!r} has a bad port") from None
        if not u.hostname or port is None:
            raise ValueError(f"{what}: {part!r} needs a host and a port")
        out.append(URL(u.scheme, u.hostname, port))
    return out


def parse_initial_cluster(text: str) -> dict[str, list[str]]:
    """'n1=http://a:2380,n1=http://b:2380,n2=...' -> {name: [peer urls]} (a name may repeat)."""
    out: dict[str, list[str]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, url = part.partition("=")
        if not sep or not name or not url:
            raise ValueError(f"--initial-cluster: {part!r} is not name=url")
        parse_urls(url, "--initial-cluster")
        out.setdefault(name, []).append(url.rstrip("/"))
    if not out:
        raise ValueError("--initial-cluster is empty")
    return out


@dataclass
class Config:
    name: str = "default"
    data_dir: str = ""
    wal_dir: str = ""
    listen_client_urls: list[URL] = field(default_factory=list)
    advertise_client_urls: list[str] = field(default_factory=list)
    listen_client_http_urls: list[URL] = field(default_factory=list)
    listen_peer_urls: list[URL] = field(default_factory=list)
    initial_advertise_peer_urls: list[str] = field(default_factory=list)
    initial_cluster: dict[str, list[str]] = field(default_factory=dict)
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    listen_metrics_urls: list[URL] = field(default_factory=list)
    snapshot_count: int = 100_000
    snapshot_catchup_entries: int = 5000  # entries kept after a snapshot for slow followers
    heartbeat_ms: int = 100
    election_ms: int = 1000
    quota_backend_bytes: int = DEFAULT_QUOTA
    max_request_bytes: int = 1536 * 1024
    max_txn_ops: int = 128
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"
    max_wals: int = 5
    backend_batch_interval: float = 0.1
    backend_batch_limit: int = 10000
    watch_progress_notify_interval: float = 600.0
    log_level: str = "info"
    unsafe_no_fsync: bool = False

    @property
    def member_dir(self) -> str:
        return os.path.join(self.data_dir, "member")

    @property
    def wal_path(self) -> str:
        return self.wal_dir or os.path.join(self.member_dir, "wal")

    @property
    def backend_path(self) -> str:
        return os.path.join(self.member_dir, "snap", "db")

    @property
    def request_timeout(self) -> float:
        """etcd's: 5 s plus two election timeouts."""
        return 5.0 + 2 * self.election_ms / 1000


# flag -> (Config attribute, default as text, help)
FLAGS: list[tuple[str, str, str, str]] = [
    ("--name", "name", "default", "human-readable name for this member"),
    ("--data-dir", "data_dir", "", "path to the data directory (default: ${name}.etcd)"),
    ("--wal-dir", "wal_dir", "", "path to a dedicated WAL directory"),
    ("--listen-client-urls", "listen_client_urls", "http://localhost:2379", "URLs to serve gRPC clients on"),
    ("--advertise-client-urls", "advertise_client_urls", "http://localhost:2379", "client URLs told to the cluster"),
    ("--listen-client-http-urls", "listen_client_http_urls", "", "URLs for the HTTP/JSON gateway, /health and /metrics"),
    ("--listen-peer-urls", "listen_peer_urls", "http://localhost:2380", "URLs to listen on for peer traffic"),
    ("--initial-advertise-peer-urls", "initial_advertise_peer_urls", "http://localhost:2380", "peer URLs told to the cluster"),
    ("--initial-cluster", "initial_cluster", "", "initial cluster configuration, name=peerURL,..."),
    ("--initial-cluster-state", "initial_cluster_state", "new", "new or existing"),
    ("--initial-cluster-token", "initial_cluster_token", "etcd-cluster", "cluster token, mixed into member and cluster IDs"),
    ("--listen-metrics-urls", "listen_metrics_urls", "", "extra URLs serving /metrics and /health"),
    ("--snapshot-count", "snapshot_count", "100000", "applied entries between snapshots"),
    ("--experimental-snapshot-catchup-entries", "snapshot_catchup_entries", "5000",
     "entries kept after a snapshot so that slow followers catch up from the log (etcd 3.5's flag)"),
    ("--heartbeat-interval", "heartbeat_ms", "100", "heartbeat interval in ms"),
    ("--election-timeout", "election_ms", "1000", "election timeout in ms"),
    ("--quota-backend-bytes", "quota_backend_bytes", "0", "backend size limit that raises the NOSPACE alarm (0 = 2 GiB)"),
    ("--max-request-bytes", "max_request_bytes", "1572864", "largest request the server accepts"),
    ("--max-txn-ops", "max_txn_ops", "128", "most operations in one txn"),
    ("--auto-compaction-mode", "auto_compaction_mode", "periodic", "periodic or revision"),
    ("--auto-compaction-retention", "auto_compaction_retention", "0", "history kept: a duration (periodic) or a revision count; 0 = off"),
    ("--max-wals", "max_wals", "5", "WAL files kept (0 = unlimited)"),
    ("--backend-batch-interval", "backend_batch_interval", "100ms", "longest time before a backend commit"),
    ("--backend-batch-limit", "backend_batch_limit", "10000", "most writes in one backend commit"),
    ("--experimental-watch-progress-notify-interval", "watch_progress_notify_interval", "10m", "interval of watch progress notifications"),
    ("--log-level", "log_level", "info", "debug, info, warn or error"),
    ("--unsafe-no-fsync", "unsafe_no_fsync", "false",
     "skip the fsync of WAL appends and backend commits (unsafe: a crash loses acknowledged writes; as etcd's flag)"),
]
BOOL_FLAGS = {"--unsafe-no-fsync"}  # may stand alone (= true), as etcd's boolean flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdproof-server",
        description="etcdproof's reference etcd v3 server. Flags follow etcd's; each may also be set as ETCD_<FLAG>.",
    )
    for flag, dest, _default, help_text in FLAGS:
        p.add_argument(flag, dest=dest, default=None, metavar="VALUE", help=help_text,
                       **({"nargs": "?", "const": "true"} if flag in BOOL_FLAGS else {}))
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def env_name(flag: str) -> str:
    return "ETCD_" + flag.lstrip("-").upper().replace("-", "_")


def parse_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Flags, then ETCD_* environment, then defaults; exits with a one-line error on bad input."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.version:
        print(f"etcdproof-server (etcd API {API_VERSION})")
        raise SystemExit(0)
    env = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    explicit: set[str] = set()
    for flag, dest, default, _ in FLAGS:
        val = getattr(ns, dest)
        if val is not None:
            explicit.add(dest)
        elif env_name(flag) in env:
            val = env[env_name(flag)]
            explicit.add(dest)
        else:
            val = default
        raw[dest] = val
    try:
        return _build(raw, explicit)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable


def _int(raw: dict[str, str], dest: str, flag: str, minimum: int = 0) -> int:
    try:
        v = int(raw[dest])
    except ValueError:
        raise ValueError(f"{flag}: {raw[dest]!r} is not an integer") from None
    if v < minimum:
        raise ValueError(f"{flag}: must be at least {minimum}")
    return v


def _build(raw: dict[str, str], explicit: set[str]) -> Config:
    c = Config()
    c.name = raw["name"]
    c.data_dir = raw["data_dir"] or f"{c.name}.etcd"
    c.wal_dir = raw["wal_dir"]
    c.listen_client_urls = parse_urls(raw["listen_client_urls"], "--listen-client-urls")
    if not c.listen_client_urls:
        raise ValueError("--listen-client-urls: at least one URL is needed")
    c.advertise_client_urls = [str(u) for u in parse_urls(raw["advertise_client_urls"], "--advertise-client-urls")]
    c.listen_client_http_urls = parse_urls(raw["listen_client_http_urls"], "--listen-client-http-urls")
    c.listen_peer_urls = parse_urls(raw["listen_peer_urls"], "--listen-peer-urls")
    c.initial_advertise_peer_urls = [
        str(u) for u in parse_urls(raw["initial_advertise_peer_urls"], "--initial-advertise-peer-urls")
    ]
    if raw["initial_cluster"]:
        c.initial_cluster = parse_initial_cluster(raw["initial_cluster"])
    else:
        c.initial_cluster = {c.name: list(c.initial_advertise_peer_urls)}
    if c.name not in c.initial_cluster:
        raise ValueError(f"--initial-cluster has no member named {c.name!r} (this member's --name)")
    mine = sorted(c.initial_cluster[c.name])
    if sorted(c.initial_advertise_peer_urls) != mine and "initial_advertise_peer_urls" in explicit:
        raise ValueError(
            f"--initial-advertise-peer-urls {','.join(c.initial_advertise_peer_urls)} does not match "
            f"--initial-cluster's {c.name}={','.join(mine)}"
        )
    c.initial_cluster_state = raw["initial_cluster_state"]
    if c.initial_cluster_state not in ("new", "existing"):
        raise ValueError("--initial-cluster-state must be new or existing")
    c.initial_cluster_token = raw["initial_cluster_token"]
    c.listen_metrics_urls = parse_urls(raw["listen_metrics_urls"], "--listen-metrics-urls")
    c.snapshot_count = _int(raw, "snapshot_count", "--snapshot-count", 1)
    c.snapshot_catchup_entries = _int(raw, "snapshot_catchup_entries", "--experimental-snapshot-catchup-entries", 1)
    c.heartbeat_ms = _int(raw, "heartbeat_ms", "--heartbeat-interval", 1)
    c.election_ms = _int(raw, "election_ms", "--election-timeout", 1)
    if c.election_ms < 5 * c.heartbeat_ms:
        raise ValueError("--election-timeout should be at least 5 times --heartbeat-interval")
    quota = _int(raw, "quota_backend_bytes", "--quota-backend-bytes", 0)
    c.quota_backend_bytes = quota if quota > 0 else DEFAULT_QUOTA
    c.max_request_bytes = _int(raw, "max_request_bytes", "--max-request-bytes", 1)
    c.max_txn_ops = _int(raw, "max_txn_ops", "--max-txn-ops", 1)
    c.auto_compaction_mode = raw["auto_compaction_mode"]
    if c.auto_compaction_mode not in ("periodic", "revision"):
        raise ValueError("--auto-compaction-mode must be periodic or revision")
    c.auto_compaction_retention = raw["auto_compaction_retention"]
    try:
        if c.auto_compaction_mode == "revision":
            int(c.auto_compaction_retention)
        else:
            compaction_period(c)
    except ValueError:
        raise ValueError(f"--auto-compaction-retention: {c.auto_compaction_retention!r} is not valid") from None
    c.max_wals = _int(raw, "max_wals", "--max-wals", 0)
    try:
        c.backend_batch_interval = parse_duration(raw["backend_batch_interval"])
        c.watch_progress_notify_interval = parse_duration(raw["watch_progress_notify_interval"])
    except ValueError as e:
        raise ValueError(str(e)) from None
    c.backend_batch_limit = _int(raw, "backend_batch_limit", "--backend-batch-limit", 1)
    if raw["unsafe_no_fsync"].lower() not in ("true", "false"):
        raise ValueError("--unsafe-no-fsync must be true or false")
    c.unsafe_no_fsync = raw["unsafe_no_fsync"].lower() == "true"
    c.log_level = raw["log_level"]
    if c.log_level not in ("debug", "info", "warn", "error"):
        raise ValueError("--log-level must be debug, info, warn or error")
    return c


def compaction_period(c: Config) -> float:
    """Periodic retention in seconds; a bare number means hours, as in etcd."""
    r = c.auto_compaction_retention.strip()
    if re.fullmatch(r"\d+", r):
        return int(r) * 3600.0
    return parse_duration(r)
