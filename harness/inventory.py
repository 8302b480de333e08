"""Nodes a test runs on, however they were described: the embedded cluster, vagrant, a file, names."""
from __future__ import annotations

from dataclasses import dataclass


class InventoryError(Exception):
    """A bad inventory; the message is one line naming the node or file and the problem."""


@dataclass(frozen=True)
class Node:
    name: str  # n1, n2, ...
    host: str  # where SSH connects
    port: int = 22
    user: str = "root"
    key: str | None = None  # private key file
    address: str | None = None  # the address cluster members use for each other (default: host)
    netns: str | None = None  # set for embedded nodes: the network namespace the node lives in

    @property
    def ip(self) -> str:
        return self.address or self.host

    def __str__(self) -> str:
        return f"{self.name} ({self.user}@{self.host}:{self.port})"
