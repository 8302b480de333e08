"""Network faults on the embedded cluster: peer-traffic delay by the NFQUEUE delayer (this kernel
has no netem) with round trips measured up then down, a tc htb rate limit measured by a real
transfer, loss counted by the delayer, netem refused with its reason when asked for, and
nothing of ours left behind."""
from __future__ import annotations

import random
import time

import pytest

from nemesis import net as N
from nemesis.base import FaultRefused
from nemesis_support import cluster

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------ pure parts
def test_tc_script_rules_and_draws():
    s = N.tc_script("eth0", [2380], N.Shape(delay_ms=50, loss=0.1, rate_kbit=1024), netem=True)
    assert "htb default 1" in s and "classid e7d0:2 htb rate 1024kbit ceil 1024kbit" in s
    assert "match ip dport 2380 0xffff flowid e7d0:2" in s and "match ip sport 2380 0xffff flowid e7d0:2" in s
    assert "netem delay 50ms loss 10%" in s
    assert "netem" not in N.tc_script("eth0", [2380], N.Shape(delay_ms=50, rate_kbit=1024), netem=False)
    rules = N.nfqueue_rules(["10.0.0.2", "10.0.0.3"], [2380], 77)
    assert len(rules) == 4 and all("--queue-num 77 --queue-bypass" in r for r in rules)
    assert N.queue_number("/a/n1") != N.queue_number("/b/n1")
    rng = random.Random(1)
    for mode in N.MODES:
        s = N.draw_shape(rng, mode)
        assert bool(s.delay_ms) == ("delay" in mode) and bool(s.rate_kbit) == ("rate" in mode)
        assert bool(s.loss) == (mode == "loss") and 20 <= (s.delay_ms or 20) <= 300
    assert N.Shape(delay_ms=100, jitter_ms=10, rate_kbit=256).describe() == "delay 100ms ±10ms, rate 256kbit"


def clean(ctx) -> bool:
    """No qdisc of ours and no mangle rule of ours on any node, no delayer running."""
    for n in ctx.nodes:
        r = ctx.remotes[n.name]
        dev = N.iface_of(r, n.ip)
        if any(f"{N.HANDLE}:" in x for x in N.read_tc(r, dev)["qdisc"]) or N.read_rules(r):
            return False
        if r.daemon_pid(f"{ctx.db.node_dir(n)}/net-delayer.pid") is not None:
            return False
    return True


# ------------------------------------------------------------- on the cluster
def test_delay_raises_round_trips_then_undo_restores(request, embedded_cluster, tmp_path):
    nem = N.NetNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, nemeses=[nem]) as ctx:
        n1 = ctx.nodes[0]
        ev = nem.apply(ctx, [n1], N.Shape(delay_ms=120))
        a = ev["applied"]["n1"]
        assert ev["netem"] == {"n1": False} and a["method"] == "nfqueue"  # this kernel: the delayer
        assert all(v < 20 for v in a["rtt_ms_before"].values()), a
        assert all(115 <= v < 400 for v in a["rtt_ms_during"].values()), a  # round trip up by the delay
        assert len([x for x in a["rules"] if "NFQUEUE" in x]) == 4
        assert ctx.db.healthy(n1)  # 120 ms more per round trip: still a working member
        back = nem.stop(ctx)["undone"]["n1"]
        assert back["delayer"]["seen"] > 0 and back["delayer"]["released"] == back["delayer"]["seen"]
        assert back["delayer"]["held"] == 0 and back["delayer"]["running"] is False
        assert all(v < 20 for v in back["rtt_ms_after"].values()), back  # and down again
        assert clean(ctx)


SINK = ("import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)\n"
        "while True:\n c,_=s.accept(); n=0\n while n < int(sys.argv[3]):\n  d=c.recv(65536)\n  if not d: break\n  n+=len(d)\n"
        " c.sendall(b'ok'); c.close()")
SEND = ("import socket,sys,time; c=socket.create_connection((sys.argv[1], int(sys.argv[2])), 10); t=time.monotonic(); "
        "c.sendall(b'x'*int(sys.argv[3])); c.recv(2); print(time.monotonic()-t)")


def transfer_seconds(r, ip: str, port: int, size: int) -> float:
    return float(r.run(f"python3 -c \"{SEND}\" {ip} {port} {size}", timeout=60).out)


def test_rate_limit_slows_a_transfer_then_undo_restores(request, embedded_cluster, tmp_path):
    nem = N.NetNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, nemeses=[nem], start=False) as ctx:
        n1, n2 = ctx.nodes[0], ctx.nodes[1]
        port, size = ctx.db.cfg.peer_port, 256 * 1024
        (tmp_path / "sink.py").write_text(SINK)
        r1, r2 = ctx.remotes["n1"], ctx.remotes["n2"]
        r2.start_daemon(["python3", str(tmp_path / "sink.py"), n2.ip, str(port), str(size)],
                        logfile=str(tmp_path / "sink.log"), pidfile=str(tmp_path / "sink.pid"))
        try:
            time.sleep(0.3)
            fast = transfer_seconds(r1, n2.ip, port, size)
            ev = nem.apply(ctx, [n1], N.Shape(rate_kbit=1024))
            assert ev["applied"]["n1"]["method"] == "tc"
            assert any("rate 1Mbit" in x or "rate 1024Kbit" in x for x in ev["applied"]["n1"]["tc"]["class"])
            slow = transfer_seconds(r1, n2.ip, port, size)
            assert slow > 1.5 and slow > 10 * fast, (fast, slow)  # 2 Mbit at 1 Mbit/s: about 2 s
            back = nem.stop(ctx)["undone"]["n1"]
            sent = [x for x in back["tc_stats"] if x.startswith("Sent ")]
            assert sent and int(sent[0].split()[1]) >= size, back  # the shaped class carried it
            again = transfer_seconds(r1, n2.ip, port, size)
            assert again < slow / 10, (fast, slow, again)
            assert clean(ctx)
        finally:
            r2.signal_daemon(str(tmp_path / "sink.pid"), 9)


def test_loss_drops_packets_and_netem_is_refused_when_required(request, embedded_cluster, tmp_path):
    nem = N.NetNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, nemeses=[nem]) as ctx:
        n3 = ctx.nodes[2]
        nem.apply(ctx, [n3], N.Shape(loss=0.3))
        time.sleep(2)  # heartbeats and their answers cross the lossy path
        back = nem.stop(ctx)["undone"]["n3"]
        d = back["delayer"]
        assert d["dropped"] > 0 and d["seen"] > d["dropped"], d
        assert 0.1 < d["dropped"] / d["seen"] < 0.6, d
        assert clean(ctx)

        strict = N.NetNemesis(delay_by="netem")
        with pytest.raises(FaultRefused) as e:
            strict.apply(ctx, [n3], N.Shape(delay_ms=50))
        assert e.value.permanent
        assert str(e.value) == f"n3: {N.NO_NETEM}; delay and loss need netem here (delay_by=netem)"
        assert clean(ctx)
        # a rate limit alone needs no netem, so it still applies
        ev = strict.apply(ctx, [n3], N.Shape(rate_kbit=8192))
        assert ev["applied"]["n3"]["method"] == "tc"
        strict.stop(ctx)
        assert clean(ctx)


def test_heal_removes_what_an_earlier_process_left(request, embedded_cluster, tmp_path):
    nem = N.NetNemesis()
    with cluster(request, embedded_cluster, "reference", tmp_path, count=2, nemeses=[nem], start=False) as ctx:
        nem.apply(ctx, ctx.nodes[:2], N.Shape(delay_ms=30, rate_kbit=8192))
        nem.applied = {}  # as if the harness that applied it had died
        assert not clean(ctx)
        nem.heal(ctx)
        assert clean(ctx)
