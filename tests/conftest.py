"""Shared fixtures: real server processes on free loopback ports, cleaned up however a test ends."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import pytest

from harness.localproc import LocalCluster, LocalMember, have_etcd

_started: list[LocalMember] = []


def start_member(kind: str, workdir: str, **kw) -> LocalMember:
    if kind == "etcd" and not have_etcd():
        pytest.skip("real etcd not installed (Debian package etcd-server); `make test` installs it")
    m = LocalMember(kind, workdir, **kw)
    _started.append(m)
    return m.start()


@pytest.fixture
def member_factory(tmp_path):
    """start(kind, **kw) -> a running LocalMember in its own directory; all stopped afterwards."""
    mine: list[LocalMember] = []
    counter = iter(range(1000))

    def start(kind: str = "reference", **kw) -> LocalMember:
        m = start_member(kind, str(tmp_path / f"{kind}-{next(counter)}"), **kw)
        mine.append(m)
        return m

    yield start
    for m in mine:
        m.stop(timeout=5)


@pytest.fixture
def ref_server(member_factory) -> LocalMember:
    return member_factory("reference")


@pytest.fixture
def etcd_server(member_factory) -> LocalMember:
    return member_factory("etcd")


@pytest.fixture
def cluster_factory(tmp_path) -> Iterator[Callable[..., LocalCluster]]:
    """make(kind, size=3, extra=()) -> a started LocalCluster; every process stopped afterwards.

    Teardown SIGKILLs every member ever started (members added later included), also when the
    test or the cluster's start failed: the quickest sure stop, paused processes included;
    clean stops are tested where they matter."""
    made: list[LocalCluster] = []

    def make(kind: str, size: int = 3, extra: Sequence[str] = ()) -> LocalCluster:
        if kind == "etcd" and not have_etcd():
            pytest.skip("real etcd not installed (Debian package etcd-server); `make test` installs it")
        c = LocalCluster(kind, str(tmp_path / f"{kind}-{len(made)}"), size, extra=list(extra))
        made.append(c)
        return c.start()

    yield make
    for c in made:
        for m in c.members:
            try:
                m.kill()
            except Exception:  # noqa: BLE001 - go on stopping the rest
                pass


@pytest.fixture(params=["reference", "etcd"])
def any_server(request, member_factory) -> LocalMember:
    """The same test against the reference server and against real etcd."""
    return member_factory(request.param)


def pytest_sessionfinish(session, exitstatus):
    for m in _started:
        try:
            m.kill()
        except Exception:
            pass
