"""Raft's safety and liveness under thousands of seeded random schedules (tests/raftsim.py).

Why: the scripted scenarios (test_raft_scripts.py) show the behaviour in the cases we thought
of; the simulator looks for the ones we did not. Each run drives in-memory nodes through a
seeded schedule of message delays, drops, duplicates and reorders, partitions (including
one-way and bridged ones), crashes at every point of Ready handling, process pauses,
membership changes, snapshots, reads and leadership transfers, checking election safety, vote
safety, log matching, leader completeness, state-machine safety, durability of commits and
linearizable reads after every step. A failure's first line is the command that replays it.

Budget: most seeds run short (the first elections and their aftermath, where most protocol
corner cases live), a handful run long; hypothesis draws further (seed, size, fault mix)
combinations. The liveness test checks that once the faults stop a leader is elected and a
proposal commits within a bound. The mutation tests break raft on purpose to prove the checks
can fail.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftsim import PRESETS, Faults, Sim, SimFailure
from server.raft import raft as raft_mod
from server.raft.log import RaftLog
from server.raft.types import NONE

ROOT = Path(__file__).resolve().parent.parent


def run_seeds(seeds: range, nodes: int, steps: int, preset: str, liveness: bool = False) -> list[dict]:
    out = []
    for seed in seeds:
        out.append(Sim(seed, nodes, steps, Faults.parse(preset), liveness).run())
    return out


# ============================================================================ the sweep
# (preset, node counts, seeds per node count, steps): about 2,000 short runs
SWEEP = [
    ("default", (1, 2, 3, 4, 5), 130, 240),
    ("net", (2, 3, 5), 100, 240),
    ("crash", (1, 3, 4, 5), 100, 240),
    ("churn", (1, 2, 3, 5), 100, 240),
    ("chaos", (3, 4, 5), 90, 240),
]


@pytest.mark.parametrize("preset,counts,per,steps", SWEEP, ids=[s[0] for s in SWEEP])
def test_short_runs(preset: str, counts: tuple, per: int, steps: int) -> None:
    """Any safety violation raises (its first line replays it); the totals show that the runs
    did elect leaders, commit and read, i.e. that the sweep is not vacuous."""
    base = 1000 * (1 + list(PRESETS).index(preset))
    total: Counter = Counter()
    runs = 0
    for n in counts:
        for stats in run_seeds(range(base, base + per), n, steps, preset):
            total.update(stats)
            runs += 1
    assert total["elections"] >= 0.9 * runs and total["applied"] >= 0.9 * runs, (runs, total)
    assert total["reads_served"] > 0.3 * runs, (runs, total)
    assert total["early_applied"] > 0, total  # answers before the disk write were exercised
    if preset in ("churn", "chaos"):
        assert total["confs_applied"] > 0 and total["snapshots_installed"] > 0, total


@pytest.mark.parametrize("preset,nodes,seed", [
    ("default", 3, 7), ("default", 5, 8), ("chaos", 5, 9), ("churn", 3, 10), ("net", 4, 11), ("crash", 5, 12),
])
def test_long_runs(preset: str, nodes: int, seed: int) -> None:
    stats = Sim(seed, nodes, 3000, Faults.parse(preset)).run()
    # a long run gets somewhere: several leaders, committed values
    assert stats["elections"] >= 2 and stats["applied"] >= 5, stats


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    nodes=st.integers(1, 5),
    drop=st.sampled_from([0.0, 0.05, 0.2]),
    dup=st.sampled_from([0.0, 0.05, 0.2]),
    delay=st.sampled_from([0.0, 0.3]),
    crash=st.sampled_from([0.0, 0.02, 0.06]),
    ready_crash=st.sampled_from([0.0, 0.01, 0.05]),
    partition=st.sampled_from([0.0, 0.03, 0.08]),
    pause=st.sampled_from([0.0, 0.03]),
    conf=st.sampled_from([0.0, 0.02, 0.05]),
    snapshot=st.sampled_from([0.0, 0.03]),
    transfer=st.sampled_from([0.0, 0.02]),
    split_ready=st.sampled_from([0.0, 0.5]),
)
def test_hypothesis_fault_mix(seed: int, nodes: int, **mix: float) -> None:
    f = Faults(**mix)
    Sim(seed, nodes, 250, f).run()


# ============================================================================ liveness
def test_liveness_after_faults_stop() -> None:
    """After the nemesis stops, the network heals and crashed nodes restart, a proposal commits
    within a bound (every run checks this; here we also look at how long it takes)."""
    ticks = []
    stalls = 0
    for preset in ("default", "net", "crash", "chaos"):
        for seed in range(40):
            st_ = Sim(5000 + seed, 1 + seed % 5, 300, Faults.parse(preset), liveness=True).run()
            if st_.get("stalled_by_removal"):
                stalls += 1
                continue
            ticks.append(st_["liveness_ticks"])
    election = Faults().election
    assert len(ticks) >= 150 and stalls <= 4, (len(ticks), stalls)
    assert max(ticks) <= 12 * election, sorted(ticks)[-10:]
    assert statistics.median(ticks) <= 2 * election, statistics.median(ticks)


def test_liveness_without_membership_changes_never_stalls() -> None:
    """The one tolerated stall needs a node removed from the cluster (see Sim.stalled_by_removal)."""
    f = Faults.parse("chaos")
    f.conf = 0.0
    for seed in range(60):
        st_ = Sim(7000 + seed, 2 + seed % 4, 300, f, liveness=True).run()
        assert "stalled_by_removal" not in st_ and st_["liveness_ticks"] >= 0


# ============================================================================ the harness itself
def test_same_seed_same_run() -> None:
    a, b = Sim(42, 5, 600, Faults.parse("chaos")), Sim(42, 5, 600, Faults.parse("chaos"))
    assert a.run() == b.run()
    assert a.events() == b.events()


def test_repro_line_runs_from_the_command_line() -> None:
    sim = Sim(3, 3, 200, Faults.parse("churn"))
    line = sim.repro()
    assert line == "python -m tests.raftsim --seed 3 --nodes 3 --steps 200 --faults churn"
    args = line.split()[3:]
    out = subprocess.run([sys.executable, "-m", "tests.raftsim", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("seed 3: ok"), out.stdout + out.stderr


def test_fault_spec_round_trips() -> None:
    f = Faults(drop=0.2, conf=0.05, max_delay=5)
    assert Faults.parse(f.spec()) == f
    assert Faults.parse("chaos") == PRESETS["chaos"] and PRESETS["chaos"].spec() == "chaos"


# ============================================================================ mutation tests
def _bad_vote(monkeypatch: pytest.MonkeyPatch) -> None:
    """Votes ignore how up to date the candidate's log is."""
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)


def _forget_vote(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that becomes a follower forgets whom it voted for in this term."""
    orig = raft_mod.Raft.become_follower

    def become_follower(self: raft_mod.Raft, term: int, lead: int) -> None:
        orig(self, term, lead)
        self.vote = NONE

    monkeypatch.setattr(raft_mod.Raft, "become_follower", become_follower)


def _read_without_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader answers reads from its own commit index without confirming its leadership."""
    monkeypatch.setattr(raft_mod.Raft, "_start_read", lambda self, m: self._answer_read(m, self.log.committed))


def _append_without_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower appends after any index it has, whatever the term there."""

    def maybe_append(self: RaftLog, index: int, log_term: int, committed: int, ents: list) -> int | None:
        if index > self.last_index():
            return None
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise RuntimeError("conflict with a committed entry")
            self.append(ents[ci - index - 1:])
        self.commit_to(min(committed, index + len(ents)))
        return index + len(ents)

    monkeypatch.setattr(RaftLog, "maybe_append", maybe_append)


# each with the fault mix that finds it soonest
MUTANTS = {"bad-vote": (_bad_vote, "chaos"), "forget-vote": (_forget_vote, "default"),
           "read-without-heartbeat": (_read_without_heartbeat, "crash"),
           "append-without-match": (_append_without_match, "chaos")}


@pytest.mark.parametrize("name", MUTANTS)
def test_checks_catch_injected_bugs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mutate, preset = MUTANTS[name]
    mutate(monkeypatch)
    for seed in range(400):
        nodes = 3 + seed % 3
        try:
            Sim(seed, nodes, 400, Faults.parse(preset), liveness=False).run()
        except SimFailure as e:
            first = str(e).splitlines()[0]
            faults = "" if preset == "default" else f" --faults {preset}"
            assert first == f"python -m tests.raftsim --seed {seed} --nodes {nodes} --steps 400{faults} --no-liveness"
            return
    pytest.fail(f"mutant {name} survived 400 seeds")
