"""The raft log in memory: a snapshot point, then entries; what is persisted, committed, applied.

Invariants: snap_index <= applied <= committed <= last_index; entries[i] has index
snap_index + 1 + i; stabled <= last_index (entries after stabled still need persisting).
The application persists (Ready.entries) and compacts (compact) it; raft only reads and appends.
"""
from __future__ import annotations

from server.raft.types import Entry, Snapshot, SnapshotMeta


class CompactedError(Exception):
    """The index is at or below the snapshot point: only a snapshot can bring a peer past it."""


class UnavailableError(Exception):
    """The index is beyond the last entry."""


class RaftLog:
    def __init__(self, snapshot: SnapshotMeta, entries: list, committed: int, applied: int) -> None:
        self.snap = snapshot
        self.entries: list = list(entries)  # list[Entry]
        if self.entries and self.entries[0].Index != snapshot.index + 1:
            raise ValueError(f"first entry {self.entries[0].Index} does not follow snapshot {snapshot.index}")
        self.committed = max(committed, snapshot.index)
        self.applied = max(applied, snapshot.index)
        self.stabled = self.last_index()
        self.pending_snapshot: Snapshot | None = None  # received, not yet persisted

    def __str__(self) -> str:
        return (f"log[{self.snap.index}@{self.snap.term}..{self.last_index()} stabled={self.stabled} "
                f"committed={self.committed} applied={self.applied}]")

    # ---------------------------------------------------------------- reading
    def first_index(self) -> int:
        return self.snap.index + 1

    def last_index(self) -> int:
        return self.snap.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].Term if self.entries else self.snap.term

    def term(self, i: int) -> int:
        if i == self.snap.index:
            return self.snap.term
        if i < self.snap.index:
            raise CompactedError(i)
        if i > self.last_index():
            raise UnavailableError(i)
        return self.entries[i - self.snap.index - 1].Term

    def term_or_zero(self, i: int) -> int:
        try:
            return self.term(i)
        except (CompactedError, UnavailableError):
            return 0

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except (CompactedError, UnavailableError):
            return False

    def slice(self, lo: int, hi: int, max_bytes: int = 0) -> list:
        """Entries [lo, hi), at least one, at most about max_bytes (0 = no limit)."""
        if lo <= self.snap.index:
            raise CompactedError(lo)
        hi = min(hi, self.last_index() + 1)
        out = self.entries[lo - self.snap.index - 1 : hi - self.snap.index - 1]
        if max_bytes and len(out) > 1:
            size = 0
            for n, e in enumerate(out):
                size += e.ByteSize()
                if size > max_bytes and n > 0:
                    return out[:n]
        return out

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a candidate's log (last index, last term) is at least as new as ours."""
        return term > self.last_term() or (term == self.last_term() and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= index whose term is <= term (to skip a whole conflicting term)."""
        while index > self.snap.index:
            t = self.term(index)
            if t <= term:
                return index
            index -= 1
        return index

    def unstable_entries(self) -> list:
        return self.entries[self.stabled - self.snap.index :] if self.stabled < self.last_index() else []

    def next_committed(self) -> list:
        """Entries committed but not yet handed out for applying."""
        lo = max(self.applied + 1, self.first_index())
        if lo > self.committed:
            return []
        return self.entries[lo - self.snap.index - 1 : self.committed - self.snap.index]

    def has_next_committed(self) -> bool:
        return self.committed > max(self.applied, self.snap.index)

    # ---------------------------------------------------------------- writing
    def append(self, ents: list) -> int:
        """Append entries, truncating any existing entries from the first one's index on."""
        if not ents:
            return self.last_index()
        after = ents[0].Index - 1
        if after < self.committed:
            raise RuntimeError(f"append after {after} would overwrite committed {self.committed}")
        del self.entries[after - self.snap.index :]
        self.entries.extend(ents)
        self.stabled = min(self.stabled, after)
        return self.last_index()

    def find_conflict(self, ents: list) -> int:
        """Index of the first entry that is new or conflicts with ours (0: all already here)."""
        for e in ents:
            if not self.match_term(e.Index, e.Term):
                return e.Index
        return 0

    def maybe_append(self, index: int, log_term: int, committed: int, ents: list) -> int | None:
        """A leader's append after (index, log_term): returns the last new index, or None."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise RuntimeError(f"entry {ci} conflicts with committed entry (committed {self.committed})")
            self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, i: int) -> None:
        if i > self.committed:
            if i > self.last_index():
                raise RuntimeError(f"commit {i} beyond last index {self.last_index()}")
            self.committed = i

    def applied_to(self, i: int) -> None:
        if i > self.committed or i < self.applied:
            raise RuntimeError(f"applied {i} outside [{self.applied}, {self.committed}]")
        self.applied = i

    def stable_to(self, i: int, t: int) -> None:
        """Entries up to i were persisted (unless that entry was replaced meanwhile)."""
        if self.match_term(i, t) and i > self.stabled:
            self.stabled = i

    def restore(self, s: Snapshot) -> None:
        """Replace everything with a snapshot received from the leader."""
        self.snap = s.meta
        self.entries = []
        self.committed = s.meta.index
        self.applied = min(self.applied, s.meta.index)
        self.stabled = s.meta.index
        self.pending_snapshot = s

    def snapshot_applied(self, index: int) -> None:
        """The application persisted and installed the pending snapshot."""
        if self.pending_snapshot is not None and self.pending_snapshot.meta.index == index:
            self.pending_snapshot = None
            self.applied = max(self.applied, index)

    def compact(self, index: int, meta: SnapshotMeta) -> None:
        """Drop entries up to index (the application holds their effect in a snapshot)."""
        if index <= self.snap.index:
            return
        if index > self.applied:
            raise RuntimeError(f"compact {index} beyond applied {self.applied}")
        del self.entries[: index - self.snap.index]
        self.snap = meta
