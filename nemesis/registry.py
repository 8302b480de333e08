"""Fault classes by name, as `--nemesis` spells them."""
from __future__ import annotations

from typing import Callable

from nemesis.base import Nemesis
from nemesis.process import KillNemesis, PauseNemesis


def _partition() -> Nemesis:
    from nemesis.partition import PartitionNemesis

    return PartitionNemesis()


FACTORIES: dict[str, Callable[[], Nemesis]] = {
    "partition": _partition,
    "kill": KillNemesis,
    "pause": PauseNemesis,
}


class NemesisSpecError(ValueError):
    pass


def parse(spec: str | list[str] | None) -> list[str]:
    """'partition,kill' -> ['partition', 'kill']; 'all' -> every class; '', 'none' -> []."""
    names = spec if isinstance(spec, list) else [s.strip() for s in (spec or "").split(",") if s.strip()]
    out: list[str] = []
    for n in names:
        if n == "none":
            continue
        if n == "all":
            out.extend(k for k in FACTORIES if k not in out)
            continue
        if n not in FACTORIES:
            raise NemesisSpecError(f"unknown nemesis {n!r}: choose from {', '.join(FACTORIES)}, all or none")
        if n not in out:
            out.append(n)
    return out


def build(names: list[str]) -> list[Nemesis]:
    return [FACTORIES[n]() for n in names]
