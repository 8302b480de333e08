"""The nemesis schedule: faults start and stop at an interval, each recorded as history ops.

Each fault is a pair of ops from process "nemesis": f = start-<fault>, then stop-<fault>. The
completion is `ok` with the evidence as its value when the fault applied, `fail` with the
reason when it was refused, `info` when an error left it unknown. At the end (and on any exit
path) `heal_all` undoes every fault class, also recorded. Remote commands are blocking, so
each runs in a thread; a cancelled schedule waits for a command in flight to finish before it
heals, so a heal never races the fault it undoes.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Callable

from checker.history import FAIL, INFO, INVOKE, NEMESIS, OK, Op
from nemesis.base import FaultRefused, Nemesis, NemesisContext

log = logging.getLogger("etcdproof.nemesis")
Record = Callable[[Op], Op]  # writes an op to the history (assigns index and time)


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run fn in a thread; if cancelled meanwhile, let it finish first, then re-raise."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        try:
            await fut
        except Exception:  # noqa: BLE001 - the cancellation is what propagates
            pass
        raise


class Schedule:
    def __init__(self, ctx: NemesisContext, nemeses: list[Nemesis], interval: float, record: Record,
                 rng: random.Random) -> None:
        self.ctx = ctx
        self.nemeses = nemeses
        self.interval = interval
        self.record = record
        self.rng = rng
        self.active: list[str] = []  # fault classes currently applied (for the progress display)
        self.refused: dict[str, str] = {}

    async def _op(self, f: str, fn: Callable[[], dict]) -> Op:
        self.record(Op(0, NEMESIS, INVOKE, f))
        try:
            evidence = await _in_thread(fn)
            return self.record(Op(0, NEMESIS, OK, f, value=evidence))
        except FaultRefused as e:
            return self.record(Op(0, NEMESIS, FAIL, f, error=f"refused: {e}"))
        except asyncio.CancelledError:
            self.record(Op(0, NEMESIS, INFO, f, error="interrupted"))
            raise
        except Exception as e:  # noqa: BLE001 - a failed fault is recorded, then healed at the end
            log.warning("%s failed: %s", f, e)
            return self.record(Op(0, NEMESIS, INFO, f, error=f"{type(e).__name__}: {e}"))

    async def run(self) -> None:
        """Alternate: wait, start a fault, wait, stop it; until cancelled."""
        if not self.nemeses:
            return
        order: list[Nemesis] = []
        while True:
            if not order:
                order = list(self.nemeses)
                self.rng.shuffle(order)
            nem = order.pop()
            await asyncio.sleep(self.interval * self.rng.uniform(0.75, 1.25))
            started = await self._op(f"start-{nem.name}", lambda: nem.start(self.ctx))
            if started.type == FAIL:
                self.refused[nem.name] = (started.error or "").removeprefix("refused: ")
                continue
            self.active.append(nem.name)
            try:
                await asyncio.sleep(self.interval * self.rng.uniform(0.75, 1.25))
            finally:
                if started.type == OK:
                    await self._op(f"stop-{nem.name}", lambda: nem.stop(self.ctx))
                self.active.remove(nem.name)

    async def heal_all(self) -> list[Op]:
        """Undo every fault class (idempotent); recorded as stop ops. Never raises."""
        out = []
        for nem in reversed(self.nemeses):
            out.append(await self._op(f"stop-{nem.name}", lambda nem=nem: nem.heal(self.ctx)))
        self.active.clear()
        return out
