"""The etcd KV model: range, put, delete and txn over the whole keyspace, with etcd's revisions.

Close to the model etcd's own robustness tests use: the state is every key's (value,
create_revision, mod_revision, version) plus the store's revision, each request is a txn
(compares, then the success or failure ops), and the response is checked field by field,
header revision included: a txn that changes something takes the next revision, a read-only one
or a delete of nothing leaves it. Fields a history did not record are not checked.

Partial knowledge, without state explosion:
- a request that failed definitely is left out; one whose outcome is unknown (info) is optional:
  it may take effect at any time after its call, or never. Applying it with no effect (its
  compare failed, or it only read) is the same as never, so only effective applications count.
- the revisions themselves pin optional writes: the next acknowledged write must land exactly one
  revision up, so an unknown write is applied only where a revision gap asks for one.
- unique written values: when an unknown request is the only one writing a (key, value) and an
  acknowledged read returned that value, the request certainly persisted, at the mod_revision the
  read showed, and before that read returned. It becomes a required operation with that revision
  (etcd calls these persisted requests), which removes the guessing entirely.
- values nobody observed: before the search, every put value that no response, compare or
  persisted write shows is replaced by one placeholder (KVModel.canonical, with the proof that
  this keeps the verdict exactly). Same-key lost puts then become interchangeable, and states
  that differ only in such values become one; reports still show the real values.

Ranges at an old revision and serializable ranges are not linearizable reads and are left out.
Leases are not modelled. Op conventions: docs/history-format.md.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Hashable

from checker.history import FAIL, INFO, OK, Op
from checker.models import TIMELESS, UNKNOWN, Model, Prepared
from checker.wgl import Operation

TARGETS = ("value", "version", "create_revision", "mod_revision")
_FIELD = {"value": 0, "create_revision": 1, "mod_revision": 2, "version": 3}  # in a state entry
_RESULTS = {"=": "=", "==": "=", "equal": "=", "!=": "!=", "not_equal": "!=", "<": "<", "less": "<",
            ">": ">", "greater": ">"}
_ALL = "\0"  # range_end "\0": every key from the start key on


class KVState:
    """The store: revision and key -> (value, create_revision, mod_revision, version).

    Immutable once built; the hash is kept up to date incrementally, so caching a state costs
    nothing per key.
    """

    __slots__ = ("rev", "data", "_h")

    def __init__(self, rev: int, data: dict, h: int | None = None) -> None:
        self.rev = rev
        self.data = data
        if h is None:
            h = 0
            for item in data.items():
                h ^= hash(item)
        self._h = h

    def __hash__(self) -> int:
        return self._h ^ self.rev

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, KVState) and self._h == other._h and self.rev == other.rev
                and self.data == other.data)

    def __reduce__(self) -> tuple:
        return KVState, (self.rev, self.data)  # hashes differ between processes: recompute

    def __repr__(self) -> str:
        return f"KVState(rev={self.rev}, {self.data!r})"


class _Unobserved:
    """The value that stands for every written value no observation in the history can tell
    apart (KVModel.canonical). Equal only to itself; its str is compared against the history's
    compare operands before it is used (value compares fall back to str)."""

    _instance: "_Unobserved | None" = None

    def __new__(cls) -> "_Unobserved":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<unobserved>"

    __str__ = __repr__

    def __reduce__(self) -> str:
        return "UNOBSERVED"  # pickles as the module global: one placeholder in every process


UNOBSERVED = _Unobserved()


def _freeze(v: Any) -> Any:
    """JSON values as hashable ones (lists to tuples), so states and values can be cached."""
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def _in_range(k: str, key: str, end: str | None) -> bool:
    if end is None:
        return k == key
    if end == _ALL:
        return k >= key
    return key <= k < end


def _keys(data: dict, key: str, end: str | None) -> list[str]:
    if end is None:
        return [key] if key in data else []
    return sorted(k for k in data if _in_range(k, key, end))


def _cmp_value(a: Any, b: Any) -> int:
    if a == b:
        return 0
    sa, sb = str(a), str(b)
    return -1 if sa < sb else (1 if sa > sb else 0)


def _compare_one(entry: tuple | None, target: str, result: str, want: Any) -> bool:
    if entry is None:
        if target == "value":
            return False  # as etcd: comparing the value of a missing key always fails
        have: Any = 0
    elif target == "value":
        have = entry[0]
    else:
        have = entry[_FIELD[target]]
    c = _cmp_value(have, want) if target == "value" else (have > want) - (have < want)
    if result == "=":
        return c == 0
    if result == "!=":
        return c != 0
    if result == "<":
        return c < 0
    return c > 0


def _compare(data: dict, cmp: tuple) -> bool:
    key, end, target, result, want = cmp
    if end is None:
        return _compare_one(data.get(key), target, result, want)
    keys = _keys(data, key, end)
    if not keys:
        return _compare_one(None, target, result, want)
    return all(_compare_one(data[k], target, result, want) for k in keys)


def _run(state: KVState, req: tuple) -> tuple[bool, list, KVState | None]:
    """Execute a txn: (compare succeeded, results, new state or None if nothing changed)."""
    cmps, succ, fail = req
    data = state.data
    ok = True
    for c in cmps:
        if not _compare(data, c):
            ok = False
            break
    ops = succ if ok else fail
    rev = state.rev + 1
    new: dict | None = None
    h = state._h
    results: list = []
    for op in ops:
        cur = data if new is None else new
        kind = op[0]
        if kind == "range":
            _, key, end, limit = op
            keys = _keys(cur, key, end)
            kvs = tuple((k,) + cur[k] for k in (keys[:limit] if limit else keys))
            results.append((kvs, len(keys)))
        elif kind == "put":
            _, key, value = op
            if new is None:
                new = dict(data)
                cur = new
            old = cur.get(key)
            entry = (value, rev, rev, 1) if old is None else (value, old[1], rev, old[3] + 1)
            if old is not None:
                h ^= hash((key, old))
            h ^= hash((key, entry))
            new[key] = entry
            results.append(None)
        else:  # delete
            _, key, end = op
            keys = _keys(cur, key, end)
            if keys:
                if new is None:
                    new = dict(data)
                for k in keys:
                    h ^= hash((k, new.pop(k)))
            results.append(len(keys))
    if new is None:
        return ok, results, None
    return ok, results, KVState(rev, new, h)


def _kvs_match(seen: tuple, have: tuple) -> bool:
    """Observed kvs (None fields unrecorded) against the model's."""
    if len(seen) != len(have):
        return False
    for s, h in zip(seen, have):
        for a, b in zip(s, h):
            if a is not None and a != b:
                return False
    return True


def _results_match(seen: tuple, have: list) -> bool:
    if len(seen) != len(have):
        return False
    for s, h in zip(seen, have):
        if s is None:
            continue
        if isinstance(h, tuple):  # range
            kvs, count = s
            if kvs is not None and not _kvs_match(kvs, h[0]):
                return False
            if count is not None and count != h[1]:
                return False
        elif h is not None and s != h:  # delete: number deleted
            return False
    return True


def _writes(req: tuple) -> set[tuple[str, Any]]:
    """The (key, value) pairs a request may put (values must be hashable: JSON scalars)."""
    return {(op[1], op[2]) for branch in (req[1], req[2]) for op in branch if op[0] == "put"}


class KVModel(Model):
    """etcd's KV API as one partition (revisions are global). See the module docstring."""

    name = "kv"

    def __init__(self, per_key: bool = False) -> None:
        if per_key:
            raise ValueError("the kv model checks global revisions and cannot be split by key; "
                             "use the register model for independent keys")

    def init(self) -> Hashable:
        return KVState(1, {})  # etcd starts at revision 1 with no keys

    def partition_key(self, invoke: Op, inp: Any) -> Hashable:
        return None

    def prepare(self, invoke: Op, completion: Op | None) -> Prepared | None:
        t = INFO if completion is None else completion.type
        if t == FAIL:
            return None
        req = request(invoke)
        if req is None:
            return None
        reads_only = not any(op[0] != "range" for branch in (req[1], req[2]) for op in branch)
        if t != OK:
            return None if reads_only else (req, UNKNOWN, False)
        return req, _response(invoke, completion, req), True

    def refine(self, ops: list[Operation]) -> list[Operation]:
        """Unknown writes whose unique value an acknowledged read returned: certainly persisted,
        at the mod_revision the read showed, before that read returned."""
        writers: dict[tuple[str, Any], list[Operation]] = {}
        for op in ops:
            for w in _writes(op.input):
                writers.setdefault(w, []).append(op)
        found: dict[int, tuple[int, int | None, tuple]] = {}  # id(writer) -> (ret, revision, (k, v))
        for obs in ops:
            if not obs.required or obs.output[0] == "persisted" or obs.output[1] is None:
                continue
            for res in obs.output[1]:
                if not isinstance(res, tuple) or res[0] is None:
                    continue
                for kv in res[0]:
                    ws = writers.get((kv[0], kv[1]))
                    if not ws or len(ws) != 1 or ws[0].required or obs.ret < ws[0].call:
                        continue
                    prev = found.get(id(ws[0]))
                    rev = kv[3] if kv[3] is not None else (prev[1] if prev else None)
                    ret = obs.ret if prev is None else min(prev[0], obs.ret)
                    found[id(ws[0])] = (ret, rev, (kv[0], kv[1]))
        if not found:
            return ops
        out = []
        for op in ops:
            f = found.get(id(op))
            if f is None:
                out.append(op)
                continue
            ret, rev, (k, v) = f
            out.append(Operation(
                index=op.index, completion=op.completion, process=op.process, call=op.call, ret=ret,
                input=op.input, output=("persisted", rev, k, v), required=True, call_time=op.call_time,
                return_time=op.return_time, key=op.key, status=op.status,
            ))
        return out

    def canonical(self, ops: list[Operation]) -> list[Operation]:
        """The ops with every unobservable put value replaced by UNOBSERVED.

        A value u is unobservable when it is written by some put and nothing in the history
        can see it: it equals no value (and no value's str) in any recorded response (range
        and txn range kvs, the value of a persisted write) nor any value-compare operand, and
        no compare orders values (< or >) over the key it is written to. Replacing all of them
        by one fresh placeholder P keeps the verdict exactly:

        Let s(x) map each unobservable value to P and leave every other value alone, and apply
        it to states (entries' values), requests (put values) and responses. Responses and
        compare operands hold no unobservable value, so s leaves them as they are. For any
        state S and request R, executing s(R) in s(S) gives s of executing R in S: a value
        compare asks "=" or "!=" (no ordering compare covers a key holding such a value) of a
        stored value against an operand w; a stored unobservable u differs from w (by ==, and
        by str, which the model falls back to) and so does P, a fresh object whose str no
        operand has, so the compare comes out the same; other stored values are unchanged.
        Version, create_revision and mod_revision compares, the revision, versions, key sets,
        counts and deleted counts never depend on a value, and "did it change anything" (an
        unknown request must) depends on puts and deleted keys only. A range returns s of the
        real kvs, and it is checked against recorded kvs, whose values v are observed: a stored
        u mismatches v, and so does P; the same for a persisted write's value. So by induction
        over any order of ops, the real ops are accepted in that order from the initial state
        (no values) iff the substituted ones are, with states related by s: the same
        linearizations, the same longest prefixes. Nothing here needs values to be unique.

        What it buys: lost puts of the same key with unobserved values become equal operations,
        which the search applies only in call order (instead of guessing which one filled a
        revision gap), and states that differ only in such values become one cache entry.
        """
        observed: set = set()
        ordered: list[tuple[str, str | None]] = []  # ranges of keys some compare orders by value
        for op in ops:
            for key, end, target, result, want in op.input[0]:
                if target == "value":
                    observed.add(want)
                    if result in ("<", ">"):
                        ordered.append((key, end))
            out = op.output
            if out is UNKNOWN:
                continue
            if out[0] == "persisted":
                observed.add(out[3])
                continue
            for res in out[1] or ():
                if isinstance(res, tuple) and res[0] is not None:
                    for kv in res[0]:
                        observed.add(kv[1])
        strs = {str(v) for v in observed}
        if str(UNOBSERVED) in strs:
            return ops  # an operand that looks like the placeholder: leave the history alone

        def hidden(key: str, value: Any) -> bool:
            return (value not in observed and str(value) not in strs
                    and not any(_in_range(key, k, e) for k, e in ordered))

        res: list[Operation] = []
        changed = False
        for op in ops:
            cmps, succ, fail = op.input
            s2, f2 = _hide(succ, hidden), _hide(fail, hidden)
            if s2 is succ and f2 is fail:
                res.append(op)
            else:
                res.append(replace(op, input=(cmps, s2, f2)))
                changed = True
        return res if changed else ops

    def refute(self, ops: list[Operation]) -> Any:
        """Necessary conditions on revisions and per-key entries (checker.kvrefute): most
        single corrupted responses break one, and saying so needs no search."""
        from checker.kvrefute import refute

        return refute(ops, self.describe_op, self.limit)

    def step(self, state: KVState, req: tuple, out: Any) -> tuple[bool, Any]:
        if out is not UNKNOWN:
            # a request leaves the revision as it is or takes the next one: most candidates
            # of a search node are refused here without running them
            rev = out[1] if out[0] == "persisted" else out[2]
            if rev is not None and state.rev != rev and state.rev != rev - 1:
                return False, state
        ok, results, new = _run(state, req)
        if out is UNKNOWN:
            return (True, new) if new is not None else (False, state)
        after = state if new is None else new
        if out[0] == "persisted":
            _, rev, k, v = out
            if new is None or (rev is not None and new.rev != rev):
                return False, state
            e = new.data.get(k)
            return (e is not None and e[0] == v and e[2] == new.rev), new
        succeeded, seen, rev = out
        if succeeded is not None and succeeded != ok:
            return False, state
        if rev is not None and rev != after.rev:
            return False, state
        if seen is not None and not _results_match(seen, results):
            return False, state
        return True, after

    advances = True  # an unknown request is accepted only where it writes: the revision grows

    def dead(self, state: KVState, req: tuple, out: Any) -> bool:
        """No state reachable from this one accepts the op: a range it returned showed a key
        written at revision m (or created at c), the store is at m (c) or past it, and the key
        is not as the range saw it. Revisions only grow and every write stamps the revision it
        makes, so the key can never hold that entry again."""
        if out is UNKNOWN or out[0] == "persisted" or out[0] is None or out[1] is None:
            return False
        branch = req[1] if out[0] else req[2]
        rev = state.rev
        data = state.data
        for op, seen in zip(branch, out[1]):
            if op[0] != "range":
                break  # ranges after a write in the same txn see that write
            if seen is None or seen[0] is None:
                continue
            for k, value, create, mod, version in seen[0]:
                if k is None:
                    continue
                if mod is not None and rev >= mod:
                    e = data.get(k)
                    if (e is None or e[2] != mod or (value is not None and e[0] != value)
                            or (create is not None and e[1] != create) or (version is not None and e[3] != version)):
                        return True
                elif create is not None and rev >= create:
                    e = data.get(k)
                    if e is None or e[1] != create:
                        return True
        return False

    def progress(self, state: KVState) -> int:
        return state.rev

    def limit(self, req: tuple, out: Any) -> int | None:
        """The store's revision just before the op: its response revision, one less if the
        branch it took surely wrote."""
        if out is UNKNOWN:
            return None
        if out[0] == "persisted":
            return None if out[1] is None else out[1] - 1
        succeeded, results, rev = out
        if rev is None:
            return None
        if succeeded is None:
            return rev
        branch = req[1] if succeeded else req[2]
        for n, op in enumerate(branch):
            if op[0] == "put" or (op[0] == "delete" and results is not None and results[n]):
                return rev - 1
        return rev

    def describe_op(self, req: tuple, out: Any) -> str:
        cmps, succ, fail = req
        if not cmps and not fail and len(succ) == 1:
            s = _describe_req(succ[0])
        else:
            c = " && ".join(f"{k}.{t} {r} {w!r}" for k, _, t, r, w in cmps) or "true"
            s = f"txn if {c} then [{'; '.join(map(_describe_req, succ))}] else [{'; '.join(map(_describe_req, fail))}]"
        if out is UNKNOWN:
            return s + " ?"
        if out[0] == "persisted":
            return s + f" ? (persisted at {out[1]})" if out[1] is not None else s + " ? (persisted)"
        succeeded, seen, rev = out
        parts = []
        if cmps and succeeded is not None:
            parts.append("succeeded" if succeeded else "failed")
        if seen is not None:
            for r in seen:
                if isinstance(r, tuple) and r[0] is not None:
                    parts.append("{" + ", ".join(f"{kv[0]}={kv[1]!r}" + (f"@{kv[3]}" if kv[3] is not None else "")
                                                  for kv in r[0]) + "}")
                elif isinstance(r, int):
                    parts.append(f"deleted {r}")
        if rev is not None:
            parts.append(f"rev {rev}")
        return s + (" -> " + ", ".join(parts) if parts else "")

    def describe_state(self, state: Any) -> str:
        if not isinstance(state, KVState):
            return repr(state)
        kvs = ", ".join(f"{k}={e[0]!r}@{e[2]}v{e[3]}" for k, e in sorted(state.data.items()))
        return f"rev {state.rev} {{{kvs}}}"

    def why(self, state: Any, req: tuple, out: Any) -> str:
        ok, results, new = _run(state, req)
        after = state if new is None else new
        if out is UNKNOWN:
            return "applying it changes nothing"
        if out[0] == "persisted":
            return f"it persisted at revision {out[1]}, but applying it here gives revision {after.rev}"
        succeeded, seen, rev = out
        if succeeded is not None and succeeded != ok:
            return f"the compare {'succeeded' if succeeded else 'failed'} but here it {'succeeds' if ok else 'fails'}"
        if rev is not None and rev != after.rev:
            return f"response revision {rev}, but here the revision would be {after.rev}"
        return "the response differs from what this state gives: " + repr(results)

    def preserves(self, req: tuple, out: Any) -> bool:
        """Reads, and txns whose recorded branch wrote nothing (no put, deletes of nothing)."""
        if not any(op[0] != "range" for branch in (req[1], req[2]) for op in branch):
            return True
        if out is UNKNOWN or out[0] == "persisted" or out[0] is None:
            return False
        branch = req[1] if out[0] else req[2]
        for n, op in enumerate(branch):
            if op[0] == "put" or (op[0] == "delete" and (out[1] is None or out[1][n] != 0)):
                return False
        return True

    def relax(self, req: tuple, out: Any) -> Any:
        """Reads say nothing; a write with a known revision keeps it (its revision pins it in
        the order, which keeps explaining cheap) and loses its interval."""
        reads_only = not any(op[0] != "range" for branch in (req[1], req[2]) for op in branch)
        if reads_only:
            return None
        if out is not UNKNOWN and out[0] == "persisted" and out[1] is not None:
            return TIMELESS
        if out is not UNKNOWN and out[0] != "persisted" and out[2] is not None:
            return TIMELESS
        return UNKNOWN


def _hide(branch: tuple, hidden) -> tuple:
    """The branch with the put values `hidden(key, value)` says nobody sees made UNOBSERVED
    (the same tuple when none is)."""
    if not any(op[0] == "put" and op[2] is not UNOBSERVED and hidden(op[1], op[2]) for op in branch):
        return branch
    return tuple(("put", op[1], UNOBSERVED) if op[0] == "put" and hidden(op[1], op[2]) else op for op in branch)


def request(invoke: Op) -> tuple | None:
    """The txn (compares, success ops, failure ops) an invoke asks for; None for reads the
    model leaves out (serializable, or at an old revision)."""
    f = invoke.f
    v = invoke.value
    if f == "range":
        opts = v if isinstance(v, dict) else {}
        if opts.get("serializable") or opts.get("revision"):
            return None
        return ((), (("range", _key(invoke), opts.get("end"), int(opts.get("limit") or 0)),), ())
    if f == "put":
        return ((), (("put", _key(invoke), _freeze(v)),), ())
    if f == "delete":
        opts = v if isinstance(v, dict) else {}
        return ((), (("delete", _key(invoke), opts.get("end")),), ())
    if f == "txn":
        return _txn(invoke)
    raise ValueError(f"op {invoke.index}: the kv model has no operation {f!r} (range, put, delete, txn)")


def _describe_req(op: tuple) -> str:
    if op[0] == "range":
        return f"range {op[1]}" + (f"..{op[2]!r}" if op[2] is not None else "") + (f" limit {op[3]}" if op[3] else "")
    if op[0] == "put":
        return f"put {op[1]}={op[2]!r}"
    return f"delete {op[1]}" + (f"..{op[2]!r}" if op[2] is not None else "")


def _key(op: Op) -> str:
    if not isinstance(op.key, str):
        raise ValueError(f"op {op.index}: a kv {op.f} needs a string key, not {op.key!r}")
    return op.key


def _req_op(d: Any, where: str) -> tuple:
    if not isinstance(d, dict) or d.get("f") not in ("range", "put", "delete") or not isinstance(d.get("key"), str):
        raise ValueError(f"{where}: a txn op is {{\"f\": range|put|delete, \"key\": str, ...}}, not {d!r}")
    f = d["f"]
    if f == "range":
        return ("range", d["key"], d.get("end"), int(d.get("limit") or 0))
    if f == "put":
        return ("put", d["key"], _freeze(d.get("value")))
    return ("delete", d["key"], d.get("end"))


def _txn(invoke: Op) -> tuple:
    v = invoke.value
    where = f"op {invoke.index}"
    if not isinstance(v, dict):
        raise ValueError(f"{where}: a txn value is {{\"compare\": [...], \"success\": [...], \"failure\": [...]}}")
    cmps = []
    for c in v.get("compare") or []:
        if not isinstance(c, dict) or c.get("target") not in TARGETS or str(c.get("result", "")).lower() not in _RESULTS:
            raise ValueError(f"{where}: a compare is {{\"key\", \"target\": {'|'.join(TARGETS)}, "
                             f"\"result\": =|!=|<|>, \"value\"}}, not {c!r}")
        want = c.get("value")
        if c["target"] != "value" and not isinstance(want, int):
            raise ValueError(f"{where}: compare on {c['target']} needs an integer value, not {want!r}")
        cmps.append((c["key"], c.get("end"), c["target"], _RESULTS[str(c["result"]).lower()], _freeze(want)))
    succ = tuple(_req_op(d, where) for d in v.get("success") or [])
    fail = tuple(_req_op(d, where) for d in v.get("failure") or [])
    return tuple(cmps), succ, fail


def _kvs(raw: Any, where: str) -> tuple | None:
    if raw is None:
        return None
    out = []
    for kv in raw:
        if not isinstance(kv, dict) or "key" not in kv:
            raise ValueError(f"{where}: a kv is {{\"key\", \"value\", \"create_revision\", \"mod_revision\", \"version\"}}")
        out.append((kv["key"], _freeze(kv.get("value")), kv.get("create_revision"), kv.get("mod_revision"),
                    kv.get("version")))
    return tuple(out)


def _result(raw: Any, op: tuple, where: str) -> Any:
    if raw is None:
        return None
    if op[0] == "range":
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: a range result is {{\"kvs\": [...], \"count\": n}}")
        return (_kvs(raw.get("kvs"), where), raw.get("count"))
    if op[0] == "delete":
        return raw.get("deleted") if isinstance(raw, dict) else None
    return None


def _response(invoke: Op, completion: Op, req: tuple) -> tuple:
    """(succeeded | None, results | None, header revision | None) from an ok completion."""
    where = f"op {completion.index}"
    rev = completion.extra.get("revision") if completion.extra else None
    v = completion.value
    f = invoke.f
    if f == "range":
        if not isinstance(v, dict):
            raise ValueError(f"{where}: a range completes with {{\"kvs\": [...], \"count\": n}}")
        return True, (_result(v, req[1][0], where),), rev
    if f == "put":
        return True, (None,), rev
    if f == "delete":
        return True, (_result(v, req[1][0], where),), rev
    if not isinstance(v, dict) or not isinstance(v.get("succeeded"), bool):
        raise ValueError(f"{where}: a txn completes with {{\"succeeded\": bool, \"results\": [...]}}")
    branch = req[1] if v["succeeded"] else req[2]
    raw = v.get("results")
    if raw is None:
        return v["succeeded"], None, rev
    if len(raw) != len(branch):
        raise ValueError(f"{where}: {len(raw)} results for {len(branch)} ops in the {'success' if v['succeeded'] else 'failure'} branch")
    return v["succeeded"], tuple(_result(r, op, where) for r, op in zip(raw, branch)), rev
