"""The HTTP/JSON gateway, driven by the real curl binary, answers like real etcd's.

Why: tools and scripts talk to etcd with curl and the examples of etcd's "gRPC gateway" page;
the reference server must give them the same JSON. Every request goes to the reference server
and to a real etcd with the same history, and the answers are compared after removing what
legitimately differs between two clusters (cluster and member IDs, raft term). Real etcd 3.4
serves the gateway on its client port; ours on its own HTTP port (LocalMember.http_url) and, as
etcd, on its client port (the last test).
"""
from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from typing import Any, Iterator

import grpc
import pytest

from harness.localproc import LocalMember, have_etcd
from server.proto.etcdserverpb import rpc_pb2 as pb
from server.proto.etcdserverpb import rpc_pb2_grpc

CURL = shutil.which("curl") or "/usr/bin/curl"
VOLATILE = ("cluster_id", "member_id", "raft_term")

pytestmark = pytest.mark.skipif(not os.path.exists(CURL), reason="curl is not installed (Debian package curl)")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode()


# ------------------------------------------------------------------ servers
@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[tuple[LocalMember, LocalMember]]:
    """One reference server and one real etcd for the module, stopped however it ends."""
    if not have_etcd():
        pytest.skip("real etcd not installed (Debian package etcd-server); `make test` installs it")
    base = tmp_path_factory.mktemp("gateway")
    members = [LocalMember("reference", str(base / "reference")), LocalMember("etcd", str(base / "etcd"))]
    try:
        for m in members:
            m.start()
        yield members[0], members[1]
    finally:
        for m in members:
            m.stop(timeout=5)


def _revision(m: LocalMember) -> int:
    with grpc.insecure_channel(m.endpoint) as ch:
        return rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"\0"), timeout=5).header.revision


@pytest.fixture
def servers(pair) -> tuple[LocalMember, LocalMember]:
    """The pair with equal revisions, so that revisions in answers can be compared as they are."""
    ref, etcd = pair
    for _ in range(2):
        r, e = _revision(ref), _revision(etcd)
        behind, n = (ref, e - r) if r < e else (etcd, r - e)
        with grpc.insecure_channel(behind.endpoint) as ch:
            for _ in range(n):
                rpc_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=b"~filler", value=b"x"), timeout=5)
    assert _revision(ref) == _revision(etcd)
    return ref, etcd


# --------------------------------------------------------------------- curl
def curl(m: LocalMember, path: str, body: Any = None, method: str = "POST", raw: str | None = None) -> tuple[int, str]:
    """(HTTP status, body) of one request made by the curl binary."""
    cmd = [CURL, "-sS", "--max-time", "15", "-o", "-", "-w", "\n%{http_code}", "-X", method, m.http_url + path]
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    if data is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    r = subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"curl failed against {m.kind}: {r.stderr}"
    text, _, status = r.stdout.rpartition("\n")
    return int(status), text


def normalise(obj: Any) -> Any:
    """Drop the header fields that differ between any two clusters."""
    if isinstance(obj, dict):
        return {k: normalise(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [normalise(v) for v in obj]
    return obj


def call(m: LocalMember, path: str, body: Any = None, raw: str | None = None) -> tuple[int, Any]:
    status, text = curl(m, path, body, raw=raw)
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def both(servers: tuple[LocalMember, LocalMember], path: str, body: Any = None) -> tuple[int, Any]:
    """The same request to both servers; asserts equal answers and returns the reference's."""
    ref, etcd = servers
    rs, rj = call(ref, path, body)
    es, ej = call(etcd, path, body)
    assert (rs, normalise(rj)) == (es, normalise(ej)), f"{path} {body}: reference {rs} {rj} / etcd {es} {ej}"
    return rs, normalise(rj)


# -------------------------------------------------------------------- tests
def test_put_then_range_docs_example(servers: tuple[LocalMember, LocalMember]) -> None:
    status, put = both(servers, "/v3/kv/put", {"key": b64("foo"), "value": b64("bar")})
    assert status == 200 and set(put) == {"header"}
    status, got = both(servers, "/v3/kv/range", {"key": b64("foo")})
    assert status == 200
    assert got["count"] == "1" and unb64(got["kvs"][0]["value"]) == "bar"
    assert got["kvs"][0]["mod_revision"] == put["header"]["revision"]
    # prev_kv on an overwrite
    _, again = both(servers, "/v3/kv/put", {"key": b64("foo"), "value": b64("baz"), "prev_kv": True})
    assert unb64(again["prev_kv"]["value"]) == "bar"
    # a missing key: no kvs, count left out (a default value)
    _, missing = both(servers, "/v3/kv/range", {"key": b64("no-such-key")})
    assert "kvs" not in missing and "count" not in missing


def test_prefix_range_with_range_end(servers: tuple[LocalMember, LocalMember]) -> None:
    for k in ("pfx/a", "pfx/b", "pfx/c", "pfy"):
        both(servers, "/v3/kv/put", {"key": b64(k), "value": b64(k.upper())})
    _, got = both(servers, "/v3/kv/range", {"key": b64("pfx/"), "range_end": b64("pfx0")})
    assert [unb64(kv["key"]) for kv in got["kvs"]] == ["pfx/a", "pfx/b", "pfx/c"]
    _, limited = both(servers, "/v3/kv/range", {"key": b64("pfx/"), "range_end": b64("pfx0"), "limit": 2})
    assert len(limited["kvs"]) == 2 and limited["more"] is True and limited["count"] == "3"
    _, desc = both(servers, "/v3/kv/range", {"key": b64("pfx/"), "range_end": b64("pfx0"),
                                             "sort_order": "DESCEND", "sort_target": "KEY", "keys_only": True})
    assert [unb64(kv["key"]) for kv in desc["kvs"]] == ["pfx/c", "pfx/b", "pfx/a"]
    assert all("value" not in kv for kv in desc["kvs"])
    _, counted = both(servers, "/v3/kv/range", {"key": b64("pfx/"), "range_end": b64("pfx0"), "count_only": True})
    assert counted["count"] == "3" and "kvs" not in counted


def test_txn_with_compare_docs_example(servers: tuple[LocalMember, LocalMember]) -> None:
    _, put = both(servers, "/v3/kv/put", {"key": b64("txnkey"), "value": b64("v1")})
    rev = put["header"]["revision"]
    # the docs' example, in its camelCase field names
    _, ok = both(servers, "/v3/kv/txn", {
        "compare": [{"target": "CREATE", "key": b64("txnkey"), "createRevision": rev}],
        "success": [{"requestPut": {"key": b64("txnkey"), "value": b64("v2")}}],
    })
    assert ok["succeeded"] is True and "response_put" in ok["responses"][0]
    # a failing compare runs the failure branch, in the .proto's names this time
    _, failed = both(servers, "/v3/kv/txn", {
        "compare": [{"target": "VALUE", "key": b64("txnkey"), "result": "EQUAL", "value": b64("v1")}],
        "success": [{"request_put": {"key": b64("txnkey"), "value": b64("never")}}],
        "failure": [{"request_range": {"key": b64("txnkey")}}],
    })
    assert "succeeded" not in failed
    assert unb64(failed["responses"][0]["response_range"]["kvs"][0]["value"]) == "v2"


def test_deleterange_with_prev_kv(servers: tuple[LocalMember, LocalMember]) -> None:
    for k in ("del/1", "del/2", "del/3", "dem"):
        both(servers, "/v3/kv/put", {"key": b64(k), "value": b64("x")})
    _, deleted = both(servers, "/v3/kv/deleterange", {"key": b64("del/"), "range_end": b64("del0"), "prev_kv": True})
    assert deleted["deleted"] == "3" and [unb64(kv["key"]) for kv in deleted["prev_kvs"]] == ["del/1", "del/2", "del/3"]
    _, again = both(servers, "/v3/kv/deleterange", {"key": b64("del/"), "range_end": b64("del0")})
    assert "deleted" not in again
    _, left = both(servers, "/v3/kv/range", {"key": b64("dem")})
    assert left["count"] == "1"


def _watch_lines(m: LocalMember, body: dict, want: int, trigger=None, timeout: float = 10.0) -> list[dict]:
    """Run `curl -N /v3/watch` and return its first `want` lines; `trigger()` runs once it is created."""
    cmd = [CURL, "-sS", "-N", "--max-time", str(int(timeout) + 5), "-X", "POST", m.http_url + "/v3/watch",
           "--data-binary", json.dumps(body)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                lines.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want:
            out.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
            if len(out) == 1 and trigger is not None:
                trigger()
    except queue.Empty:
        pass
    finally:
        proc.kill()
        proc.wait(5)
    return out


def test_watch_streams_events_for_later_puts(servers: tuple[LocalMember, LocalMember]) -> None:
    ref, etcd = servers
    results = {}
    for m in (ref, etcd):
        def trigger(m: LocalMember = m) -> None:
            curl(m, "/v3/kv/put", {"key": b64("wkey"), "value": b64("one")})
            curl(m, "/v3/kv/put", {"key": b64("wkey"), "value": b64("two")})
            curl(m, "/v3/kv/deleterange", {"key": b64("wkey")})

        lines = _watch_lines(m, {"create_request": {"key": b64("wkey"), "prev_kv": True}}, 4, trigger)
        results[m.kind] = normalise(lines)
    ref_lines = results["reference"]
    assert len(ref_lines) == 4, ref_lines
    assert ref_lines[0]["result"].get("created") is True
    events = [ev for line in ref_lines[1:] for ev in line["result"]["events"]]
    assert [(ev.get("type", "PUT"), unb64(ev["kv"].get("value", ""))) for ev in events] == [
        ("PUT", "one"), ("PUT", "two"), ("DELETE", "")]
    assert unb64(events[1]["prev_kv"]["value"]) == "one"
    assert results["reference"] == results["etcd"]


def test_watch_replays_history_from_start_revision(servers: tuple[LocalMember, LocalMember]) -> None:
    ref, etcd = servers
    _, first = both(servers, "/v3/kv/put", {"key": b64("hist/a"), "value": b64("1")})
    both(servers, "/v3/kv/put", {"key": b64("hist/b"), "value": b64("2")})
    body = {"create_request": {"key": b64("hist/"), "range_end": b64("hist0"),
                               "start_revision": first["header"]["revision"]}}
    got = {m.kind: normalise(_watch_lines(m, body, 2)) for m in (ref, etcd)}
    events = [ev for line in got["reference"][1:] for ev in line["result"].get("events", [])]
    assert [unb64(ev["kv"]["key"]) for ev in events] == ["hist/a", "hist/b"]
    assert got["reference"] == got["etcd"]


def test_lease_grant_put_timetolive_revoke(servers: tuple[LocalMember, LocalMember]) -> None:
    lease_id = "7205759403792793"
    _, grant = both(servers, "/v3/lease/grant", {"TTL": 60, "ID": lease_id})
    assert grant["ID"] == lease_id and grant["TTL"] == "60"
    both(servers, "/v3/kv/put", {"key": b64("leased"), "value": b64("v"), "lease": lease_id})
    ref, etcd = servers
    ttl = {}
    for m in (ref, etcd):
        status, body = call(m, "/v3/lease/timetolive", {"ID": lease_id, "keys": True})
        assert status == 200
        assert 55 <= int(body.pop("TTL")) <= 60  # the remaining seconds tick on their own
        ttl[m.kind] = normalise(body)
    assert ttl["reference"] == ttl["etcd"]
    assert ttl["reference"]["grantedTTL"] == "60" and [unb64(k) for k in ttl["reference"]["keys"]] == ["leased"]
    _, leases = both(servers, "/v3/lease/leases", {})
    assert {"ID": lease_id} in leases["leases"]
    _, revoked = both(servers, "/v3/lease/revoke", {"ID": lease_id})
    assert set(revoked) == {"header"}
    _, gone = both(servers, "/v3/kv/range", {"key": b64("leased")})
    assert "kvs" not in gone
    _, after = both(servers, "/v3/lease/timetolive", {"ID": lease_id})
    assert after["TTL"] == "-1"
    # revoking twice, by the older path etcd still serves: the not-found error
    status, err = both(servers, "/v3/kv/lease/revoke", {"ID": lease_id})
    assert status == 404 and err == {"error": "etcdserver: requested lease not found", "code": 5,
                                     "message": "etcdserver: requested lease not found"}


def test_maintenance_status(servers: tuple[LocalMember, LocalMember]) -> None:
    ref, etcd = servers
    shapes = {}
    for m in (ref, etcd):
        status, body = call(m, "/v3/maintenance/status", {})
        assert status == 200
        assert body["leader"] == body["header"]["member_id"]
        assert body["version"].startswith("3.") and int(body["dbSize"]) > 0
        assert int(body["raftIndex"]) > 0 and body["raftTerm"] == body["header"]["raft_term"]
        shapes[m.kind] = sorted(body)
    assert shapes["reference"] == shapes["etcd"]


def test_member_list(servers: tuple[LocalMember, LocalMember]) -> None:
    ref, etcd = servers
    seen = {}
    for m in (ref, etcd):
        status, body = call(m, "/v3/cluster/member/list", {})
        assert status == 200 and len(body["members"]) == 1
        member = body["members"][0]
        assert member["ID"] == body["header"]["member_id"] and member["name"] == "default"
        assert member["clientURLs"] == [f"http://{m.endpoint}"]
        assert member["peerURLs"] == [f"http://{m.host}:{m.peer_port}"]
        seen[m.kind] = (sorted(body["header"]), sorted(member))
    assert seen["reference"] == seen["etcd"]


def test_health_and_version(servers: tuple[LocalMember, LocalMember]) -> None:
    ref, etcd = servers
    for m in (ref, etcd):
        status, text = curl(m, "/health", method="GET")
        assert status == 200 and json.loads(text)["health"] == "true"
        status, text = curl(m, "/version", method="GET")
        version = json.loads(text)
        assert status == 200 and set(version) == {"etcdserver", "etcdcluster"}
        assert all(re.fullmatch(r"3\.\d+\.\d+", v) for v in version.values())


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r'([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ([-+0-9.eE]+|NaN|[+-]Inf)', line.strip())
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def _metric(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.mark.parametrize("kind", ["reference", "etcd"])
def test_metrics_disk_histograms_and_grpc_counts(servers: tuple[LocalMember, LocalMember], kind: str) -> None:
    m = dict(zip(("reference", "etcd"), servers))[kind]
    with grpc.insecure_channel(m.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        kv.Put(pb.PutRequest(key=b"metrics", value=b"1"), timeout=5)
        with pytest.raises(grpc.RpcError):
            kv.Put(pb.PutRequest(key=b"", value=b"1"), timeout=5)
    time.sleep(0.3)  # the backend's batch commit lands within its 100 ms interval
    status, text = curl(m, "/metrics", method="GET")
    assert status == 200
    s = _samples(text)
    for hist in ("etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds"):
        assert f"# TYPE {hist} histogram" in text
        assert _metric(s, hist + "_count") >= 1, hist
        assert _metric(s, hist + "_bucket", le="+Inf") == _metric(s, hist + "_count")
        assert _metric(s, hist + "_sum") > 0
    put = {"grpc_service": "etcdserverpb.KV", "grpc_method": "Put", "grpc_type": "unary"}
    assert _metric(s, "grpc_server_started_total", **put) >= 2
    assert _metric(s, "grpc_server_handled_total", grpc_code="OK", **put) >= 1
    assert _metric(s, "grpc_server_handled_total", grpc_code="InvalidArgument", **put) >= 1


@pytest.mark.parametrize("kind", [
    "reference",
    "etcd",
])
def test_gateway_requests_count_as_grpc_requests(servers: tuple[LocalMember, LocalMember], kind: str) -> None:
    m = dict(zip(("reference", "etcd"), servers))[kind]
    range_ = {"grpc_service": "etcdserverpb.KV", "grpc_method": "Range", "grpc_type": "unary"}
    before = _metric(_samples(curl(m, "/metrics", method="GET")[1]), "grpc_server_handled_total", **range_)
    for _ in range(3):
        assert call(m, "/v3/kv/range", {"key": b64("counted")})[0] == 200
    after = _metric(_samples(curl(m, "/metrics", method="GET")[1]), "grpc_server_handled_total", **range_)
    assert after - before >= 3


def test_error_bodies_match_etcd(servers: tuple[LocalMember, LocalMember]) -> None:
    ref, etcd = servers
    # missing key, unknown lease, future revision: the same status and the same JSON
    both(servers, "/v3/kv/put", {"key": b64("errs"), "value": b64("1")})
    status, err = both(servers, "/v3/kv/put", {"value": b64("x")})
    assert status == 400 and err == {"error": "etcdserver: key is not provided", "code": 3,
                                     "message": "etcdserver: key is not provided"}
    status, err = both(servers, "/v3/kv/range", {})
    assert status == 400 and err["code"] == 3
    status, err = both(servers, "/v3/lease/revoke", {"ID": "424242"})
    assert status == 404 and err["code"] == 5
    rev = int(both(servers, "/v3/kv/range", {"key": b64("errs")})[1]["header"]["revision"])
    status, err = both(servers, "/v3/kv/range", {"key": b64("errs"), "revision": rev + 1000})
    assert status == 400 and err["code"] == 11 and "future revision" in err["message"]
    status, err = both(servers, "/v3/kv/txn", {"success": [{"request_put": {"key": b64("d"), "value": b64("1")}},
                                                           {"request_put": {"key": b64("d"), "value": b64("2")}}]})
    assert status == 400 and err["message"] == "etcdserver: duplicate key given in txn request"
    # fields the message does not have are ignored, as grpc-gateway v1 does
    status, ok = both(servers, "/v3/kv/put", {"key": b64("errs"), "value": b64("2"), "no_such_field": {"x": 1}})
    assert status == 200
    # malformed bodies: 400 with code 3 and etcd's three fields; the parser's wording differs
    for raw in ('{"key": "Zm9v",', '{"key": "not base64!!"}', '[1, 2]', '{"key": "Zm9v", "limit": "ten"}',
                '{"key": "Zm9v", "sort_order": "SIDEWAYS"}', '{"key": "Zm9v", "keys_only": "yes"}', '7'):
        for m in (ref, etcd):
            status, body = call(m, "/v3/kv/range", raw=raw)
            assert status == 400, (m.kind, raw, body)
            assert isinstance(body, dict) and set(body) == {"error", "code", "message"} and body["code"] == 3, \
                (m.kind, raw, body)
    # JSON null is the empty request on both: the key is missing
    for m in (ref, etcd):
        status, body = call(m, "/v3/kv/range", raw="null")
        assert (status, body.get("message")) == (400, "etcdserver: key is not provided"), (m.kind, body)
    # an unknown path
    for m in (ref, etcd):
        assert curl(m, "/v3/kv/nosuch", {})[0] == 404


@pytest.mark.parametrize("kind", [
    "reference",
    "etcd",
])
def test_wrong_method_is_405(servers: tuple[LocalMember, LocalMember], kind: str) -> None:
    m = dict(zip(("reference", "etcd"), servers))[kind]
    assert curl(m, "/v3/kv/range", method="GET")[0] == 405
    assert curl(m, "/health", method="POST")[0] == 405


class _ClientPort:
    """A member seen through its gRPC client port, where etcd (cmux) and ours (server/
    grpc_server.py hands HTTP/1.x connections to the gateway) serve the gateway as well."""

    def __init__(self, m: LocalMember) -> None:
        self.kind = m.kind
        self.http_url = f"http://{m.endpoint}"


def test_the_client_port_serves_the_gateway_too(servers: tuple[LocalMember, LocalMember]) -> None:
    ports = tuple(_ClientPort(m) for m in servers)
    status, put = both(ports, "/v3/kv/put", {"key": b64("cport"), "value": b64("via the gRPC port")})
    assert status == 200 and set(put) == {"header"}
    _, got = both(ports, "/v3/kv/range", {"key": b64("cport")})
    assert unb64(got["kvs"][0]["value"]) == "via the gRPC port"
    assert both(ports, "/v3/kv/put", {"value": b64("no key")})[0] == 400  # etcd's error body too
    for m in ports:
        status, text = curl(m, "/health", method="GET")
        assert status == 200 and json.loads(text)["health"] == "true"
    watched = {}
    for m in ports:
        lines = _watch_lines(m, {"create_request": {"key": b64("cport-w")}}, 2,
                             lambda m=m: curl(m, "/v3/kv/put", {"key": b64("cport-w"), "value": b64("1")}))
        watched[m.kind] = normalise(lines)
    assert watched["reference"] == watched["etcd"] and len(watched["reference"]) == 2
    # gRPC on the same port still works after HTTP/1.1 connections came and went
    with grpc.insecure_channel(servers[0].endpoint) as ch:
        assert rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"cport"), timeout=5).count == 1
