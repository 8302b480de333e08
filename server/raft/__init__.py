"""Raft as a pure state machine, in the style of etcd's raft library.

`Raft.step(message)` is the one entry point (local actions are messages too), `tick()` is the
only notion of time, and `ready()` / `advance()` hand the application what to persist, send and
apply, in that order. Nothing here does I/O, reads a clock or draws randomness of its own (the
random source is injected), so the same code runs in the server and in seeded simulations.
May import only server.proto (entry and conf-change encodings) and the standard library's pure
modules.
"""
from server.raft.raft import Config, ProposalDropped, Raft
from server.raft.types import (
    CAMPAIGN_TRANSFER,
    ConfState,
    Message,
    MsgType,
    Ready,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "CAMPAIGN_TRANSFER", "Config", "ConfState", "Message", "MsgType", "ProposalDropped", "Raft", "Ready",
    "ReadState", "Role", "Snapshot", "SnapshotMeta", "SoftState",
]
