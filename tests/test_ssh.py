"""SSHRemote over the embedded cluster's real sshds, and LocalRemote: commands, files, daemons,
signals, connection failures. Every daemon is bound to a node's address and probed from the host."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace

import pytest

from harness.inventory import Node, loopback_nodes
from harness.remote import RemoteError
from harness.localproc import free_port
from harness.ssh import LocalRemote, SSHRemote, cmdline_matches


def node_free_port(remote) -> int:
    """A port free on the node (asked there: the node has its own network stack)."""
    out = remote.run("python3 -c 'import socket; s=socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])'").out
    port = int(out)
    return port if port not in (2379, 2380) else node_free_port(remote)


def http_ok(ip: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.fixture
def n1(embedded_cluster):
    return embedded_cluster.remotes["n1"]


@pytest.fixture
def scratch(n1):
    d = f"/tmp/etcdproof-test-{uuid.uuid4().hex[:10]}"
    n1.run(f"mkdir -p {d}")
    yield d
    n1.run(f"rm -rf {d}", check=False)


# ------------------------------------------------------------------ commands
def test_commands_run_in_the_nodes_namespace(embedded_cluster):
    host_ns = os.readlink("/proc/self/ns/net")
    seen = {}
    for node in embedded_cluster.nodes[:3]:
        r = embedded_cluster.remotes[node.name]
        res = r.run("ip -4 -o addr show dev eth0; readlink /proc/self/ns/net")
        lines = res.out.strip().splitlines()
        assert f"inet {node.ip}/24" in lines[0]
        assert lines[-1] != host_ns
        seen[node.name] = lines[-1]
    assert len(set(seen.values())) == 3  # each node its own network stack


def test_exit_codes_stdin_stderr(n1):
    res = n1.run("echo out; echo err >&2; exit 3", check=False)
    assert (res.exit, res.out, res.err, res.ok) == (3, "out\n", "err\n", False)
    assert n1.run("cat; printf done", stdin="line1\nline2\n").out == "line1\nline2\ndone"
    assert n1.run("cat").out == ""  # stdin is closed, not left open
    with pytest.raises(RemoteError) as e:
        n1.run("echo first >&2; echo second >&2; exit 7")
    msg = str(e.value)
    assert msg.startswith(f"n1 (root@{n1.spec.host}:22): command exited 7") and "\n" not in msg
    assert "first | second" in msg


def test_timeout_is_reported_and_the_command_killed(n1):
    marker = f"{int(time.time() * 1000) % 100000 + 40}.25"
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=r"^n1 \(root@[\d.]+:22\): command timed out after 1s: sleep "):
        n1.run(f"sleep {marker}", timeout=1)
    assert time.monotonic() - t0 < 3
    # the remote `timeout` backstop ends it (at timeout+1 s) even though the channel is gone
    assert wait_for(lambda: n1.run(f"pgrep -f 'slee[p] {marker}'", check=False).exit == 1, timeout=6)


def test_one_remote_shared_by_threads(n1):
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        for j in range(4):
            results[i * 10 + j] = n1.run(f"echo {i}-{j}").out.strip()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i * 10 + j: f"{i}-{j}" for i in range(6) for j in range(4)}


def test_command_is_not_rerun_when_the_connection_dies(embedded_cluster, scratch):
    r = SSHRemote(embedded_cluster.nodes[0])
    try:
        # the command appends a line, then kills its own sshd session process
        find_sshd = 'p=$$; while :; do p=$(sed "s/.*) //" /proc/$p/stat | cut -d" " -f2); case $(cat /proc/$p/comm) in sshd*) break;; esac; done'
        with pytest.raises(RemoteError, match="connection lost while running"):
            r.run(f"echo hit >> {scratch}/hits; {find_sshd}; kill -9 $p; sleep 5", timeout=10)
        assert r.run(f"cat {scratch}/hits").out == "hit\n"  # reconnected, and ran once only
        # a connection that dies while idle is replaced before the next command
        r.run(f"{find_sshd}; setsid sh -c \"sleep 0.3; kill -9 $p\" >/dev/null 2>&1 < /dev/null &")
        before = r._transport()
        time.sleep(0.8)
        assert r.run("echo fine").out == "fine\n"
        assert r._transport() is not before  # it really was a new connection
    finally:
        r.close()


# --------------------------------------------------------------------- files
def test_upload_download_round_trip(n1, scratch, tmp_path):
    data = os.urandom(300_000) + b"\0\n\r tail"
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    n1.upload(str(src), f"{scratch}/copy.bin")
    remote_sum = n1.run(f"sha256sum {scratch}/copy.bin").out.split()[0]
    assert remote_sum == hashlib.sha256(data).hexdigest()
    assert n1.run(f"ls {scratch}").out.split() == ["copy.bin"]  # no staging file left
    back = tmp_path / "sub" / "back.bin"
    n1.download(f"{scratch}/copy.bin", str(back))
    assert back.read_bytes() == data
    with pytest.raises(RemoteError, match=r"^n1 \(root@[\d.]+:22\): download /nonexistent/x: no such file$"):
        n1.download("/nonexistent/x", str(tmp_path / "x"))
    with pytest.raises(RemoteError, match="upload: no local file"):
        n1.upload(str(tmp_path / "missing"), f"{scratch}/y")


# ------------------------------------------------------------------- daemons
def check_daemon_lifecycle(r, ip: str, port: int, d: str) -> None:
    """start (pidfile, log), refuse a second start, SIGSTOP/SIGCONT/SIGKILL probed from the host."""
    argv = ["python3", "-m", "http.server", "--bind", ip, str(port)]
    pidfile, log = f"{d}/run/http.pid", f"{d}/logs/http.log"
    pid = r.start_daemon(argv, logfile=log, pidfile=pidfile, env={"ETCDPROOF_MARK": "m1"}, cwd=d)
    try:
        assert r.run(f"cat {pidfile}").out.strip() == str(pid)
        assert r.daemon_pid(pidfile) == pid
        assert wait_for(lambda: http_ok(ip, port))
        # own session (setsid), SIGHUP ignored (nohup), env and cwd as asked
        stat = r.run(f"cat /proc/{pid}/stat").out.rsplit(")", 1)[1].split()
        assert int(stat[3]) == pid  # session id
        sigign = int(r.run(f"grep SigIgn /proc/{pid}/status").out.split()[1], 16)
        assert sigign & (1 << (signal.SIGHUP - 1))
        assert "ETCDPROOF_MARK=m1" in r.run(f"tr '\\0' '\\n' < /proc/{pid}/environ").out
        assert r.run(f"readlink /proc/{pid}/cwd").out.strip() == d
        assert wait_for(lambda: '"GET / HTTP' in r.run(f"cat {log}").out)  # output appended to the log

        with pytest.raises(RemoteError, match=f"already running as pid {pid}"):
            r.start_daemon(argv, logfile=log, pidfile=pidfile)

        assert r.signal_daemon(pidfile, signal.SIGSTOP)
        assert not http_ok(ip, port, timeout=0.7)  # accepted by the kernel, never answered
        assert r.daemon_pid(pidfile) == pid  # stopped is still alive
        assert r.signal_daemon(pidfile, signal.SIGCONT)
        assert wait_for(lambda: http_ok(ip, port))

        assert r.signal_daemon(pidfile, signal.SIGKILL)
        assert wait_for(lambda: r.daemon_pid(pidfile) is None)
        assert not r.signal_daemon(pidfile, signal.SIGKILL)
        with pytest.raises(OSError):
            socket.create_connection((ip, port), timeout=1).close()  # refused: it is gone
        # a stale pidfile does not block a new start; the log is appended to, not truncated
        before = r.run(f"wc -c < {log}").out.strip()
        pid2 = r.start_daemon(argv, logfile=log, pidfile=pidfile)
        assert pid2 != pid and r.daemon_pid(pidfile) == pid2
        assert wait_for(lambda: http_ok(ip, port))
        assert int(r.run(f"wc -c < {log}").out) > int(before)
    finally:
        r.signal_daemon(pidfile, signal.SIGCONT)
        r.signal_daemon(pidfile, signal.SIGKILL)


def test_daemon_over_ssh(embedded_cluster, n1, scratch):
    ip = embedded_cluster.nodes[0].ip
    check_daemon_lifecycle(n1, ip, node_free_port(n1), scratch)


def test_daemon_local_on_a_loopback_address(tmp_path):
    node = loopback_nodes(5)[1]
    r = LocalRemote(node)
    check_daemon_lifecycle(r, node.ip, free_port(node.ip), str(tmp_path))


def test_start_of_a_missing_program_fails_at_once(n1, scratch):
    with pytest.raises(RemoteError, match="cannot start /no/such/prog: no such program"):
        n1.start_daemon(["/no/such/prog"], f"{scratch}/log", f"{scratch}/pid")


def test_daemon_pid_is_not_fooled_by_reuse_or_zombies(tmp_path):
    r = LocalRemote(loopback_nodes(1)[0])
    pidfile = str(tmp_path / "d.pid")
    other = subprocess.Popen(["sleep", "30"])
    try:
        # a live pid that is not the recorded program: not ours
        (tmp_path / "d.pid").write_text(f"{other.pid}\n")
        (tmp_path / "d.pid.argv").write_text('["python3", "-m", "http.server"]')
        assert r.daemon_pid(pidfile) is None
        (tmp_path / "d.pid.argv").write_text('["sleep", "30"]')
        assert r.daemon_pid(pidfile) == other.pid
        # a zombie (its parent never reaps it) counts as dead
        parent = subprocess.Popen(["sh", "-c", "sleep 0.2 & echo $!; exec sleep 30"], stdout=subprocess.PIPE, text=True)
        zpid = parent.stdout.readline().strip()
        (tmp_path / "d.pid").write_text(zpid)
        (tmp_path / "d.pid.argv").write_text('["sleep", "0.2"]')
        assert wait_for(lambda: open(f"/proc/{zpid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z")
        assert r.daemon_pid(pidfile) is None
        (tmp_path / "d.pid.argv").unlink()  # no record of the argv: alive is enough, zombie is not
        assert r.daemon_pid(pidfile) is None
        (tmp_path / "d.pid").write_text(str(other.pid))
        assert r.daemon_pid(pidfile) == other.pid
        (tmp_path / "d.pid").write_text("garbage")
        assert r.daemon_pid(pidfile) is None
        parent.kill()
        parent.wait()
    finally:
        other.kill()
        other.wait()


def test_cmdline_matching():
    assert cmdline_matches(["python3", "-m", "x"], ["python3", "-m", "x"])
    # a script run through its interpreter keeps its path, after the interpreter
    assert cmdline_matches(["/v/bin/python3", "/v/bin/etcdproof-server", "--name=n1"], ["/v/bin/etcdproof-server", "--name=n1"])
    assert cmdline_matches(["/usr/bin/sleep", "9"], ["sleep", "9"])
    assert not cmdline_matches(["/usr/bin/sleep", "8"], ["sleep", "9"])
    assert not cmdline_matches(["sh", "-c", "x", "sleep", "9"], ["sleep", "9", "10"])
    assert not cmdline_matches([], ["sleep"])


def test_local_timeout_kills_the_process_group(tmp_path):
    r = LocalRemote(loopback_nodes(1)[0])
    with pytest.raises(RemoteError, match=r"^n1 \(local 127.0.0.11\): command timed out after 0.5s"):
        r.run(f"sleep 30 & echo $! > {tmp_path}/p; wait", timeout=0.5)
    pid = int((tmp_path / "p").read_text())
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                    open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", timeout=3)


# ------------------------------------------------------- connection failures
def test_sudo_prefix_when_not_root():
    r = SSHRemote(Node("n9", "h", user="admin"))
    assert r.wrap("echo 'a b'", 10).startswith("sudo -n timeout -k 2 11 sh -c ")
    assert SSHRemote(Node("n9", "h")).wrap("true", 10) == "timeout -k 2 11 sh -c true"


def test_connect_retries_while_sshd_starts(embedded_cluster, tmp_path):
    """sshd appears 0.8 s after the first attempt: refused connections are retried, and the new
    host key is accepted and recorded (trust on first use)."""
    n5 = embedded_cluster.nodes[4]
    state = os.path.dirname(n5.known_hosts)
    port = node_free_port(embedded_cluster.remotes["n5"])
    pidfile = tmp_path / "sshd.pid"
    start = ["ip", "netns", "exec", n5.netns, "/usr/sbin/sshd", "-f", f"{state}/n5/sshd_config",
             "-o", f"ListenAddress={n5.ip}:{port}", "-o", f"PidFile={pidfile}", "-E", str(tmp_path / "log")]
    timer = threading.Timer(0.8, lambda: subprocess.run(start, check=True))
    node = replace(n5, port=port, host_keys="tofu", known_hosts=str(tmp_path / "known_hosts"))
    r = SSHRemote(node, retry_for=10)
    t0 = time.monotonic()
    timer.start()
    try:
        assert r.run("echo ok").out == "ok\n"
        assert time.monotonic() - t0 >= 0.8
        line = (tmp_path / "known_hosts").read_text().split()
        assert line[0] == f"[{n5.ip}]:{port}" and line[1] == "ssh-ed25519"
        r.close()
        assert SSHRemote(node).run("echo again").out == "again\n"  # the recorded key matches now
        # a recorded key that differs is refused
        other = open(f"{state}/n1/ssh_host_ed25519_key.pub").read().split()
        (tmp_path / "known_hosts").write_text(f"[{n5.ip}]:{port} {other[0]} {other[1]}\n")
        with pytest.raises(RemoteError, match=rf"^n5 \(root@{n5.ip}:{port}\): host key changed"):
            SSHRemote(node).run("true")
    finally:
        timer.join()
        r.close()
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    with pytest.raises(RemoteError, match=rf"^n5 \(root@{n5.ip}:{port}\): connection refused$"):
        SSHRemote(node, retry_for=0.5).run("true")


def test_wrong_key_and_host_key_problems(embedded_cluster, tmp_path):
    n2 = embedded_cluster.nodes[1]
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(RemoteError, match=rf"^n2 \(root@{n2.ip}:22\): authentication failed for root with key {key}$"):
        SSHRemote(replace(n2, key=str(key))).run("true")
    with pytest.raises(RemoteError, match=r"key file /nonexistent/key not found$"):
        SSHRemote(replace(n2, key="/nonexistent/key")).run("true")
    # pinned: a host key that is not the pinned one is refused
    wrong = tmp_path / "known_hosts"
    other = open(os.path.join(os.path.dirname(n2.known_hosts), "n1", "ssh_host_ed25519_key.pub")).read().split()
    wrong.write_text(f"{n2.ip} {other[0]} {other[1]}\n")
    with pytest.raises(RemoteError, match=r"host key changed"):
        SSHRemote(replace(n2, known_hosts=str(wrong))).run("true")
    wrong.write_text("")
    with pytest.raises(RemoteError, match=rf"host key ssh-ed25519 is not the one pinned in {wrong}$"):
        SSHRemote(replace(n2, known_hosts=str(wrong))).run("true")


def test_unreachable_host(embedded_cluster):
    ghost = replace(embedded_cluster.nodes[0], name="n9", host=embedded_cluster.nodes[0].ip.rsplit(".", 1)[0] + ".250")
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as e:
        SSHRemote(ghost, connect_timeout=1.5).run("true")
    msg = str(e.value)
    assert msg.startswith(f"n9 (root@{ghost.host}:22): ") and "\n" not in msg
    assert "timed out" in msg or "No route to host" in msg
    assert time.monotonic() - t0 < 6


@pytest.fixture
def sudo_user_sshd(embedded_cluster):
    """An sshd in n4's namespace that admits only user `eptuser` (uid 4242, passwordless sudo).

    The user exists only inside a private mount namespace of that sshd (passwd, group, shadow
    and sudoers bind-mounted over copies), so this machine's accounts are never changed."""
    import shutil
    import tempfile

    if shutil.which("sudo") is None or not os.path.exists("/etc/sudoers"):
        pytest.skip("sudo not installed (Debian package sudo; `make test` installs it)")
    n4 = embedded_cluster.nodes[3]
    d = tempfile.mkdtemp(prefix="etcdproof-sudo-", dir="/tmp")
    os.chmod(d, 0o755)
    home = os.path.join(d, "home")
    os.mkdir(home)
    os.chown(home, 4242, 4242)
    for name, line in (("passwd", f"eptuser:x:4242:4242::{home}:/bin/sh"), ("group", "eptuser:x:4242:"),
                       ("shadow", "eptuser:*:19000:0:99999:7:::")):
        with open(f"/etc/{name}") as f:
            text = f.read()
        with open(os.path.join(d, name), "w") as f:
            f.write(text + line + "\n")
    with open(os.path.join(d, "sudoers"), "w") as f:
        f.write("root ALL=(ALL:ALL) ALL\neptuser ALL=(ALL) NOPASSWD: ALL\n")
    os.chmod(os.path.join(d, "sudoers"), 0o440)
    key = os.path.join(d, "key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    os.chmod(key + ".pub", 0o644)
    state = os.path.dirname(n4.known_hosts)
    with open(f"{state}/n4/sshd_config") as f:
        conf = f.read()
    port = node_free_port(embedded_cluster.remotes["n4"])
    conf = (conf.replace(f"ListenAddress {n4.ip}:22", f"ListenAddress {n4.ip}:{port}")
            .replace("AllowUsers root", "AllowUsers eptuser")
            .replace(f"PidFile {state}/n4/sshd.pid", f"PidFile {d}/sshd.pid")
            .replace(f"AuthorizedKeysFile {state}/control_key.pub", f"AuthorizedKeysFile {key}.pub"))
    with open(os.path.join(d, "sshd_config"), "w") as f:
        f.write(conf)
    binds = "; ".join(f"mount --bind {d}/{x} /etc/{x}" for x in ("passwd", "group", "shadow", "sudoers"))
    subprocess.run(["ip", "netns", "exec", n4.netns, "unshare", "-m", "--propagation", "private", "sh", "-c",
                    f"{binds}; exec /usr/sbin/sshd -f {d}/sshd_config -E {d}/sshd.log"], check=True)
    node = Node("u4", n4.ip, port, user="eptuser", key=key, host_keys="off")
    try:
        yield node
    finally:
        try:
            os.kill(int(open(f"{d}/sshd.pid").read()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        shutil.rmtree(d, ignore_errors=True)


def test_non_root_user_goes_through_sudo(sudo_user_sshd, tmp_path):
    r = SSHRemote(sudo_user_sshd, retry_for=5)
    d = f"/var/tmp/etcdproof-sudo-test-{uuid.uuid4().hex[:8]}"
    try:
        assert r.run("id -u; printf %s \"$SUDO_USER\"").out == "0\neptuser"  # root, via sudo -n
        r.run(f"mkdir -m 700 {d}")
        src = tmp_path / "f"
        src.write_bytes(os.urandom(5000))
        r.upload(str(src), f"{d}/f")  # staged in /tmp as the user, moved into place as root
        assert r.run(f"stat -c %U {d}/f").out.strip() == "root"
        r.download(f"{d}/f", str(tmp_path / "back"))  # a root-only file, copied out for the user
        assert (tmp_path / "back").read_bytes() == src.read_bytes()
        assert r.run("ls /tmp | grep -c etcdproof-upload- || true").out.strip() == "0"  # no staging left
        pid = r.start_daemon(["sleep", "30"], f"{d}/log", f"{d}/pid")
        assert r.run(f"stat -c %u /proc/{pid}").out.strip() == "0" and r.daemon_pid(f"{d}/pid") == pid
        assert r.signal_daemon(f"{d}/pid", signal.SIGKILL)
    finally:
        r.run(f"rm -rf {d}", check=False)
        r.close()
