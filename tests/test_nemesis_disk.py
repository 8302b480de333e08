"""Disk faults: finding the block device under a data directory (a plain disk, a partition on a
loop device, device-mapper, overlayfs, tmpfs refused), then blkio throttling and ionice of a real
server on the embedded cluster, with fsync latency measured up during the fault and down after it,
and nothing of ours left behind."""
from __future__ import annotations

import asyncio
import json

import pytest

from harness.client import EtcdClient
from nemesis import disk as D
from nemesis.base import FaultRefused
from nemesis_support import cluster

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------ pure parts
def test_findmnt_dd_and_metrics_parsing():
    nested = {"filesystems": [{"target": "/", "source": "/dev/vda", "fstype": "ext4", "maj:min": "254:0", "options": "rw",
                               "children": [{"target": "/x", "source": "tmpfs", "fstype": "tmpfs", "maj:min": "0:55",
                                             "options": "rw"}]}]}
    assert D.parse_findmnt(json.dumps(nested))["fstype"] == "tmpfs"
    assert D.overlay_upper("rw,lowerdir=/a,upperdir=/b/up,workdir=/b/w") == "/b/up"
    assert D.overlay_upper("rw,lowerdir=/a") is None
    assert D.dd_ms("32768 bytes (33 kB, 32 KiB) copied, 2.27518 s, 14.4 kB/s", 8) == pytest.approx(284.398, abs=0.01)
    assert D.dd_ms("dd: failed", 8) is None
    text = "etcd_disk_wal_fsync_duration_seconds_sum 1.5\netcd_disk_wal_fsync_duration_seconds_count 30\n"
    assert D.metric_pair(text, "etcd_disk_wal_fsync_duration_seconds") == (1.5, 30.0)
    assert D.cgroup_name("/a/n1", "n1") != D.cgroup_name("/b/n1", "n1")
    assert D.cgroup_name("/a/n1", "n1").startswith("etcdproof-disk-n1-")


# ------------------------------------------------------------- block devices
def test_block_device_resolution_on_real_mounts(embedded_cluster, tmp_path):
    r = embedded_cluster.remotes["n1"]
    root = D.resolve_device(r, str(tmp_path / "data"))  # not there yet: its nearest existing parent counts
    assert root.majmin == r.run(f"findmnt -n -o MAJ:MIN --target {tmp_path}").out.strip() or "partition" in root.why
    img, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    mnt.mkdir()
    loop = ""
    cleanup = []
    try:
        # a loop device: throttled as itself; a partition on it (where this kernel scans loop
        # partitions) on the whole loop disk, since blkio refuses partitions
        r.run(f"truncate -s 64M {img} && echo 'start=2048, type=83' | sfdisk -q {img}")
        loop = r.run(f"losetup -f --show -P {img}").out.strip()
        cleanup.append(f"losetup -d {loop}")
        loop_majmin = r.run(f"cat /sys/class/block/{loop.split('/')[-1]}/dev").out.strip()
        part = r.run(f"sleep 0.3; ls /sys/class/block/{loop.split('/')[-1]}/ | grep p1 || true").out.strip()
        if part:
            majmin = r.run(f"cat /sys/class/block/{part}/dev").out.strip()
            r.run(f"[ -b /dev/{part} ] || mknod /dev/{part} b {majmin.replace(':', ' ')}; "
                  f"mkfs.ext4 -q -F /dev/{part} && mount /dev/{part} {mnt}")
            cleanup.insert(0, f"umount -l {mnt}")
            d = D.resolve_device(r, str(mnt / "data"))
            assert d.majmin == loop_majmin and "partition" in d.why and d.name.endswith("p1")
            r.run(f"umount {mnt}")
        else:
            print("this kernel does not scan partitions on loop devices (max_part=0): partition case not run")
        r.run(f"mkfs.ext4 -q -F {loop} && mount {loop} {mnt}")
        cleanup.insert(0, f"umount -l {mnt}")
        d = D.resolve_device(r, str(mnt / "data"))
        assert d.majmin == loop_majmin and " loop " in f" {d.why} " and str(img) in d.why
        # overlayfs: its upper directory's device
        r.run(f"mkdir -p {mnt}/lower {mnt}/upper {mnt}/work {mnt}/ov")  # mounts live in the node's namespace
        r.run(f"mount -t overlay overlay -o lowerdir={mnt}/lower,upperdir={mnt}/upper,workdir={mnt}/work {mnt}/ov")
        cleanup.insert(0, f"umount -l {mnt}/ov")
        d = D.resolve_device(r, str(mnt / "ov" / "data"))
        assert d.majmin == loop_majmin and "overlay upper dir" in d.why
        # device-mapper: throttled as the dm device itself
        if r.run("dmsetup version", check=False).ok:
            dmname = f"etcdproof-test-{tmp_path.name[-8:]}"
            sectors = r.run(f"blockdev --getsz {loop}").out.strip()
            if r.run(f"echo '0 {sectors} linear {loop} 0' | dmsetup create {dmname}", check=False).ok:
                cleanup.insert(0, f"dmsetup remove {dmname}")
                dm_majmin = r.run(f"dmsetup info -c --noheadings -o major,minor {dmname} | tr -d ' '").out.strip()
                r.run(f"mkdir -p {tmp_path}/dm")
                r.run(f"mkfs.ext4 -q -F /dev/mapper/{dmname} && mount /dev/mapper/{dmname} {tmp_path}/dm")
                cleanup.insert(0, f"umount -l {tmp_path}/dm")
                d = D.resolve_device(r, str(tmp_path / "dm" / "data"))
                assert d.majmin == dm_majmin and d.why.startswith("ext4") and " dm " in f" {d.why}"
        # tmpfs: nothing to throttle, and the reason says so
        r.run(f"mkdir -p {tmp_path}/tmpfs")
        r.run(f"mount -t tmpfs tmpfs {tmp_path}/tmpfs")
        cleanup.insert(0, f"umount -l {tmp_path}/tmpfs")
        with pytest.raises(D.DiskError, match="is on tmpfs .tmpfs., with no block device to throttle"):
            D.resolve_device(r, str(tmp_path / "tmpfs" / "data"))
    finally:
        for c in cleanup:
            r.run(c, check=False)


# ------------------------------------------------------------- on the cluster
def puts(ctx, node, count: int) -> None:
    async def go() -> None:
        c = EtcdClient(ctx.db.client_endpoint(node), timeout=20)
        try:
            for i in range(count):
                await c.put(f"disk/{i}", i)
        finally:
            await c.close()

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["reference", "etcd"])
def test_throttle_slows_fsync_then_undo_restores(request, embedded_cluster, tmp_path, kind):
    nem = D.DiskNemesis()
    with cluster(request, embedded_cluster, kind, tmp_path, count=1, nemeses=[nem]) as ctx:
        n1 = ctx.nodes[0]
        r = ctx.remotes["n1"]
        puts(ctx, n1, 5)
        ev = nem.apply(ctx, [n1], {"write_iops_device": 10}, ionice=False)
        a = ev["applied"]["n1"]
        pid = r.daemon_pid(ctx.db.pid_file(n1))
        assert a["pid"] == pid and a["read_back"]["write_iops_device"] == f"{a['device']} 10"
        assert r.run(f"grep blkio /proc/{pid}/cgroup").out.strip().endswith(a["cgroup"])
        assert a["probe_ms_during"] > max(20.0, 5 * a["probe_ms_before"]), a  # fsync latency up
        puts(ctx, n1, 10)  # acknowledged writes wait for n1's throttled WAL fsyncs
        back = nem.stop(ctx)["undone"]["n1"]
        assert back["pid_changed"] is False and back["state"] == "removed"
        assert back["wal_fsync_ms_during"] > 20.0, back  # the server's own fsync metric saw it
        assert back["probe_ms_after"] < a["probe_ms_during"] / 5, back  # and down again
        assert D.leftovers(r) == [] or all(a["cgroup"] not in x for x in D.leftovers(r))
        assert r.run(f"grep blkio /proc/{pid}/cgroup").out.strip().endswith(":" + a["previous_cgroup"])
        assert ctx.db.healthy(n1)


def test_ionice_idle_under_competition_then_restored(request, embedded_cluster, tmp_path):
    nem = D.DiskNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, count=1, nemeses=[nem]) as ctx:
        n2 = ctx.nodes[0]
        r = ctx.remotes[n2.name]
        # the IOPS cap makes the slowdown certain: ionice's idle class only tells under bfq/cfq, and
        # a bandwidth cap barely touches a probe's small synced writes, so neither alone can be
        # asserted on a noisy machine
        ev = nem.apply(ctx, [n2], {"write_bps_device": 1024 * 1024, "write_iops_device": 20}, ionice=True)
        a = ev["applied"][n2.name]
        assert ev["mode"] == "throttle+ionice"
        assert a["ionice"]["class"] == "idle" and a["ionice"]["threads"] >= 2
        pid = a["pid"]
        classes = r.run(f"for t in /proc/{pid}/task/*; do ionice -p ${{t##*/}}; done").out.split("\n")
        assert all(c.startswith("idle") for c in classes if c)
        comp = a["competitor"]["pid"]
        assert r.run(f"cat /proc/{comp}/cmdline | tr '\\0' ' '").out.startswith(("fio", "/usr/bin/fio", "sh"))
        assert a["read_back"]["write_bps_device"].endswith(" 1048576"), a
        assert a["probe_ms_during"] > max(20.0, 5 * a["probe_ms_before"]), a
        back = nem.stop(ctx)["undone"][n2.name]
        assert back["idle_threads_left"] == 0 and back["state"] == "removed"
        assert r.run(f"kill -0 {comp} 2>/dev/null && cat /proc/{comp}/stat | cut -d' ' -f3", check=False).out.strip() in ("", "Z")
        assert not [x for x in r.run("ps -eo args=").out.splitlines() if "etcdproof-disk-compete" in x and str(tmp_path) in x]
        assert not any(c.startswith("idle") for c in
                       r.run(f"for t in /proc/{pid}/task/*; do ionice -p ${{t##*/}}; done").out.split("\n") if c)


def test_heal_sweeps_cgroups_left_by_an_earlier_process(request, embedded_cluster, tmp_path):
    nem = D.DiskNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, count=1, nemeses=[nem]) as ctx:
        n = ctx.nodes[0]
        nem.apply(ctx, [n], {"write_iops_device": 20}, ionice=False)
        nem.applied = {}  # as if the harness that applied it had died
        name = D.cgroup_name(ctx.db.node_dir(n), n.name)
        assert any(x.endswith(name) for x in D.leftovers(ctx.remotes[n.name]))
        healed = nem.heal(ctx)
        assert healed["swept"][n.name]["state"] == "removed"
        assert not any(x.endswith(name) for x in D.leftovers(ctx.remotes[n.name]))


def test_disk_fault_refused_without_a_running_server(request, embedded_cluster, tmp_path):
    nem = D.DiskNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, nemeses=[nem], start=False) as ctx:
        with pytest.raises(FaultRefused, match="n1: server not running"):
            nem.apply(ctx, [ctx.nodes[0]], {"write_iops_device": 10}, ionice=False)
