"""Models for the linearizability checker: pure sequential specifications, Porcupine-shaped.

A model turns each history op pair into a model operation (`prepare`), says which partition it
belongs to (`partition_key`; P-compositionality: partitions are checked independently), steps a
state (`step(state, input, output) -> (ok, new state)`; states must be hashable and compare by
value), and describes ops and states for people (`describe_op`, `describe_state`, `why`), which
only the reports and explanations use.

Outputs of operations that may or may not have taken effect are UNKNOWN. Stepping one must
accept only if applying it changes something: "applied with no effect" is the same as "never
happened", which the search already covers, so rejecting it keeps the search small.

Op conventions per workload are in docs/history-format.md.
"""
from __future__ import annotations

from typing import Any, Hashable

from checker.history import FAIL, INFO, OK, Op

Prepared = tuple[Any, Any, bool]  # (input, output, required)


class _Unknown:
    """The output of an operation that may or may not have taken effect."""

    _instance: "_Unknown | None" = None

    def __new__(cls) -> "_Unknown":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self) -> str:
        return "UNKNOWN"  # pickles as the module global: identity survives worker processes


UNKNOWN = _Unknown()


class AnyOf:
    """A state standing for any one of `values` (every state when None): where explanations
    start after cutting off the beginning of a history. Models that accept it over-approximate:
    whatever is possible from one of the values is possible from AnyOf."""

    __slots__ = ("values",)

    def __init__(self, values: frozenset | None = None) -> None:
        self.values = values

    def __hash__(self) -> int:
        return hash(("AnyOf", self.values))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnyOf) and self.values == other.values

    def __repr__(self) -> str:
        if self.values is None:
            return "any"
        return "any of {" + ", ".join(sorted(map(_fmt, self.values))) + "}"

    def admits(self, v: Any) -> bool:
        return self.values is None or v in self.values

    def without(self, v: Any) -> "AnyOf":
        if self.values is None:
            return self
        return AnyOf(self.values - {v})


ANY = AnyOf()  # any state at all

TIMELESS = "timeless"  # Model.relax: keep the result, free the op from its interval


class Model:
    """Base class: the defaults every model shares. Subclasses set name and override step."""

    name = "model"

    def init(self) -> Hashable:
        return None

    def prepare(self, invoke: Op, completion: Op | None) -> Prepared | None:
        """(input, output, required) for one op, or None to leave it out (it certainly had no
        effect and observed nothing). Raises ValueError for an op the model cannot read."""
        raise NotImplementedError

    def partition_key(self, invoke: Op, inp: Any) -> Hashable:
        return invoke.key

    def partitions(self, ops: list) -> list[list]:
        """Groups of operations checked independently, by partition key."""
        groups: dict = {}
        for op in ops:
            groups.setdefault(op.key, []).append(op)
        return list(groups.values())

    def refine(self, ops: list) -> list:
        """A chance to use what the whole partition reveals about uncertain ops (see kv)."""
        return ops

    def canonical(self, ops: list) -> list:
        """Copies of the ops to search instead of them, the same ones in the same order, that
        have exactly the same linearizations (and accepted orders) as the real ones but make
        more of them interchangeable (see kv: values nobody observed). The search runs on
        these; what reports show is replayed from the real ops. Default: the ops themselves."""
        return ops

    def refute(self, ops: list) -> Any:
        """A cheap proof that the (refined) partition is not linearizable, checked before the
        search: an object with `rule`, `why` and `ops` (see checker.kvrefute), or None to let
        the search decide. It may only answer when that is certain."""
        return None

    def step(self, state: Any, inp: Any, out: Any) -> tuple[bool, Any]:
        raise NotImplementedError

    def relax(self, inp: Any, out: Any) -> Any:
        """How explanations loosen an op they leave out of a minimal set: UNKNOWN (it may or may
        not have happened, with any result), None (it says nothing: reads), or TIMELESS (it
        happened as recorded, at any time: cheaper to search where results pin the order)."""
        return UNKNOWN

    def any_state(self, ops: list) -> Any:
        """An AnyOf covering every state these ops could leave, if step() accepts one; else
        None (explanations then never cut off the beginning of a history)."""
        return None

    def preserves(self, inp: Any, out: Any) -> bool:
        """True if every step that accepts this op leaves the state as it was (reads)."""
        return False

    # Optional pruning (see checker.wgl.search): progress(state) never decreases along a
    # linearization; limit(input, output) is the most progress possible just before the op;
    # dead(state, input, output): no state reachable from this one accepts the op.
    # advances: every accepted step of an optional op increases progress.
    progress = None
    limit = None
    dead = None
    advances = False

    def describe_op(self, inp: Any, out: Any) -> str:
        return f"{inp!r} -> {out!r}"

    def describe_state(self, state: Any) -> str:
        return repr(state)

    def why(self, state: Any, inp: Any, out: Any) -> str:
        """Why step(state, inp, out) is rejected, for a person."""
        return f"not possible in state {self.describe_state(state)}"


def _status(completion: Op | None) -> str:
    return INFO if completion is None else completion.type


def _fmt(v: Any) -> str:
    return "nil" if v is None else repr(v)


def _pair(op: Op, what: str) -> tuple[Any, Any]:
    v = op.value
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"op {op.index}: {what} value must be [expected, new], not {v!r}")
    return v[0], v[1]


class RegisterModel(Model):
    """A register per key: read, write, compare-and-set. The key is absent (None) at first.

    A cas that completed with type fail and no error is a failed compare: it observed a value
    other than the expected one (etcd evaluates compares linearizably). With an error it
    certainly did not happen and is left out, as are failed writes and reads.
    """

    name = "register"

    def __init__(self, initial: Any = None, cas_fail_observes: bool = True) -> None:
        self.initial = initial
        self.cas_fail_observes = cas_fail_observes

    def init(self) -> Hashable:
        return self.initial

    def prepare(self, invoke: Op, completion: Op | None) -> Prepared | None:
        t = _status(completion)
        f = invoke.f
        if f == "read":
            return (("r",), completion.value, True) if t == OK else None
        if f == "write":
            if t == FAIL:
                return None
            return ("w", invoke.value), (None if t == OK else UNKNOWN), t == OK
        if f == "cas":
            e, n = _pair(invoke, "cas")
            if t == OK:
                return ("cas", e, n), True, True
            if t == FAIL:
                if completion.error is None and self.cas_fail_observes:
                    return ("cas", e, n), False, True
                return None
            return ("cas", e, n), UNKNOWN, False
        raise ValueError(f"op {invoke.index}: the register model has no operation {f!r} (read, write, cas)")

    def step(self, state: Any, inp: tuple, out: Any) -> tuple[bool, Any]:
        k = inp[0]
        if k == "r":
            if out == state:
                return True, state
            if state.__class__ is AnyOf and out is not UNKNOWN and state.admits(out):
                return True, out
            return False, state
        if k == "w":
            return True, inp[1]
        if state.__class__ is AnyOf:
            if out is False:
                rest = state.without(inp[1])
                return rest.values is None or bool(rest.values), rest
            return state.admits(inp[1]), inp[2]
        if out is False:
            return state != inp[1], state
        if state == inp[1]:
            return True, inp[2]
        return False, state

    def relax(self, inp: tuple, out: Any) -> Any:
        return None if inp[0] == "r" else UNKNOWN

    def preserves(self, inp: tuple, out: Any) -> bool:
        return inp[0] == "r" or out is False

    def any_state(self, ops: list) -> Any:
        values = {self.initial}
        for op in ops:
            if op.input[0] == "w":
                values.add(op.input[1])
            elif op.input[0] == "cas":
                values.add(op.input[2])
        try:
            return AnyOf(frozenset(values))
        except TypeError:  # unhashable values
            return ANY

    def describe_op(self, inp: tuple, out: Any) -> str:
        k = inp[0]
        if k == "r":
            return f"read {_fmt(out)}"
        if k == "w":
            return f"write {_fmt(inp[1])}" + (" ?" if out is UNKNOWN else "")
        what = f"cas {_fmt(inp[1])}->{_fmt(inp[2])}"
        return what + {True: "", False: " failed", UNKNOWN: " ?"}.get(out, f" {out!r}")

    def describe_state(self, state: Any) -> str:
        return _fmt(state)

    def why(self, state: Any, inp: tuple, out: Any) -> str:
        k = inp[0]
        if k == "r":
            return f"read {_fmt(out)} but the register holds {_fmt(state)}"
        if k == "cas":
            if out is False:
                return f"the compare failed but the register holds the expected {_fmt(state)}"
            return f"the compare needs {_fmt(inp[1])} but the register holds {_fmt(state)}"
        return super().why(state, inp, out)


class VersionedRegisterModel(Model):
    """A register whose writes are stamped with etcd revisions (per key: mod_revision).

    State: (value, version, version_floor, floor). `version` is the mod_revision of the value
    held, or None when it was written by a request whose response was lost (then it is known
    only to exceed version_floor). `floor` is the highest revision this key's ops have shown so
    far: revisions follow the linearization order, so a write must get a higher one and a read's
    header revision may not go below it. Reads identify the write they saw by mod_revision when
    the history records it (extra.mod_revision), which makes checking much cheaper.
    """

    name = "versioned-register"

    def init(self) -> Hashable:
        return (None, 0, 0, 0)

    def prepare(self, invoke: Op, completion: Op | None) -> Prepared | None:
        t = _status(completion)
        f = invoke.f
        extra = completion.extra if completion is not None else {}
        rev = extra.get("revision")
        if f == "read":
            if t != OK:
                return None
            return ("r",), (completion.value, extra.get("mod_revision"), rev), True
        if f == "write":
            if t == FAIL:
                return None
            return ("w", invoke.value), (rev if t == OK else UNKNOWN), t == OK
        if f == "cas":
            e, n = _pair(invoke, "cas")
            if t == OK:
                return ("cas", e, n), (True, rev), True
            if t == FAIL:
                return (("cas", e, n), (False, rev), True) if completion.error is None else None
            return ("cas", e, n), UNKNOWN, False
        raise ValueError(f"op {invoke.index}: the versioned register model has no operation {f!r}")

    def relax(self, inp: tuple, out: Any) -> Any:
        return None if inp[0] == "r" else UNKNOWN

    def step(self, state: tuple, inp: tuple, out: Any) -> tuple[bool, Any]:
        value, ver, ver_floor, floor = state
        k = inp[0]
        if k == "r":
            v, mod, header = out
            if v != value or (header is not None and header < floor):
                return False, state
            if header is not None:
                floor = header
            if mod is not None:
                if ver is None:
                    if mod <= ver_floor or (header is not None and mod > header):
                        return False, state
                    ver = ver_floor = mod
                elif mod != ver:
                    return False, state
            return True, (value, ver, ver_floor, floor)
        if k == "w":
            if out is UNKNOWN:
                return True, (inp[1], None, floor, floor)
            if out is not None and out <= floor:
                return False, state
            if out is None:
                return True, (inp[1], None, floor, floor)
            return True, (inp[1], out, out, out)
        # cas
        if out is UNKNOWN:
            return (True, (inp[2], None, floor, floor)) if value == inp[1] else (False, state)
        succeeded, rev = out
        if not succeeded:
            if value == inp[1] or (rev is not None and rev < floor):
                return False, state
            return True, (value, ver, ver_floor, floor if rev is None else rev)
        if value != inp[1] or (rev is not None and rev <= floor):
            return False, state
        if rev is None:
            return True, (inp[2], None, floor, floor)
        return True, (inp[2], rev, rev, rev)

    def progress(self, state: tuple) -> int:
        return state[3]

    def limit(self, inp: tuple, out: Any) -> int | None:
        if out is UNKNOWN or out is None:
            return None
        k = inp[0]
        if k == "r":
            return out[2]
        if k == "w":
            return out - 1
        succeeded, rev = out
        if rev is None:
            return None
        return rev - 1 if succeeded else rev

    def describe_op(self, inp: tuple, out: Any) -> str:
        k = inp[0]
        if k == "r":
            v, mod, header = out
            s = f"read {_fmt(v)}"
            return s + (f" @{mod}" if mod is not None else "") + (f" (rev {header})" if header is not None else "")
        if k == "w":
            return f"write {_fmt(inp[1])}" + (" ?" if out is UNKNOWN else f" @{out}" if out is not None else "")
        what = f"cas {_fmt(inp[1])}->{_fmt(inp[2])}"
        if out is UNKNOWN:
            return what + " ?"
        return what + ("" if out[0] else " failed") + (f" (rev {out[1]})" if out[1] is not None else "")

    def describe_state(self, state: tuple) -> str:
        value, ver, ver_floor, floor = state
        v = f"@{ver}" if ver is not None else f"@>{ver_floor}"
        return f"{_fmt(value)} {v} (rev >= {floor})"


class MutexModel(Model):
    """A lock per key: acquire and release by a process. State: the holder's process or None.

    A failed acquire or release did not happen. An acquire that timed out may have taken the
    lock (and then its process, which never invokes again, holds it for good). A release whose
    invoke names a holder (extra["holder"]) releases on that process's behalf: the lock
    checker's lease expiries, which may happen while the holder's acquire is still open.
    """

    name = "mutex"

    def prepare(self, invoke: Op, completion: Op | None) -> Prepared | None:
        t = _status(completion)
        if invoke.f not in ("acquire", "release"):
            raise ValueError(f"op {invoke.index}: the mutex model has no operation {invoke.f!r} (acquire, release)")
        if t == FAIL:
            return None
        who = invoke.extra.get("holder", invoke.process) if invoke.f == "release" else invoke.process
        return (invoke.f, who), (None if t == OK else UNKNOWN), t == OK

    def step(self, state: Any, inp: tuple, out: Any) -> tuple[bool, Any]:
        f, who = inp
        if f == "acquire":
            return (True, who) if state is None or state.__class__ is AnyOf else (False, state)
        return (True, None) if state == who or state.__class__ is AnyOf else (False, state)

    def any_state(self, ops: list) -> Any:
        return ANY

    def describe_op(self, inp: tuple, out: Any) -> str:
        return f"{inp[0]}" + (" ?" if out is UNKNOWN else "")

    def describe_state(self, state: Any) -> str:
        return "free" if state is None else f"held by {state}"

    def why(self, state: Any, inp: tuple, out: Any) -> str:
        if inp[0] == "acquire":
            return f"acquire by {inp[1]} but the lock is {self.describe_state(state)}"
        return f"release by {inp[1]} but the lock is {self.describe_state(state)}"


def register_model(initial: Any = None, cas_fail_observes: bool = True) -> RegisterModel:
    return RegisterModel(initial, cas_fail_observes)


def versioned_register_model() -> VersionedRegisterModel:
    return VersionedRegisterModel()


def mutex_model() -> MutexModel:
    return MutexModel()


def kv_model(per_key: bool = False) -> Model:
    from checker.kv import KVModel

    return KVModel(per_key=per_key)


MODELS = {
    "register": register_model,
    "versioned-register": versioned_register_model,
    "mutex": mutex_model,
    "kv": kv_model,
}
