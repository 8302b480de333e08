"""`python -m bench checker`: how fast the linearizability checker decides generated histories.

The histories come from checker.synth (linearizable by construction, ops widened around their
linearization points, timed-out ops taking effect inside or after their interval or never), so
every verdict should be True; anything else within the time limit is reported as it is. The
"corrupt" cases (run only with --only corrupt) change one response of such a history
(checker.synth.corrupt_kv: a revision one off, a value nobody wrote, a txn outcome flipped, by
seed), so most verdicts should be False. Cases
(issue 5): 1,000 ops / 5 processes / 10% indeterminate; 10,000 ops over 10 keys / 20 processes
(10% indeterminate); one key with 50 concurrent clients. Each for the register and the etcd KV
model. Time is wall clock of check() (history -> verdict, explanations included when there is
one); memory is the peak of Python allocations during a second, traced run (tracemalloc).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass

from checker import synth
from checker.linearizable import check
from checker.kv import KVModel
from checker.models import kv_model, register_model


@dataclass
class Case:
    name: str
    model: str  # register | kv
    ops: int
    processes: int
    keys: int
    info_rate: float
    target_s: float | None = None
    corrupt: bool = False  # one response corrupted per history (synth.corrupt_kv; kind by seed)


CASES = [
    Case("1k ops, 5 procs, 10% info", "register", 1_000, 5, 1, 0.10, 0.050),
    Case("1k ops, 5 procs, 10% info", "kv", 1_000, 5, 10, 0.10, 0.050),
    Case("10k ops, 10 keys, 20 procs, 10% info", "register", 10_000, 20, 10, 0.10, 5.0),
    Case("10k ops, 10 keys, 20 procs, 10% info", "kv", 10_000, 20, 10, 0.10, 5.0),
    Case("1 key, 50 procs, 2k ops, 10% info", "register", 2_000, 50, 1, 0.10),
    Case("1 key, 50 procs, 2k ops, 10% info", "kv", 2_000, 50, 1, 0.10),
    # not linearizable (mostly): one corrupted response each, the kind cycling with the seed
    Case("corrupt 1k ops, 5 procs, 10% info", "kv", 1_000, 5, 10, 0.10, corrupt=True),
    Case("corrupt 3k ops, 20 procs, 10% info", "kv", 3_000, 20, 10, 0.10, corrupt=True),
    Case("corrupt 10k ops, 20 procs, 10% info", "kv", 10_000, 20, 10, 0.10, corrupt=True),
]


def history(case: Case, seed: int) -> list:
    rng = random.Random(seed)
    if case.model == "register":
        return synth.register_history(rng, case.ops, processes=case.processes, keys=case.keys,
                                      info_rate=case.info_rate)
    h = synth.kv_history(rng, case.ops, processes=case.processes, keys=case.keys, info_rate=case.info_rate)
    if case.corrupt:
        h = synth.corrupt_kv(rng, h, synth.CORRUPTIONS[seed % len(synth.CORRUPTIONS)])
    return h


class _SearchOnly(KVModel):
    """The KV model without its pre-search refutation (checker.kvrefute), to measure its cost."""

    def refute(self, ops):
        return None


PREPASS = True


def model(case: Case):
    if case.model == "register":
        return register_model()
    return kv_model() if PREPASS else _SearchOnly()


def run_case(case: Case, seeds: int, time_limit: float, workers: int | None) -> dict:
    times, verdicts, steps, caches = [], [], [], []
    peak = 0
    for seed in range(seeds):
        h = history(case, seed)
        gc.collect()
        t = time.perf_counter()
        r = check(h, model(case), time_limit=time_limit, workers=workers)
        times.append(time.perf_counter() - t)
        verdicts.append(r.valid)
        steps.append(sum(p.steps for p in r.partitions))
        caches.append(sum(p.cache_size for p in r.partitions))
        if seed == 0:  # memory on one history, traced separately (tracing slows everything)
            gc.collect()
            tracemalloc.start()
            check(h, model(case), time_limit=time_limit, workers=1)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        wk = r.workers
    return {
        "case": case.name, "model": case.model, "ops": case.ops, "processes": case.processes, "keys": case.keys,
        "info_rate": case.info_rate, "seeds": seeds, "workers": wk,
        "median_s": statistics.median(times), "max_s": max(times), "verdicts": [str(v) for v in verdicts],
        "median_steps": int(statistics.median(steps)), "median_cache": int(statistics.median(caches)),
        "peak_mib": peak / 2**20, "target_s": case.target_s,
    }


def row(r: dict) -> str:
    counts = {v: r["verdicts"].count(v) for v in dict.fromkeys(r["verdicts"])}
    verdicts = ", ".join(f"{n}x {v}" for v, n in counts.items())
    target = ""
    if r["target_s"] is not None:
        target = f"{'meets' if r['max_s'] <= r['target_s'] else 'misses'} {r['target_s'] * 1000:g} ms"
    return (f"| {r['case']} | {r['model']} | {r['workers']} | {r['median_s'] * 1000:,.1f} | {r['max_s'] * 1000:,.1f} | "
            f"{verdicts} | {r['median_steps']:,} | {r['median_cache']:,} | {r['peak_mib']:.1f} | {target} |")


HEAD = ("| case | model | workers | median ms | max ms | verdicts | steps | cache entries | peak MiB | target |\n"
        "|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench checker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="histories per case (seeds 0..N-1)")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per check")
    p.add_argument("--workers", type=int, default=None, help="processes per check (default: by size)")
    p.add_argument("--only", default="", help="comma-separated substrings of case names or models to run "
                   "(\"corrupt\": the not-linearizable KV cases, which run only when named)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--no-prepass", action="store_true",
                   help="KV: skip the necessary-condition pre-pass (checker.kvrefute), search only")
    args = p.parse_args(argv)
    global PREPASS
    PREPASS = not args.no_prepass
    wanted = args.only.split(",") if args.only else [""]
    cases = [c for c in CASES if any(s in f"{c.name} {c.model}" and (not c.corrupt or "corrupt" in s) for s in wanted)]
    print(f"# {platform.node()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.seeds} seeds, time limit {args.time_limit:g} s"
          + (", KV pre-pass off" if args.no_prepass else ""))
    print(HEAD)
    results = []
    for c in cases:
        r = run_case(c, args.seeds, args.time_limit, args.workers)
        results.append(r)
        print(row(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
