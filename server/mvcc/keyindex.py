"""Per-key revision history: generations of revisions, as etcd's key index keeps them.

A generation runs from a key's creation to its deletion (the tombstone is its last revision);
the last generation is the live one, empty while the key does not exist. `ver` is the version
of the generation's last revision, so the version of revs[i] is ver - (len(revs) - 1 - i).
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from server.mvcc.revision import Revision


class KeyIndexError(Exception):
    """The index was asked for something impossible (a tombstone on a deleted key)."""


@dataclass(slots=True)
class Generation:
    created: Revision = Revision(0, 0)
    ver: int = 0
    revs: list[Revision] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not self.revs

    def version_at(self, i: int) -> int:
        return self.ver - (len(self.revs) - 1 - i)

    def __str__(self) -> str:
        return f"g{{created={self.created}, ver={self.ver}, revs=[{', '.join(map(str, self.revs))}]}}"


class KeyIndex:
    """Generations of one key. Invariant: generations is never empty; only the last may be empty."""

    __slots__ = ("key", "modified", "generations")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.modified = Revision(0, 0)
        self.generations: list[Generation] = [Generation()]

    def __str__(self) -> str:
        gens = " ".join(str(g) for g in self.generations)
        return f"{self.key!r} modified={self.modified} {gens}"

    def put(self, rev: Revision) -> None:
        if rev <= self.modified:
            raise KeyIndexError(f"put {rev} not after modified {self.modified} on {self.key!r}")
        g = self.generations[-1]
        if g.is_empty():
            g.created = rev
        g.revs.append(rev)
        g.ver += 1
        self.modified = rev

    def restore(self, created: Revision, modified: Revision, ver: int) -> None:
        """Start a live generation from backend data, where compaction may have removed its start."""
        g = self.generations[-1]
        if not g.is_empty():
            raise KeyIndexError(f"restore on live key {self.key!r}")
        g.created, g.ver, g.revs = created, ver, [modified]
        self.modified = modified

    def restore_tombstone(self, rev: Revision) -> None:
        """A tombstone from backend data whose generation's puts were compacted away: a dead
        one-revision generation, so that a later compaction knows about it."""
        g = self.generations[-1]
        if not g.is_empty() or rev <= self.modified:
            raise KeyIndexError(f"restore of tombstone {rev} on {self.key!r} out of order")
        g.created, g.ver, g.revs = rev, 0, [rev]
        self.generations.append(Generation())
        self.modified = rev

    def tombstone(self, rev: Revision) -> None:
        if self.generations[-1].is_empty():
            raise KeyIndexError(f"tombstone on deleted key {self.key!r}")
        self.put(rev)
        self.generations.append(Generation())

    def is_live(self) -> bool:
        return not self.generations[-1].is_empty()

    def _find_generation(self, at_main: int) -> Generation | None:
        """The generation that holds the key's state at main revision at_main, if it existed."""
        last = len(self.generations) - 1
        for i in range(last, -1, -1):
            g = self.generations[i]
            if g.is_empty():
                continue
            if i != last and g.revs[-1].main <= at_main:
                return None  # deleted at or before at_main, not re-created since
            if g.revs[0].main <= at_main:
                return g
        return None

    def get(self, at_main: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of the key as of main revision at_main, or None."""
        g = self._find_generation(at_main)
        if g is None:
            return None
        revs = g.revs
        if revs[-1].main <= at_main:  # the latest state (every write asks this): no search
            return revs[-1], g.created, g.ver
        i = bisect_right(revs, Revision(at_main, 1 << 62)) - 1
        if i < 0:
            return None
        return g.revs[i], g.created, g.version_at(i)

    def revisions_since(self, main: int) -> list[Revision]:
        """Every revision (puts and tombstones) with main revision >= main, oldest first."""
        out = []
        for g in self.generations:
            out.extend(r for r in g.revs if r.main >= main)
        return out

    def _compaction(self, at_main: int) -> tuple[int, list[tuple[int, int]], list[Revision]]:
        """What compacting at at_main does: (generations dropped from the front,
        [(generation, revisions dropped from its front)], revisions kept).

        Only history before at_main goes (etcd's API: superseded revisions *less than* the
        compaction revision): a generation deleted before at_main disappears, tombstone
        included; every revision at at_main stays, tombstones too, since a watcher may start at
        at_main (etcd lost such deletes until it fixed etcd-io/etcd#18089); a generation with
        nothing at at_main keeps its latest earlier revision, the key's value at at_main.
        """
        gens = self.generations
        i = 0
        while i < len(gens) - 1 and gens[i].revs[-1].main < at_main:
            i += 1
        trims: list[tuple[int, int]] = []
        kept: list[Revision] = []
        for gi in range(i, len(gens)):
            revs = gens[gi].revs
            if not revs or revs[0].main > at_main:
                break  # (a key deleted and re-created at at_main has two such generations)
            hi = bisect_right(revs, Revision(at_main, 1 << 62))
            lo = bisect_left(revs, Revision(at_main, 0))
            start = lo if lo < hi else hi - 1
            kept.extend(revs[start:hi])
            trims.append((gi, start))
        return i, trims, kept

    def compact(self, at_main: int, keep: set[Revision]) -> None:
        """Forget history before at_main, keeping the key's state at at_main and its changes at
        at_main; the revisions the backend must keep go into keep."""
        i, trims, kept = self._compaction(at_main)
        for gi, start in trims:
            del self.generations[gi].revs[:start]
        del self.generations[:i]
        keep.update(kept)

    def keep(self, at_main: int, keep: set[Revision]) -> None:
        """Add to keep the revisions compact(at_main) would keep, changing nothing (for HashKV)."""
        keep.update(self._compaction(at_main)[2])

    def is_empty(self) -> bool:
        return len(self.generations) == 1 and self.generations[0].is_empty()
