"""The etcd KV model: revision arithmetic and txn semantics on hand-made histories, the
persisted-request refinement, generated runs, and histories recorded from a real etcd (its
responses must satisfy the model; the same histories with one response altered must not)."""
from __future__ import annotations

import random
import threading
import time
from dataclasses import replace

import grpc
import pytest

from checker import synth
from checker.history import INFO, INVOKE, OK, Op
from checker.linearizable import check, operations
from checker.models import kv_model

from checker_oracle import Recorder


def kvs(*entries):
    """kvs("a", "1", 2, 2, 1) -> one kv per 5 fields: key, value, create, mod, version."""
    out = []
    for i in range(0, len(entries), 5):
        k, v, c, m, ver = entries[i:i + 5]
        out.append({"key": k, "value": v, "create_revision": c, "mod_revision": m, "version": ver})
    return out


def rng_(key, result_kvs, rev, **opts):
    return {"f": "range", "key": key, "value": opts or None, "result": {"kvs": result_kvs, "count": len(result_kvs)},
            "revision": rev}


class KV(Recorder):
    def __init__(self) -> None:
        super().__init__(key=None)

    def put(self, p, key, value, rev=None, typ="ok"):
        self.inv(p, "put", value, key=key)
        return self.done(p, typ, "put", value, key=key, **({"revision": rev} if rev is not None else {}))

    def get(self, p, key, result_kvs, rev=None, count=None, **opts):
        self.inv(p, "range", opts or None, key=key)
        res = {"kvs": result_kvs, "count": len(result_kvs) if count is None else count}
        return self.done(p, "ok", "range", res, key=key, **({"revision": rev} if rev is not None else {}))

    def delete(self, p, key, deleted, rev, end=None):
        self.inv(p, "delete", {"end": end} if end else None, key=key)
        return self.done(p, "ok", "delete", {"deleted": deleted}, key=key, revision=rev)

    def txn(self, p, compare, success, failure, succeeded, results=None, rev=None, typ="ok"):
        self.inv(p, "txn", {"compare": compare, "success": success, "failure": failure})
        value = {"succeeded": succeeded, "results": results}
        return self.done(p, typ, "txn", value, **({"revision": rev} if rev is not None else {}))


def valid(rec) -> bool | str:
    return check(rec.ops, kv_model(), workers=1).valid


def test_revisions_count_every_write_once():
    h = KV().put(0, "a", "1", rev=2).put(0, "b", "2", rev=3).get(0, "a", kvs("a", "1", 2, 2, 1), rev=3)
    assert valid(h) is True
    h = KV().put(0, "a", "1", rev=2).put(0, "b", "2", rev=4)  # a revision skipped: a write nobody made
    assert valid(h) is False
    h = KV().put(0, "a", "1", rev=2).get(0, "a", kvs("a", "1", 2, 2, 1), rev=3)  # read ahead of the store
    assert valid(h) is False


def test_versions_and_create_revisions():
    h = KV().put(0, "a", "1", rev=2).put(0, "a", "2", rev=3).get(0, "a", kvs("a", "2", 2, 3, 2), rev=3)
    assert valid(h) is True
    h = KV().put(0, "a", "1", rev=2).put(0, "a", "2", rev=3).get(0, "a", kvs("a", "2", 3, 3, 1), rev=3)
    assert valid(h) is False


def test_delete_of_nothing_keeps_the_revision_and_recreation_resets_version():
    h = (KV().put(0, "a", "1", rev=2).delete(0, "zz", 0, rev=2).delete(0, "a", 1, rev=3)
         .put(0, "a", "3", rev=4).get(0, "a", kvs("a", "3", 4, 4, 1), rev=4))
    assert valid(h) is True
    h = KV().put(0, "a", "1", rev=2).delete(0, "zz", 0, rev=3)
    assert valid(h) is False


def test_range_over_keys_with_limit_and_count():
    h = (KV().put(0, "a", "1", rev=2).put(0, "b", "2", rev=3).put(0, "c", "3", rev=4)
         .get(0, "a", kvs("a", "1", 2, 2, 1, "b", "2", 3, 3, 1), rev=4, count=2, end="c")
         .get(0, "a", kvs("a", "1", 2, 2, 1), rev=4, count=3, end="\0", limit=1))
    assert valid(h) is True
    h = KV().put(0, "a", "1", rev=2).put(0, "b", "2", rev=3).get(0, "a", kvs("a", "1", 2, 2, 1), rev=3, end="c")
    assert valid(h) is False  # b is in [a, c)


def test_txn_compares_and_branches():
    cas = [{"key": "a", "target": "value", "result": "=", "value": "1"}]
    put = [{"f": "put", "key": "a", "value": "2"}]
    read_b = [{"f": "range", "key": "b"}]
    h = KV().put(0, "a", "1", rev=2).txn(0, cas, put, read_b, True, [{}], rev=3)
    assert valid(h) is True
    h = KV().put(0, "a", "1", rev=2).txn(0, cas, put, read_b, False, [{"kvs": [], "count": 0}], rev=2)
    assert valid(h) is False  # the compare must have succeeded
    # a failed txn that only reads keeps the revision; comparing a missing key's value fails
    missing = [{"key": "nope", "target": "value", "result": "=", "value": ""}]
    h = KV().put(0, "a", "1", rev=2).txn(0, missing, put, read_b, False, [{"kvs": [], "count": 0}], rev=2)
    assert valid(h) is True
    # version 0 means absent; mod_revision and create_revision compares
    absent = [{"key": "b", "target": "version", "result": "=", "value": 0}]
    modrev = [{"key": "a", "target": "mod_revision", "result": "<", "value": 3},
              {"key": "a", "target": "create_revision", "result": "=", "value": 2}]
    h = (KV().put(0, "a", "1", rev=2).txn(0, absent, [{"f": "put", "key": "b", "value": "x"}], [], True, [{}], rev=3)
         .txn(0, modrev, put, [], True, [{}], rev=4))
    assert valid(h) is True
    # reads inside a txn see its earlier writes
    h = KV().txn(0, [], [{"f": "put", "key": "a", "value": "9"}, {"f": "range", "key": "a"}], [], True,
                 [{}, {"kvs": kvs("a", "9", 2, 2, 1), "count": 1}], rev=2)
    assert valid(h) is True


def test_unknown_write_both_ways_and_revision_gaps():
    # a timed-out put: taken effect (gap filled) or not
    h = KV().put(0, "a", "1", rev=2).put(1, "b", "x", typ="info").put(0, "c", "3", rev=4)
    assert valid(h) is True
    h = KV().put(0, "a", "1", rev=2).put(1, "b", "x", typ="info").put(0, "c", "3", rev=3)
    assert valid(h) is True
    # one lost put cannot fill two revisions
    h = KV().put(0, "a", "1", rev=2).put(1, "b", "x", typ="info").put(0, "c", "3", rev=5)
    assert valid(h) is False
    # and a lost put cannot be both seen and unseen
    h = (KV().put(1, "b", "x", typ="info").get(0, "b", kvs("b", "x", 2, 2, 1), rev=2)
         .get(0, "b", [], rev=2))
    assert valid(h) is False


def test_persisted_requests_become_required_with_their_revision():
    h = KV().put(1, "b", "x", typ="info").put(0, "a", "1", rev=3).get(0, "b", kvs("b", "x", 2, 2, 1), rev=3)
    model = kv_model()
    ops = model.refine(operations(h.ops, model))
    lost = next(op for op in ops if op.index == 0)
    assert lost.required and lost.output == ("persisted", 2, "b", "x")
    assert lost.ret == next(op for op in ops if op.index == 4).ret  # before the read returned
    assert valid(h) is True
    # the lost put can take revision 3, after the put that took 2
    h = KV().put(1, "b", "x", typ="info").put(0, "a", "1", rev=2).get(0, "b", kvs("b", "x", 3, 3, 1), rev=3)
    assert valid(h) is True
    # but not revision 2, which that put took; nor be seen after a read that returned before it
    h = KV().put(1, "b", "x", typ="info").put(0, "a", "1", rev=2).get(0, "b", kvs("b", "x", 2, 2, 1), rev=3)
    assert valid(h) is False


def test_serializable_and_old_revision_reads_are_left_out():
    h = KV().put(0, "a", "1", rev=2).get(0, "a", [], rev=1, serializable=True).get(0, "a", [], rev=1, revision=1)
    assert valid(h) is True


def test_malformed_kv_ops_are_refused():
    with pytest.raises(ValueError, match="a compare is"):
        valid(KV().txn(0, [{"key": "a", "target": "weight", "result": "=", "value": 1}], [], [], True))
    with pytest.raises(ValueError, match="no operation 'scan'"):
        valid(KV().op(0, "scan", None, key="a"))
    with pytest.raises(ValueError, match="1 results for 0 ops"):
        valid(KV().txn(0, [], [], [], True, [{}]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("processes,info_rate", [(3, 0.0), (5, 0.1), (10, 0.1)])
def test_generated_kv_runs_pass(seed, processes, info_rate):
    h = synth.kv_history(random.Random(seed), 300, processes=processes, keys=5, info_rate=info_rate)
    r = check(h, kv_model(), workers=1, time_limit=30)
    assert r.valid is True, r.partitions[0].reason


def test_generated_kv_run_with_a_lost_write_fails():
    h = synth.kv_history(random.Random(7), 300, processes=5, keys=5, info_rate=0.0)
    # the last acknowledged put: reads after it keep the old value if we drop its effect by
    # turning it into a put of a key nobody reads; its revision still counts
    i = max(n for n, op in enumerate(h) if op.type == OK and op.f == "put" and
            any(o.f == "range" and o.type == OK and o.index > op.index and o.key == op.key for o in h))
    inv = next(n for n in range(i, -1, -1) if h[n].type == INVOKE and h[n].process == h[i].process)
    h[inv] = replace(h[inv], key="elsewhere")
    h[i] = replace(h[i], key="elsewhere")
    r = check(h, kv_model(), workers=1, time_limit=30)
    assert r.valid is False
    f = r.failures[0]  # refuted before the search (checker.kvrefute) or by it
    assert f.blocked and ([op.index for op in f.refutation.ops] if f.refutation else f.minimal.ops)


# ---- against a real etcd: the model must accept what etcd answers


def _record_etcd(endpoint: str, workers: int, ops_per_worker: int, seed: int) -> list[Op]:
    """Concurrent clients send random KV requests to etcd; record them in the kv format."""
    from server.proto.etcdserverpb import rpc_pb2 as pb
    from server.proto.etcdserverpb import rpc_pb2_grpc as pbg

    lock = threading.Lock()
    history: list[Op] = []
    t0 = time.monotonic_ns()

    def log(p, typ, f, value, key, extra=None):
        with lock:
            history.append(Op(len(history), p, typ, f, value, key, time=time.monotonic_ns() - t0, extra=extra or {}))

    def kvlist(pbkvs):
        return [{"key": kv.key.decode(), "value": kv.value.decode(), "create_revision": kv.create_revision,
                 "mod_revision": kv.mod_revision, "version": kv.version} for kv in pbkvs]

    keys = ["a", "b", "c"]

    def worker(p: int) -> None:
        rng = random.Random(seed * 100 + p)
        with grpc.insecure_channel(endpoint) as ch:
            stub = pbg.KVStub(ch)
            for n in range(ops_per_worker):
                key = rng.choice(keys)
                x = rng.random()
                if x < 0.35:
                    log(p, INVOKE, "range", None, key)
                    r = stub.Range(pb.RangeRequest(key=key.encode()))
                    log(p, OK, "range", {"kvs": kvlist(r.kvs), "count": r.count}, key, {"revision": r.header.revision})
                elif x < 0.45:
                    log(p, INVOKE, "range", {"end": "\0", "limit": 2}, "a")
                    r = stub.Range(pb.RangeRequest(key=b"a", range_end=b"\0", limit=2))
                    log(p, OK, "range", {"kvs": kvlist(r.kvs), "count": r.count}, "a", {"revision": r.header.revision})
                elif x < 0.7:
                    v = f"{p}-{n}"
                    log(p, INVOKE, "put", v, key)
                    r = stub.Put(pb.PutRequest(key=key.encode(), value=v.encode()))
                    log(p, OK, "put", v, key, {"revision": r.header.revision})
                elif x < 0.8:
                    log(p, INVOKE, "delete", None, key)
                    r = stub.DeleteRange(pb.DeleteRangeRequest(key=key.encode()))
                    log(p, OK, "delete", {"deleted": r.deleted}, key, {"revision": r.header.revision})
                else:
                    v = f"{p}-{n}"
                    target = rng.choice(["version", "mod_revision", "create_revision"])
                    want = rng.randrange(0, 4) if target == "version" else rng.randrange(0, 40)
                    enum = {"version": "VERSION", "mod_revision": "MOD", "create_revision": "CREATE"}[target]
                    cmp_ = pb.Compare(key=key.encode(), target=getattr(pb.Compare, enum),
                                      result=pb.Compare.LESS, **{target: want})
                    succ = [pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=v.encode())),
                            pb.RequestOp(request_range=pb.RangeRequest(key=key.encode()))]
                    fail = [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"c"))]
                    log(p, INVOKE, "txn", {"compare": [{"key": key, "target": target, "result": "<", "value": want}],
                                           "success": [{"f": "put", "key": key, "value": v}, {"f": "range", "key": key}],
                                           "failure": [{"f": "delete", "key": "c"}]}, None)
                    r = stub.Txn(pb.TxnRequest(compare=[cmp_], success=succ, failure=fail))
                    results = []
                    for resp in r.responses:
                        kind = resp.WhichOneof("response")
                        if kind == "response_range":
                            results.append({"kvs": kvlist(resp.response_range.kvs), "count": resp.response_range.count})
                        elif kind == "response_delete_range":
                            results.append({"deleted": resp.response_delete_range.deleted})
                        else:
                            results.append({})
                    log(p, OK, "txn", {"succeeded": r.succeeded, "results": results}, None, {"revision": r.header.revision})

    errors: list[BaseException] = []

    def run(p: int) -> None:
        try:
            worker(p)
        except BaseException as e:  # surfaced in the test, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return history


@pytest.mark.etcd
def test_real_etcd_histories_satisfy_the_model(member_factory):
    m = member_factory("etcd")
    h = _record_etcd(m.endpoint, workers=4, ops_per_worker=60, seed=1)
    assert len(h) == 2 * 4 * 60
    assert {op.f for op in h} == {"range", "put", "delete", "txn"}
    assert any(op.f == "txn" and op.type == OK and op.value["succeeded"] for op in h)
    assert any(op.f == "txn" and op.type == OK and not op.value["succeeded"] for op in h)
    r = check(h, kv_model(), workers=1, time_limit=60)
    assert r.valid is True, r.to_dict()["partitions"][0].get("blocked")
    # the same history with one response made impossible is caught: a revision the store never
    # reached, a value never written, a version off by one
    top = max(op.extra["revision"] for op in h if op.type == OK)
    rng = random.Random(5)
    oks = [n for n, op in enumerate(h) if op.type == OK]
    reads = [n for n in oks if h[n].f == "range" and h[n].value["kvs"]]
    for _ in range(3):
        i = rng.choice(oks)
        bad = list(h)
        bad[i] = replace(h[i], extra={"revision": top + 1})
        assert check(bad, kv_model(), workers=1, time_limit=60, explain_limit=0).valid is False, str(h[i])
        for field, change in (("value", lambda v: "never-written"), ("version", lambda v: v + 1)):
            i = rng.choice(reads)
            kvs_ = [dict(kv) for kv in h[i].value["kvs"]]
            kvs_[0][field] = change(kvs_[0][field])
            bad = list(h)
            bad[i] = replace(h[i], value=dict(h[i].value, kvs=kvs_))
            r = check(bad, kv_model(), workers=1, time_limit=60, explain_limit=1)
            assert r.valid is False, (field, str(h[i]))
            invoke = next(op.index for op in reversed(h[:i]) if op.process == h[i].process)
            f = r.failures[0]
            named = [op.index for op in f.refutation.ops] if f.refutation else f.minimal.ops + f.minimal.critical
            assert invoke in named
