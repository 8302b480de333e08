"""free_port hands out listening ports that an outgoing connection cannot steal.

A CI run lost a real-etcd cluster to "bind: address already in use": the port had been picked
with bind(0), from the ephemeral range, and a connection's source port took it before etcd
bound it. Ports now come from below that range.
"""
from __future__ import annotations

import socket

from harness import localproc
from harness.localproc import free_port


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    floor = localproc._ephemeral_floor()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(localproc._PORT_FLOOR <= p < min(floor, localproc._PORT_TOP) for p in ports)
    assert not {2379, 2380} & set(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_someone_listens_on_is_never_handed_out(monkeypatch) -> None:
    held = []
    try:
        # take most of a small window, then ask: only the free ones may come back
        monkeypatch.setattr(localproc, "_PORT_FLOOR", 15_000)
        monkeypatch.setattr(localproc, "_PORT_TOP", 16_200)
        for port in range(15_000, 16_190):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.listen(1)
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        got = free_port()
        assert got not in taken and 15_000 <= got < 16_200
    finally:
        for s in held:
            s.close()
