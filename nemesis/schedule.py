"""The nemesis schedule: faults start and stop at an interval, each recorded as history ops.

Each fault is a pair of ops from process "nemesis": f = start-<fault>, then stop-<fault>. The
completion is `ok` with the evidence as its value when the fault applied, `fail` with the
reason when it was refused, `info` when an error left it unknown (the class is then healed at
once, recorded as its stop; so is a stop that ends `info`, before the class can start again).
At the end (and on any exit path) `heal_all` undoes every fault class, also recorded; a fault
applied when the schedule is cancelled is undone there, in heal order, not by its lane. Remote
commands are blocking, so each runs in a thread; a cancelled schedule waits for a command in
flight to finish before it heals, so a heal never races the fault it undoes.

Composition, after Jepsen's combined nemesis: `concurrent` lanes run side by side, each
alternating wait / start / wait / stop over the classes drawn from a shuffled bag, so several
fault classes can be active at once (a partition during a clock bump during a disk slowdown),
but one class is never started twice at the same time. Lane i starts interval * i / lanes after
the first (staggered starts), and every wait is the interval scaled by a uniform 0.75..1.25. A
class refused as `permanent` (it can never apply on these nodes) is recorded once and leaves the
bag; other refusals are asked again in later rounds (no leader right now, no server running).
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

# the final heal goes from the network outwards: traffic flows, processes run and clocks are right
# before crashed servers restart, and members come back last (they need a quorum to be re-added)
HEAL_ORDER = ("partition", "net", "pause", "disk", "clock", "lost-writes", "kill", "member", "admin", "auth")


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


def heal_order(nemeses: list[Nemesis]) -> list[Nemesis]:
    """The classes in the order the final heal undoes them (unknown classes first, last added first)."""
    rank = {name: i for i, name in enumerate(HEAL_ORDER)}
    unknown = [n for n in reversed(nemeses) if n.name not in rank]
    return unknown + sorted((n for n in nemeses if n.name in rank), key=lambda n: rank[n.name])


class Schedule:
    def __init__(self, ctx: NemesisContext, nemeses: list[Nemesis], interval: float, record: Record,
                 rng: random.Random, concurrent: int = 1) -> None:
        if concurrent < 1:
            raise ValueError(f"nemesis concurrency must be at least 1, not {concurrent}")
        self.ctx = ctx
        self.nemeses = nemeses
        self.interval = interval
        self.record = record
        self.rng = rng
        self.concurrent = concurrent
        self.active: list[str] = []  # fault classes currently applied (for the progress display)
        self.refused: dict[str, str] = {}
        self.dropped: set[str] = set()  # refused for good: never drawn again
        self._busy: set[str] = set()  # drawn by a lane (waiting to start, or applied)
        self._bag: list[Nemesis] = []

    async def _op(self, f: str, fn: Callable[[], dict]) -> Op:
        self.record(Op(0, NEMESIS, INVOKE, f))
        try:
            evidence = await _in_thread(fn)
            return self.record(Op(0, NEMESIS, OK, f, value=evidence))
        except FaultRefused as e:
            extra = {"permanent": True} if getattr(e, "permanent", False) else {}
            return self.record(Op(0, NEMESIS, FAIL, f, error=f"refused: {e}", extra=extra))
        except asyncio.CancelledError:
            self.record(Op(0, NEMESIS, INFO, f, error="interrupted"))
            raise
        except Exception as e:  # noqa: BLE001 - a failed fault is recorded, then healed
            log.warning("%s failed: %s", f, e)
            return self.record(Op(0, NEMESIS, INFO, f, error=f"{type(e).__name__}: {e}"))

    def _draw(self) -> Nemesis | None:
        """The next class from the shuffled bag that no lane holds; None if every one is busy."""
        for refill in (False, True):
            if refill:
                self._bag = [n for n in self.nemeses if n.name not in self.dropped]
                self.rng.shuffle(self._bag)
            for i in range(len(self._bag) - 1, -1, -1):
                nem = self._bag[i]
                if nem.name not in self._busy and nem.name not in self.dropped:
                    del self._bag[i]
                    self._busy.add(nem.name)
                    return nem
        return None

    def _wait(self) -> float:
        return self.interval * self.rng.uniform(0.75, 1.25)

    async def run(self) -> None:
        """Run the lanes until cancelled. A lane cancelled while its fault is applied leaves it to
        heal_all, which the caller runs next (the runner always does)."""
        if not self.nemeses:
            return
        lanes = min(self.concurrent, len(self.nemeses))
        tasks = [asyncio.ensure_future(self._lane(i, lanes)) for i in range(lanes)]
        try:
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            # the gather passed the cancellation on to every lane but returns at once: wait for each
            # to finish its command in flight and its stop, so no fault is applied during the heal
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _lane(self, i: int, lanes: int) -> None:
        await asyncio.sleep(self.interval * i / lanes)
        while True:
            if len(self.dropped) == len({n.name for n in self.nemeses}):
                return  # nothing can apply here: the refusals are in the history
            nem = self._draw()
            if nem is None:
                await asyncio.sleep(self.interval / 4)
                continue
            try:
                await self._cycle(nem)
            finally:
                self._busy.discard(nem.name)

    async def _cycle(self, nem: Nemesis) -> None:
        """Wait, start one fault of nem's class, wait, stop it (also when cancelled meanwhile)."""
        await asyncio.sleep(self._wait())
        started = await self._op(f"start-{nem.name}", lambda: nem.start(self.ctx))
        if started.type == FAIL:
            self.refused[nem.name] = (started.error or "").removeprefix("refused: ")
            if (started.extra or {}).get("permanent"):
                self.dropped.add(nem.name)
            return
        if started.type == INFO:  # it may be half applied: undo the class now rather than at the end
            await self._op(f"stop-{nem.name}", lambda: nem.heal(self.ctx))
            return
        self.active.append(nem.name)
        try:
            await asyncio.sleep(self._wait())
        except asyncio.CancelledError:
            # the schedule is ending: heal_all undoes every class next, network first and members
            # last. Stopping here instead would run this class's undo under whatever the other
            # lanes still apply (re-adding a member through a degraded network waited 30 s in vain)
            self.active.remove(nem.name)
            raise
        stopped = await self._op(f"stop-{nem.name}", lambda: nem.stop(self.ctx))
        self.active.remove(nem.name)
        if stopped.type == INFO:  # half undone: heal the class before a lane may start it again
            await self._op(f"stop-{nem.name}", lambda: nem.heal(self.ctx))

    async def heal_all(self) -> list[Op]:
        """Undo every fault class (idempotent), network first, members last; recorded as stop
        ops. Never raises."""
        out = []
        for nem in heal_order(self.nemeses):
            out.append(await self._op(f"stop-{nem.name}", lambda nem=nem: nem.heal(self.ctx)))
        self.active.clear()
        return out
