"""Workloads by name, as `-w` spells them."""
from __future__ import annotations

from typing import Callable

from workloads import bank, lock, watch
from workloads.base import Workload
from workloads.register import RegisterWorkload

FACTORIES: dict[str, Callable[[], Workload]] = {
    "register": RegisterWorkload,
    **bank.FACTORIES,
    **watch.FACTORIES,
    **lock.FACTORIES,
}


def build(name: str) -> Workload:
    if name not in FACTORIES:
        raise ValueError(f"unknown workload {name!r}: choose from {', '.join(FACTORIES)}")
    return FACTORIES[name]()
