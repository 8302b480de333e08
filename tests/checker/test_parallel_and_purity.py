"""Partitions checked in worker processes give the same results as in this one; the checker
imports nothing from the harness, the server or the reports."""
from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from checker import linearizable, synth
from checker.history import Op
from checker.linearizable import check
from checker.models import kv_model, register_model

ROOT = Path(__file__).resolve().parents[2]


def summary(r):
    return [(p.key, p.valid, [op.index for op, _ in p.path], p.minimal.ops if p.minimal else None) for p in r.partitions]


def test_workers_agree_with_one_process():
    h = synth.register_history(random.Random(11), 900, processes=6, keys=4, info_rate=0.1)
    n = len(h)
    h += [Op(n, 99, "invoke", "read", None, "r2", time=10**13), Op(n + 1, 99, "ok", "read", 42, "r2", time=10**13 + 1)]
    one = check(h, register_model(), workers=1)
    two = check(h, register_model(), workers=2)
    assert one.workers == 1 and two.workers == 2
    assert one.valid is False and two.valid is False
    assert summary(one) == summary(two)
    assert two.failures[0].key == "r2" and two.failures[0].minimal.ops == [n]


def test_auto_switches_to_workers_only_after_a_while(monkeypatch):
    h = synth.register_history(random.Random(12), 400, processes=4, keys=3)
    assert check(h, register_model()).workers == 1  # quick: stays in this process
    monkeypatch.setattr(linearizable, "PARALLEL_AFTER", 0.0)
    r = check(h, register_model())
    assert r.workers == 2 if linearizable.os.cpu_count() > 1 else 1
    assert r.valid is True and len(r.partitions) == 3


def test_kv_states_cross_process_boundaries():
    """KV states carry per-process string hashes; unpickled they must be rehashed. Checked
    across interpreters with different hash seeds (one process would hash alike anyway), and
    through worker processes (the kv model has one partition, so check() never uses them: the
    pool is called directly with two)."""
    import os
    import subprocess
    import sys

    make = "from checker.kv import KVState, UNOBSERVED; s = KVState(5, {'a': ('1', 2, 5, 2), 'b': (UNOBSERVED, 3, 4, 1)})"
    dump = subprocess.run([sys.executable, "-c", f"import pickle, sys; {make}; sys.stdout.buffer.write(pickle.dumps(s))"],
                          capture_output=True, check=True, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "1"}).stdout
    load = (f"import pickle, sys; {make}; t = pickle.loads(sys.stdin.buffer.read()); "
            "print(t == s and hash(t) == hash(s) and t.data['b'][0] is UNOBSERVED)")
    out = subprocess.run([sys.executable, "-c", load], input=dump, capture_output=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONHASHSEED": "2"}).stdout
    assert out.strip() == b"True"

    model = kv_model()
    groups = [linearizable.operations(synth.kv_history(random.Random(seed), 120, processes=4, keys=3), model)
              for seed in (3, 4)]
    here = [linearizable.check_partition(model, g) for g in groups]
    there = linearizable._check_parallel(model, groups, None, None, 2, 0)
    for a, b in zip(here, there):
        assert a.valid is True and b.valid is True
        assert b.end_state == a.end_state and hash(b.end_state) == hash(a.end_state)
        assert [op.index for op, _ in b.path] == [op.index for op, _ in a.path]


FORBIDDEN = ("harness", "server", "reports", "workloads", "nemesis", "bench")


@pytest.mark.parametrize("path", sorted((ROOT / "checker").glob("*.py")), ids=lambda p: p.name)
def test_checker_imports_nothing_from_the_harness(path):
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        bad += [f"{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert bad == [], f"checker/{path.name} imports {bad}"
