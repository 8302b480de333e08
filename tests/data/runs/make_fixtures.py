"""Make the report fixtures: three short real runs on the embedded cluster, then trimmed.

    .venv/bin/python tests/data/runs/make_fixtures.py [OUT_DIR [valid|unknown ...]]
    (as root; default: beside this file, all of them; invalid is made with valid)

- valid:   register on the reference server under clock and kill faults, retried with the next
           seed until every checker passes (a run this short may see no successful cas, which the
           stats checker calls invalid) and a clock bump was applied (the clock plot's data);
- invalid: a copy of the valid run with one violation planted: the last read that followed a
           completed write of another value on its key is made to return an older value (a stale
           read), then re-checked; test.json says which op was changed. (Real runs that lose
           writes, such as --unsafe-no-fsync under the lost-writes fault, are not reliably caught
           in a run this short, so the fixture does not depend on one);
- unknown: register on real etcd under partitions, interrupted (SIGINT to this process) after 60
           ops of the main phase, so it is not checked.

Trimming keeps what a report reads (test.json, history.jsonl, results.json) and the last lines of
each node's log; the data tarballs go. The reports are rendered by the tests, not stored.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from harness import store  # noqa: E402
from harness.db import DBConfig, make_db  # noqa: E402
from harness.inventory import load  # noqa: E402
from harness.runner import Runner, TestSpec, run_sync  # noqa: E402
from nemesis import registry as nemeses  # noqa: E402
from workloads import registry as workloads  # noqa: E402


def run(inv, root: Path, name: str, db: str, nemesis: list[str], seed: int, extra: list[str] | None = None,
        interrupt_after_ops: int | None = None, time_limit: float = 10.0):
    nodes = inv.nodes[:3]
    remotes = {n.name: inv.remotes[n.name] for n in nodes}
    base = random.Random(seed).randrange(21000, 28000, 10)
    # a base dir of our own: other sessions on the same embedded nodes use the default one
    cfg = DBConfig(base_dir="/var/lib/etcdproof-fixtures", client_port=base, peer_port=base + 1, http_port=base + 2,
                   extra_flags=list(extra or []))
    spec = TestSpec(workload="register", db=db, nemesis=nemesis, nodes=inv.kind, time_limit=time_limit,
                    rate=30, seed=seed, nemesis_interval=2.5, name=name)
    run_dir = store.new_run_dir(root, spec.test_name())
    asked: list[bool] = []

    def progress(line: str) -> None:  # SIGINT once the main phase has done enough ops
        if interrupt_after_ops and not asked and line.startswith("running") and \
                int(line.split(": ", 1)[1].split(" ", 1)[0]) >= interrupt_after_ops:
            asked.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    runner = Runner(spec, nodes, remotes, make_db(db, nodes, remotes, cfg), workloads.build("register"),
                    nemeses.build(nemesis), run_dir, can_partition=inv.can_partition,
                    why_not_partition=inv.why_not_partition, control_ip=inv.control_ip, on_progress=progress)
    return run_sync(runner)


def trim(run_dir: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in (store.TEST_JSON, store.HISTORY, store.RESULTS):
        if (run_dir / f).exists():
            shutil.copy(run_dir / f, dest / f)
    for node in sorted((run_dir / "nodes").glob("*")):
        log = node / "server.log"
        if log.exists():
            (dest / "nodes" / node.name).mkdir(parents=True)
            lines = log.read_text(errors="replace").splitlines()[-12:]
            (dest / "nodes" / node.name / "server.log").write_text("\n".join(lines) + "\n")


def plant_stale_read(src: Path, dest: Path) -> None:
    """dest = src with its last stale-able read changed to an older value, re-checked."""
    from checker.history import INVOKE, OK, HistoryWriter, load_history
    from harness.runner import run_checkers

    trim(src, dest)
    history = load_history(str(dest / store.HISTORY))
    invoked = {}
    done_writes: dict[str, list[tuple[int, object]]] = {}  # key -> (completion time, value) of ok writes
    candidates = []
    for op in history:
        if op.process == "nemesis":
            continue
        if op.type == INVOKE:
            invoked[op.process] = op
            continue
        inv = invoked.pop(op.process, None)
        if op.type != OK or inv is None:
            continue
        if op.f == "write":
            done_writes.setdefault(op.key, []).append((op.time, op.value))
        elif op.f == "read":
            before = [v for t, v in done_writes.get(op.key, []) if t < inv.time]
            older = [v for v in before[:-1] if v != before[-1]] if before else []
            if older and op.value == before[-1]:
                candidates.append((op, older[-1]))
    for op, stale in reversed(candidates):  # the latest read whose change the checker catches
        seen, op.value = op.value, stale
        results = run_checkers(workloads.build("register"), history)
        if results["valid"] is False:
            break
        op.value = seen
    else:
        raise SystemExit("no read to plant a stale value in")
    note = f"planted: op {op.index} (a read of {op.key}) returned {seen!r}; changed to the older {stale!r}"
    with open(dest / store.HISTORY, "w", encoding="utf-8") as f:
        w = HistoryWriter(f)
        for o in history:
            w.write(o)
    test = store.read_json(dest / store.TEST_JSON)
    test.update(name="fixture-invalid", note=note)
    test["spec"]["name"] = "fixture-invalid"
    store.write_json(dest / store.TEST_JSON, test)
    store.write_json(dest / store.RESULTS, results)
    print(note)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    which = set(sys.argv[2:]) or {"valid", "unknown"}
    root = Path("/tmp/etcdproof-fixture-store")
    inv = load("local")
    try:
        for seed in range(11, 19) if "valid" in which else ():
            o = run(inv, root, "fixture-valid", "reference", ["clock", "kill"], seed=seed)
            clocked = '"f":"start-clock","value":{"mode":"bump"' in (o.run_dir / store.HISTORY).read_text()
            print("valid?", o.valid, "clock bumped" if clocked else "no clock bump", o.run_dir)
            if o.valid is True and clocked:
                trim(o.run_dir, out / "valid")
                plant_stale_read(out / "valid", out / "invalid")
                break
        if "unknown" in which:
            o = run(inv, root, "fixture-unknown", "etcd", ["partition"], seed=31, interrupt_after_ops=60,
                    time_limit=30.0)
            print("unknown:", o.valid, o.interrupted, o.run_dir)
            trim(o.run_dir, out / "unknown")
    finally:
        inv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
