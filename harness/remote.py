"""Remotes: how the harness acts on a node. One small protocol, after Jepsen's Remote.

Everything the harness does to a node (install, start, kill, iptables, tc, clocks) goes through
`run`, `upload`, `download` and the daemon helpers, so the same code drives VMs over SSH, the
embedded cluster's namespaces (also over SSH, to their own sshd) and, without root, plain local
processes. Implementations: `harness.ssh.SSHRemote` (paramiko) and `harness.ssh.LocalRemote`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class RemoteError(Exception):
    """A command could not be run on a node, or failed when it had to succeed.

    The message is one line naming the node and the problem (unreachable host, refused key,
    timeout, the command's exit code and the tail of its stderr).
    """


@dataclass(frozen=True)
class Result:
    cmd: str
    exit: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.exit == 0


@runtime_checkable
class Remote(Protocol):
    """A connection to one node. Commands are shell strings run as root (sudo when needed)."""

    node: str  # the node's name, for messages

    def run(self, cmd: str, timeout: float = 60.0, check: bool = True, stdin: str | None = None) -> Result:
        """Run cmd; RemoteError if it cannot be run, times out, or (check) exits non-zero."""
        ...

    def upload(self, local: str, remote: str) -> None: ...

    def download(self, remote: str, local: str) -> None: ...

    def start_daemon(self, argv: list[str], logfile: str, pidfile: str,
                     env: dict[str, str] | None = None, cwd: str | None = None) -> int:
        """Start argv detached (own session, stdin from /dev/null, output appended to logfile),
        write its pid to pidfile, return the pid. Refuses if pidfile names a live process."""
        ...

    def daemon_pid(self, pidfile: str) -> int | None:
        """The pid in pidfile if that process is alive (a zombie or a reused pid counts as dead)."""
        ...

    def signal_daemon(self, pidfile: str, sig: int) -> bool:
        """Send sig to the daemon of pidfile; False if it was not running."""
        ...

    def close(self) -> None: ...
