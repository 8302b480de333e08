"""Op schedules: pure, seeded, reproducible functions from (worker, step) to the op to invoke.

A workload gives an `OpSource` per worker; the runner asks it for the next op and tells it how
the previous one ended. No clocks and no shared state: the same seed gives every worker the same
sequence of ops whatever the timing, which makes a run's schedule reproducible.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class OpTemplate:
    f: str
    key: str | None
    value: Any


class OpSource(Protocol):
    def next(self) -> OpTemplate: ...


def worker_rng(seed: int, worker: int) -> random.Random:
    """Each worker's own random stream, a pure function of the run seed and its number."""
    return random.Random((seed * 1_000_003) ^ (worker * 7919) ^ 0x5EED)


class RegisterOps:
    """Independent registers: reads, writes and compare-and-sets over a sliding window of keys.

    Each worker moves through keys in windows: its i-th op touches a key of window
    i // ops_per_key, so every key sees a bounded number of ops (which keeps checking it cheap),
    and all workers share each window at about the same time (which makes ops on a key concurrent).
    """

    def __init__(self, seed: int, worker: int, keys_per_window: int = 4, ops_per_key: int = 60,
                 values: int = 5, read_fraction: float = 0.5, write_fraction: float = 0.25) -> None:
        self.rng = worker_rng(seed, worker)
        self.i = 0
        self.keys_per_window = keys_per_window
        self.ops_per_key = ops_per_key
        self.values = values
        self.read_fraction = read_fraction
        self.write_fraction = write_fraction

    def next(self) -> OpTemplate:
        window = self.i // self.ops_per_key
        self.i += 1
        key = f"r{window * self.keys_per_window + self.rng.randrange(self.keys_per_window)}"
        x = self.rng.random()
        if x < self.read_fraction:
            return OpTemplate("read", key, None)
        if x < self.read_fraction + self.write_fraction:
            return OpTemplate("write", key, self.rng.randrange(self.values))
        return OpTemplate("cas", key, [self.rng.randrange(self.values), self.rng.randrange(self.values)])
