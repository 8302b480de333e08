"""Fault classes by name, as `--nemesis` spells them (`all` is every class, in this order, but
those that need an option of the test: `auth` needs --auth, so it is named, as in `all,auth`)."""
from __future__ import annotations

import importlib
from typing import Callable

from nemesis.base import Nemesis

# name -> "module:Class"; imported when built, so a class's own dependencies load only when asked for
CLASSES: dict[str, str] = {
    "partition": "nemesis.partition:PartitionNemesis",
    "kill": "nemesis.process:KillNemesis",
    "pause": "nemesis.process:PauseNemesis",
    "clock": "nemesis.clock:ClockNemesis",
    "disk": "nemesis.disk:DiskNemesis",
    "net": "nemesis.net:NetNemesis",
    "lost-writes": "nemesis.lostwrites:LostWritesNemesis",
    "member": "nemesis.member:MemberNemesis",
    "admin": "nemesis.admin:AdminNemesis",
    "auth": "nemesis.authchurn:AuthNemesis",
}
NOT_IN_ALL = {"auth"}


def _factory(path: str) -> Callable[[], Nemesis]:
    def make() -> Nemesis:
        module, cls = path.split(":")
        return getattr(importlib.import_module(module), cls)()

    return make


FACTORIES: dict[str, Callable[[], Nemesis]] = {name: _factory(path) for name, path in CLASSES.items()}


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
            out.extend(k for k in FACTORIES if k not in out and k not in NOT_IN_ALL)
            continue
        if n not in FACTORIES:
            raise NemesisSpecError(f"unknown nemesis {n!r}: choose from {', '.join(FACTORIES)}, all or none")
        if n not in out:
            out.append(n)
    return out


def build(names: list[str]) -> list[Nemesis]:
    return [FACTORIES[n]() for n in names]
