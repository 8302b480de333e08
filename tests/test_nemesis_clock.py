"""Clock faults: the pure parts, then real bumps and strobes of the reference server's clock on the
embedded cluster (libfaketime, measured by a preloaded probe and by the server's own Date header),
reset afterwards; and the refusal for real etcd, with the fact behind it shown (etcd under
libfaketime keeps logging real time)."""
from __future__ import annotations

import json
import random
import subprocess
import time

import pytest

from nemesis import clock as C
from nemesis.base import FaultRefused
from nemesis.process import proc_state
from nemesis_support import cluster

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------ pure parts
def test_faketime_spec_and_draws():
    assert C.faketime_spec(90.25) == "+90.250s"
    assert C.faketime_spec(-3) == "-3.000s"
    assert C.faketime_spec(0.0001) == "+0"
    rng = random.Random(3)
    draws = [C.draw_bump(rng, 240) for _ in range(400)]
    assert all(0.25 <= abs(d) <= 240 for d in draws)
    assert any(d < 0 for d in draws) and any(d > 0 for d in draws)
    assert any(abs(d) > 60 for d in draws) and any(abs(d) < 2 for d in draws)  # minutes and fractions
    assert C.offset_from("1000000000 3000000000 1002000000") == {"offset": 1.999, "error": 0.001}


def test_settime_scripts_keep_the_offset_book(tmp_path):
    """The VM scripts, run with `echo` in place of `date -s`: the offset file follows every step and
    the reset steps back by exactly the total (this machine's clock is never set)."""
    c = C.NodeClock("settime", str(tmp_path))
    setter = tmp_path / "set.sh"  # records the time it was asked to set instead of setting it
    setter.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/set.log\n')
    setter.chmod(0o755)

    def sh(script: str) -> list[float]:
        subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
        log = tmp_path / "set.log"
        asked = [float(x.lstrip("@")) for x in log.read_text().split()] if log.exists() else []
        log.unlink(missing_ok=True)
        return asked

    t0 = time.time()
    (up,) = sh(C.step_script(c, 90.5, setter=str(setter)))
    assert up == pytest.approx(t0 + 90.5, abs=1.0)
    sh(C.step_script(c, -30.25, setter=str(setter)))
    assert float((tmp_path / "clock-offset").read_text()) == pytest.approx(60.25)
    (back,) = sh(C.reset_script(c, setter=str(setter)))
    assert back == pytest.approx(time.time() - 60.25, abs=1.0)  # stepped back by the total
    assert (tmp_path / "clock-offset").read_text().strip() == "0"
    assert sh(C.reset_script(c, setter=str(setter))) == []  # nothing left to undo: no step at all
    loop = C.strobe_script(c, 2.0, 0.05, setter="echo")
    assert "sleep 0.05" in loop and "-v d=2.0" in loop and "-v d=-2.0" in loop


# ------------------------------------------------------------- on the cluster
def test_bump_and_strobe_move_the_reference_servers_clock_then_reset(request, embedded_cluster, tmp_path):
    nem = C.ClockNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, nemeses=[nem]) as ctx:
        n1, n2, n3 = ctx.nodes
        assert {c.method for c in nem.clocks.values()} == {"faketime"}
        # the server process itself runs under the preload, with its node's timestamp file
        pid = ctx.remotes["n1"].daemon_pid(ctx.db.pid_file(n1))
        environ = ctx.remotes["n1"].run(f"tr '\\0' '\\n' < /proc/{pid}/environ").out
        assert f"FAKETIME_TIMESTAMP_FILE={nem.clocks['n1'].file}" in environ and "libfaketime.so.1" in environ

        ev = nem.bump(ctx, {"n1": 90.0, "n2": -45.5})
        assert ev["method"] == "faketime" and ev["nodes"] == ["n1", "n2"]
        assert ev["measured"]["n1"]["offset"] == pytest.approx(90.0, abs=0.3)
        assert ev["measured"]["n2"]["offset"] == pytest.approx(-45.5, abs=0.3)
        assert ev["server_offset"]["n1"] == pytest.approx(90, abs=2)  # the server's own Date header
        assert ev["server_offset"]["n2"] == pytest.approx(-45, abs=2)
        assert nem.measure(ctx, n3)["offset"] == pytest.approx(0, abs=0.3)  # an untouched node
        assert ctx.db.healthy(n1) and ctx.db.healthy(n2)  # a clock jump is not a crash

        back = nem.stop(ctx)
        assert all(abs(m["offset"]) < 0.3 for m in back["measured"].values()), back
        assert nem.server_offset(ctx, n1) == pytest.approx(0, abs=1)

        ev = nem.strobe(ctx, ["n3"], 5.0, 0.05)
        samples = ev["strobes"]["n3"]["samples"]
        assert ev["strobes"]["n3"]["flipped"], samples
        assert any(abs(x) < 0.5 for x in samples) and any(abs(x - 5) < 0.5 for x in samples)
        strobe_pid = ev["strobes"]["n3"]["pid"]
        nem.touched = [n3]
        back = nem.stop(ctx)
        assert back["measured"]["n3"]["offset"] == pytest.approx(0, abs=0.3)
        assert ctx.remotes["n3"].daemon_pid(nem.clocks["n3"].strobe_pid) is None
        assert proc_state(ctx, n3, strobe_pid) in ("", "Z")  # dead (a zombie until its parent reaps it)
        assert all(abs(x) < 0.3 for x in nem.sample(ctx, n3, 6, 0.03))  # it stays reset

        # start() draws mode, nodes and amounts itself and reports what it measured
        ev = nem.start(ctx)
        assert ev["nodes"] and ev["mode"] in ("bump", "strobe")
        nem.stop(ctx)
    files = [tmp_path / "nodes" / n / "faketime" for n in ("n1", "n2", "n3")]
    assert not any(f.exists() for f in files)  # teardown removed them with the servers stopped


def test_clock_faults_are_refused_for_real_etcd_on_a_shared_kernel(request, embedded_cluster, tmp_path):
    nem = C.ClockNemesis()
    with cluster(request, embedded_cluster, "etcd", tmp_path, nemeses=[nem], start=False) as ctx:
        with pytest.raises(FaultRefused) as e:
            nem.start(ctx)
        assert e.value.permanent
        assert str(e.value) == C.GO_REFUSAL
        assert "Go binary" in str(e.value) and "libfaketime cannot intercept" in str(e.value)
        assert ctx.db.start_hooks == []  # nothing preloaded into etcd
        assert nem.heal(ctx)["skipped"] == C.GO_REFUSAL


def test_etcd_under_libfaketime_logs_real_time(request, embedded_cluster, tmp_path):
    """Why the refusal: real etcd started with the preload and a +1 h timestamp file still logs the
    real time (Go reads the clock without libc)."""
    inv = embedded_cluster
    n = inv.nodes[0]
    r = inv.remotes[n.name]
    lib = r.run(f"ls {C.LIBFAKETIME} | head -n 1").out.strip()
    (tmp_path / "ft").write_text("+3600s\n")
    from nemesis_support import ports

    client, peer, _ = ports(request.config)
    cmd = (f"LD_PRELOAD={lib} FAKETIME_TIMESTAMP_FILE={tmp_path}/ft FAKETIME_DONT_FAKE_MONOTONIC=1 "
           f"timeout -s KILL 4 /usr/bin/etcd --name x --data-dir {tmp_path}/etcd --logger zap "
           f"--listen-client-urls http://{n.ip}:{client} --advertise-client-urls http://{n.ip}:{client} "
           f"--listen-peer-urls http://{n.ip}:{peer} --initial-advertise-peer-urls http://{n.ip}:{peer} "
           f"--initial-cluster x=http://{n.ip}:{peer} 2>&1 | head -n 1")
    real = time.time()
    line = r.run(cmd, timeout=20, check=False).out
    ts = json.loads(line)["ts"]
    from datetime import datetime

    seen = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    assert abs(seen - real) < 30, f"etcd logged {ts}, real time {real}"  # not an hour ahead
    # while a libc program under the same preload is an hour ahead
    faked = int(r.run(f"LD_PRELOAD={lib} FAKETIME_TIMESTAMP_FILE={tmp_path}/ft date +%s").out)
    assert faked - time.time() == pytest.approx(3600, abs=30)
