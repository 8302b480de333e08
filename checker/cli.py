"""`etcdproof check --model register|kv|mutex HISTORY`: is a recorded history linearizable?

HISTORY is our JSONL (docs/history-format.md), a Jepsen history.edn, or a run directory holding
history.jsonl. Exit code 0 linearizable, 1 not, 2 unknown (budget ran out) or unreadable input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from checker import edn
from checker.history import Op, load_history
from checker.linearizable import DEFAULT_EXPLAIN_LIMIT, CheckResult, PartitionResult, check
from checker.models import MODELS, register_model

EXIT = {True: 0, False: 1, "unknown": 2}
SHOW = 5  # partitions and ops shown in the text report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etcdproof check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("history", help="history.jsonl, history.edn, or a run directory")
    p.add_argument("--model", choices=sorted(MODELS), default="register")
    p.add_argument("--format", choices=["auto", "jsonl", "edn"], default="auto",
                   help="input format (auto: by file name, then by the first character)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="seconds for the verdict; partitions undecided by then are unknown")
    p.add_argument("--explain-limit", type=float, default=DEFAULT_EXPLAIN_LIMIT, metavar="S",
                   help="seconds for finding the minimal set of ops of each failing partition (0: skip)")
    p.add_argument("--workers", type=int, default=None, help="processes for partitions (default: by size)")
    p.add_argument("--cas-fail", choices=["auto", "observe", "ignore"], default="auto",
                   help="register: a cas that failed without an error observed another value (observe), or "
                        "did not happen (ignore, Jepsen's meaning); auto: observe for JSONL, ignore for EDN")
    p.add_argument("--independent", choices=["auto", "yes", "no"], default="auto",
                   help="EDN: values are jepsen.independent [key value] tuples (auto: when all are pairs)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON (docs/checker.md)")
    return p


def read(path: str, fmt: str, independent: str) -> tuple[list[Op], str]:
    """The ops in a history file (or run directory) and the format they were in."""
    if os.path.isdir(path):
        for name in ("history.jsonl", "history.edn"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise ValueError(f"{path}: no history.jsonl or history.edn in this directory")
    if fmt == "auto":
        if path.endswith(".edn"):
            fmt = "edn"
        elif path.endswith(".jsonl") or path.endswith(".json"):
            fmt = "jsonl"
        else:
            with open(path, encoding="utf-8") as f:
                head = f.read(4096).lstrip()
            fmt = "jsonl" if head.startswith('{"') or not head else "edn"
    if fmt == "jsonl":
        return load_history(path), fmt
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ind = {"auto": None, "yes": True, "no": False}[independent]
    return edn.jepsen_ops(text, independent=ind), fmt


def _model(name: str, cas_fail: str, fmt: str) -> Any:
    if name == "register":
        observe = cas_fail == "observe" or (cas_fail == "auto" and fmt == "jsonl")
        return register_model(cas_fail_observes=observe)
    return MODELS[name]()


def describe(r: CheckResult, ops_by_index: dict[int, Op]) -> list[str]:
    """The text report: a line per verdict, and for each failing partition what went wrong."""
    d = r.to_dict()
    c = d["partitions_by_verdict"]
    verdict = {True: "linearizable", False: "NOT linearizable", "unknown": "unknown"}[r.valid]
    lines = [f"{verdict}: model {r.model.name}, {r.op_count:,} ops in {len(r.partitions):,} partitions "
             f"({c['valid']} valid, {c['invalid']} invalid, {c['unknown']} unknown), {r.elapsed:.3f} s"
             + (f", {r.workers} workers" if r.workers > 1 else "")]
    for p in r.failures[:SHOW]:
        lines += _failure(r, p, ops_by_index)
    if len(r.failures) > SHOW:
        lines.append(f"... and {len(r.failures) - SHOW} more failing partitions (--json has them all)")
    undecided = [p for p in r.partitions if p.valid == "unknown"]
    for p in undecided[:SHOW]:
        lines.append(f"partition {p.key!r}: unknown ({p.reason}); {sum(1 for o, _ in p.path if o.required)} of "
                     f"{sum(1 for o in p.ops if o.required)} ops linearized when it stopped")
    return lines


def _failure(r: CheckResult, p: PartitionResult, ops_by_index: dict[int, Op]) -> list[str]:
    m = r.model
    done = sum(1 for o, _ in p.path if o.required)
    lines = [f"partition {p.key!r}: not linearizable; the longest linearizable prefix has {done} of "
             f"{sum(1 for o in p.ops if o.required)} ops"]
    if p.path:
        lines.append("  it ends with:")
        for op, after in p.path[-3:]:
            lines.append(f"    op {op.index} (process {op.process}) {m.describe_op(op.input, op.output)}"
                         f"  -> {m.describe_state(after)}")
    lines.append(f"  then, in state {m.describe_state(p.end_state)}, none of these could go next:")
    for op, why in p.blocked[:SHOW]:
        lines.append(f"    op {op.index} (process {op.process}) {m.describe_op(op.input, op.output)}: {why}")
    if len(p.blocked) > SHOW:
        lines.append(f"    ... and {len(p.blocked) - SHOW} more")
    if p.minimal is not None:
        mm = p.minimal
        start = "" if mm.initial == "initial" else f", starting from {mm.initial}"
        how = "minimal" if mm.complete else "small, not proven minimal"
        if mm.by_rule is not None and mm.window == (None, None):  # explain.confirm's fallback
            how = f"as the rule {mm.by_rule!r} named them; not checked alone by a search"
        lines.append(f"  ops to look at ({how}{start}): "
                     + (", ".join(map(str, mm.ops)) or "none by timing"))
        if mm.critical and mm.critical != mm.ops:
            lines.append("  ops whose results cannot all be right: " + ", ".join(map(str, mm.critical)))
        mine = {o.index: o for o in p.ops}
        for i in sorted(set(mm.ops) | set(mm.critical))[:2 * SHOW]:
            o = mine.get(i)
            if o is None:
                continue
            comp = ops_by_index.get(o.completion) if o.completion is not None else None
            end = f"{comp.type} at {comp.time / 1e9:.6f} s" if comp is not None else "never completed"
            lines.append(f"    op {i} (process {o.process}) {m.describe_op(o.input, o.output)}: "
                         f"invoked at {o.call_time / 1e9:.6f} s, {end}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        history, fmt = read(args.history, args.format, args.independent)
        model = _model(args.model, args.cas_fail, fmt)
        result = check(history, model, time_limit=args.time_limit, workers=args.workers,
                       explain_limit=args.explain_limit)
    except (OSError, ValueError) as e:
        print(f"etcdproof check: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(result.to_dict(), sys.stdout, default=str)
        sys.stdout.write("\n")
    else:
        print("\n".join(describe(result, {op.index: op for op in history})))
    return EXIT[result.valid]


if __name__ == "__main__":
    sys.exit(main())
