"""Lost unsynced writes: lwfs's page overlay on its own, then the real FUSE filesystem on an
embedded node with a small writer program (unsynced data gone after the crash, synced data
kept), then servers on it: the reference server loses nothing acknowledged when every member
crashes at once, and the same server with --unsafe-no-fsync is caught losing acknowledged writes.
"""
from __future__ import annotations

import asyncio
import textwrap
import time

import pytest

from harness.client import ClientError, EtcdClient
from nemesis import lostwrites as L
from nemesis.lwfs import PAGE, Overlay
from nemesis.process import proc_state
from nemesis_support import cluster

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------ the overlay
def test_overlay_keeps_writes_until_sync_and_drops_them_on_crash(tmp_path):
    ov = Overlay(str(tmp_path))
    (tmp_path / "a").write_bytes(b"A" * 5000)
    (tmp_path / "b").write_bytes(b"")
    ov.write("/a", b"xyz", 4095)  # across a page boundary
    ov.write("/b", b"hello", 0)
    assert ov.read("/a", 10, 4090) == b"AAAAAxyzAA"
    assert ov.size("/b") == 5 and (tmp_path / "b").read_bytes() == b""  # not on disk yet
    assert ov.sync("/b") == 5 and (tmp_path / "b").read_bytes() == b"hello"
    ov.write("/b", b"world, longer", 5)
    ov.truncate("/a", 100)
    assert ov.size("/a") == 100 and ov.read("/a", 200, 0) == b"A" * 100
    dropped = ov.crash()
    assert set(dropped) == {"/a", "/b"} and dropped["/a"]["size_change"]
    assert ov.read("/a", 10, 4090) == b"A" * 10 and ov.size("/a") == 5000  # as last synced
    assert ov.read("/b", 100, 0) == b"hello" and ov.crashes == 1


def test_overlay_truncate_extend_rename_and_sync_all(tmp_path):
    ov = Overlay(str(tmp_path))
    (tmp_path / "f").write_bytes(b"B" * (2 * PAGE))
    ov.truncate("/f", 10)
    ov.write("/f", b"C", PAGE + 5)  # a hole of zeros, not the old B's
    assert ov.read("/f", PAGE + 6, 0) == b"B" * 10 + b"\0" * (PAGE - 5) + b"C"
    (tmp_path / "g").write_bytes(b"")
    ov.rename("/f", "/g")  # the caller renamed the backing file too
    (tmp_path / "f").rename(tmp_path / "g")
    assert ov.unsynced() == {"/g": 2 * PAGE}
    assert ov.sync_all() == PAGE + 6
    assert (tmp_path / "g").read_bytes() == b"B" * 10 + b"\0" * (PAGE - 5) + b"C"
    assert ov.crash() == {}


# ---------------------------------------------------------- the real filesystem
WRITER = textwrap.dedent("""
    import os, sys, time
    d = sys.argv[1]
    f = os.open(f"{d}/synced", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(f, b"S" * 10000); os.fsync(f)                      # durable
    os.pwrite(f, b"x" * 100, 50)                                 # an unsynced overwrite
    os.write(f, b"tail")                                         # an unsynced append
    g = os.open(f"{d}/unsynced", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(g, b"U" * 20000)                                    # never synced
    h = os.open(f"{d}/dsync", os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o644)
    os.write(h, b"D" * 3000)                                     # O_DSYNC: durable as written
    t = os.open(f"{d}/renamed.tmp", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(t, b"R" * 500); os.fdatasync(t); os.rename(f"{d}/renamed.tmp", f"{d}/renamed")
    print(os.path.getsize(f"{d}/synced"), os.path.getsize(f"{d}/unsynced"), flush=True)
    time.sleep(60)                                               # killed here, files open
""")


def test_lwfs_drops_unsynced_data_on_crash_and_keeps_synced(request, embedded_cluster, tmp_path):
    nem = L.LostWritesNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, count=1, nemeses=[nem], start=False) as ctx:
        n1 = ctx.nodes[0]
        r = ctx.remotes["n1"]
        lay = nem.layouts["n1"]
        nem.ensure_mounted(n1)
        assert L.mounts(r) and any(m == lay.mnt for m in L.mounts(r))
        assert ctx.db.data_dir(n1) == lay.data
        (tmp_path / "writer.py").write_text(WRITER)
        r.run(f"mkdir -p {lay.data}")
        pid = r.start_daemon(["python3", str(tmp_path / "writer.py"), lay.data], logfile=str(tmp_path / "writer.log"),
                             pidfile=str(tmp_path / "writer.pid"))
        for _ in range(100):
            if (tmp_path / "writer.log").read_text().strip():
                break
            r.run("sleep 0.05")
        assert (tmp_path / "writer.log").read_text().split() == ["10004", "20000"]  # what the writer saw
        size = lambda f: int(r.run(f"stat -c %s {lay.data}/{f}").out)  # noqa: E731 - through the mount
        assert size("unsynced") == 20000
        assert r.run(f"stat -c %s {lay.backing}/data/unsynced").out.strip() == "0"  # not on disk yet
        r.signal_daemon(str(tmp_path / "writer.pid"), 9)  # the process dies first, then the power
        for _ in range(50):
            if r.daemon_pid(str(tmp_path / "writer.pid")) is None:
                break
            r.run("sleep 0.05")
        assert proc_state(ctx, n1, pid) in ("", "Z")  # gone before the crash
        st = nem.control(ctx, n1, "crash")
        assert st["op"] == "crash" and st["crashes"] == 1
        assert set(st["dropped"]) == {"/data/synced", "/data/unsynced"}
        assert st["dropped_bytes"] >= 20000
        # after the crash: synced data intact, unsynced data gone, names kept
        assert size("synced") == 10000 and size("unsynced") == 0
        assert r.run(f"head -c 200 {lay.data}/synced").out == "S" * 200  # the overwrite is gone too
        assert r.run(f"cat {lay.data}/dsync").out == "D" * 3000
        assert r.run(f"cat {lay.data}/renamed").out == "R" * 500
        nem.teardown(ctx)
        assert not any(m == lay.mnt for m in L.mounts(r))


# --------------------------------------------------------------- servers on it
async def _put_all(ctx, count: int) -> list[int]:
    acked = []
    c = EtcdClient(ctx.db.client_endpoint(ctx.nodes[0]), timeout=10)
    try:
        for i in range(count):
            try:
                await c.put(f"lw/{i}", i)
                acked.append(i)
            except ClientError:
                pass
    finally:
        await c.close()
    return acked


async def _read_all(ctx, count: int) -> dict[int, object]:
    c = EtcdClient(ctx.db.client_endpoint(ctx.nodes[1]), timeout=10)
    try:
        return {i: (await c.get(f"lw/{i}")).value for i in range(count)}
    finally:
        await c.close()


def crash_everyone_and_read_back(ctx, nem, count: int = 60, wait: float = 30) -> tuple[list[int], dict, dict]:
    t0 = time.monotonic()
    acked = asyncio.run(_put_all(ctx, count))
    print(f"puts {time.monotonic() - t0:.1f}s")
    ev = nem.crash(ctx, list(ctx.nodes), "all")
    assert all(c["gone"] for c in ev["crashed"].values()), ev
    assert all(ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n)) is None for n in ctx.nodes)
    back = nem.stop(ctx)
    assert back["nodes"] == [n.name for n in ctx.nodes]
    print(f"crash and restart {time.monotonic() - t0:.1f}s")
    try:
        ctx.db.wait_healthy(wait)
        values = asyncio.run(_read_all(ctx, count))
    except Exception as e:  # noqa: BLE001 - a server that lost its state may not come back at all
        values = {"error": str(e)}
    print(f"read back {time.monotonic() - t0:.1f}s: {values}")
    return acked, ev, values


def test_reference_server_loses_nothing_acknowledged_when_all_crash(request, embedded_cluster, tmp_path):
    nem = L.LostWritesNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, nemeses=[nem]) as ctx:
        assert all(ctx.db.data_dir(n).endswith("/lw/mnt/data") for n in ctx.nodes)
        acked, ev, values = crash_everyone_and_read_back(ctx, nem)
        assert len(acked) == 60
        assert values == {i: i for i in range(60)}, (ev, values)


def test_a_server_skipping_fsync_is_caught_losing_acknowledged_writes(request, embedded_cluster, tmp_path):
    nem = L.LostWritesNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, nemeses=[nem], start=False) as ctx:
        ctx.db.cfg.extra_flags.append("--unsafe-no-fsync")
        ctx.db.setup()
        acked, ev, values = crash_everyone_and_read_back(ctx, nem, wait=5)
        assert len(acked) == 60
        assert sum(c["dropped_bytes"] for c in ev["crashed"].values()) > 0, ev  # it had not synced
        lost = [i for i in acked if values.get(i) != i]
        assert lost, f"no acknowledged write lost: {values}"  # caught
        log = ctx.remotes["n1"].run(f"grep -c unsafe-no-fsync {ctx.db.log_file(ctx.nodes[0])}", check=False).out
        assert int(log.strip() or 0) >= 1  # the server said it runs unsafely


def test_refused_before_prepare(request, embedded_cluster, tmp_path):
    """Without prepare the data dirs are not on lwfs, so a crash would drop nothing: refused."""
    nem = L.LostWritesNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, count=1, start=False) as ctx:
        with pytest.raises(L.FaultRefused, match="lost writes need prepare.. before the servers start"):
            nem.start(ctx)
        assert ctx.db.data_dirs == {} and ctx.db.start_hooks == []
