"""Per-key revision history: generations of revisions, as etcd's key index keeps them.

A generation runs from a key's creation to its deletion (the tombstone is its last revision);
the last generation is the live one, empty while the key does not exist. `ver` is the version
of the generation's last revision, so the version of revs[i] is ver - (len(revs) - 1 - i).
"""
from __future__ import annotations

from bisect import bisect_right
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
        i = bisect_right(g.revs, Revision(at_main, 1 << 62)) - 1
        if i < 0:
            return None
        return g.revs[i], g.created, g.version_at(i)

    def revisions_since(self, main: int) -> list[Revision]:
        """Every revision (puts and tombstones) with main revision >= main, oldest first."""
        out = []
        for g in self.generations:
            out.extend(r for r in g.revs if r.main >= main)
        return out

    def compact(self, at_main: int, keep: set[Revision]) -> None:
        """Forget history before at_main, keeping the key's state at at_main.

        The latest revision <= at_main of a generation still alive at at_main goes into keep;
        generations deleted by at_main disappear entirely (their tombstone included).
        """
        gens = self.generations
        i = 0
        while i < len(gens) - 1 and gens[i].revs[-1].main <= at_main:
            i += 1
        g = gens[i]
        if not g.is_empty():
            j = bisect_right(g.revs, Revision(at_main, 1 << 62)) - 1
            if j >= 0:
                keep.add(g.revs[j])
                del g.revs[:j]
        del gens[:i]

    def is_empty(self) -> bool:
        return len(self.generations) == 1 and self.generations[0].is_empty()
