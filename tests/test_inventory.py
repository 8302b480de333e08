"""Inventories: TOML node files, vagrant ssh-config (recorded samples, and the real vagrant when
installed), plain names; every bad inventory is a one-line error naming the file or host. The
SSH-level failures (unreachable host, wrong key) are shown against the embedded cluster's sshds."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from harness import inventory as I
from harness.inventory import InventoryError, Node, load, load_nodes_file, named_nodes, parse_ssh_config
from harness.remote import RemoteError

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "nodes.toml") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------- nodes file
def test_nodes_file_with_defaults_and_relative_keys(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("k")
    path = write(tmp_path, """
        user = "admin"
        key = "keys/id"
        [[nodes]]
        name = "n1"
        host = "db1.example.com"
        address = "10.0.0.11"
        [[nodes]]
        name = "n2"
        host = "db2.example.com"
        port = 2222
        user = "root"
        host_keys = "pin"
        known_hosts = "kh"
    """)
    a, b = load_nodes_file(path)
    assert a == Node("n1", "db1.example.com", 22, "admin", str(tmp_path / "keys" / "id"), "10.0.0.11")
    assert a.ip == "10.0.0.11" and b.ip == "db2.example.com"
    assert (b.port, b.user, b.host_keys, b.known_hosts) == (2222, "root", "pin", str(tmp_path / "kh"))
    assert str(b) == "n2 (root@db2.example.com:2222)"


@pytest.mark.parametrize("text, problem", [
    ('[[nodes]]\nname = "n1"\nhost = "h"\nprot = 22\n', r"node n1: unknown key 'prot' \(known: address, host, host_keys"),
    ('usr = "x"\n[[nodes]]\nname = "n1"\nhost = "h"\n', r"unknown key 'usr' \(top level:"),
    ('[[nodes]]\nname = "n1"\nhost = "h"\nport = 70000\n', r"node n1: port must be an integer 1-65535, not 70000"),
    ('[[nodes]]\nname = "n1"\nhost = "h"\nport = "22"\n', r"node n1: port must be an integer 1-65535, not '22'"),
    ('[[nodes]]\nname = "n1"\nhost = "a"\n[[nodes]]\nname = "n1"\nhost = "b"\n', r"duplicate node name 'n1'"),
    ('[[nodes]]\nname = "n1"\n', r"node n1: host missing"),
    ('[[nodes]]\nhost = "h"\n', r"node #1: name missing"),
    ('[[nodes]]\nname = "n/1"\nhost = "h"\n', r"bad node name 'n/1'"),
    ('[[nodes]]\nname = "n1"\nhost = "h"\nkey = "nokey"\n', r"node n1: key file .*/nokey not found"),
    ('[[nodes]]\nname = "n1"\nhost = "h"\nhost_keys = "maybe"\n', r"node n1: host_keys must be one of pin, tofu, off"),
    ('user = "root"\n', r"no \[\[nodes\]\] tables"),
    ('[[nodes]\nname = "n1"\n', r"not valid TOML: .*line 1"),
])
def test_bad_nodes_files(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as e:
        load_nodes_file(path)
    msg = one_line(e)
    assert msg.startswith(f"{path}: ") and re.search(problem, msg), msg


def test_missing_nodes_file(tmp_path):
    with pytest.raises(InventoryError, match=rf"^--nodes-file {tmp_path}/none.toml: no such file$"):
        load(nodes_file=str(tmp_path / "none.toml"))


# ------------------------------------------------------------------ vagrant
def test_vagrant_ssh_config_virtualbox_sample():
    nodes = parse_ssh_config((DATA / "vagrant-ssh-config-virtualbox.txt").read_text())
    assert [n.name for n in nodes] == ["n1", "n2", "n3", "n4", "n5"]
    assert [n.port for n in nodes] == [2222, 2200, 2201, 2202, 2203]
    assert {n.host for n in nodes} == {"127.0.0.1"} and {n.user for n in nodes} == {"vagrant"}
    assert nodes[2].key == "/home/alice/src/etcdproof/.vagrant/machines/n3/virtualbox/private_key"  # quotes gone
    assert [n.ip for n in nodes] == [f"{I.VAGRANT_SUBNET}.{10 + i}" for i in range(1, 6)]
    assert {n.host_keys for n in nodes} == {"off"}  # vagrant's own choice: StrictHostKeyChecking no


def test_vagrant_ssh_config_libvirt_sample():
    nodes = parse_ssh_config((DATA / "vagrant-ssh-config-libvirt.txt").read_text())
    assert [(n.name, n.host, n.port) for n in nodes] == [
        ("n1", "192.168.121.38", 22), ("n2", "192.168.121.121", 22), ("n3", "192.168.121.7", 22)]
    assert nodes[1].key.endswith("/machines/n2/libvirt/private_key")


def test_ssh_config_errors_and_options():
    with pytest.raises(InventoryError, match=r"^vagrant ssh-config: line 1: HostName before any Host$"):
        parse_ssh_config("HostName x\n")
    with pytest.raises(InventoryError, match=r"host n1: bad port 'abc'"):
        parse_ssh_config("Host n1\n  Port abc\n")
    (n,) = parse_ssh_config("Host web\n  HostName=10.1.2.3\n  Port 22\n  Port 23\n")
    assert (n.host, n.port, n.address, n.host_keys, n.user) == ("10.1.2.3", 22, None, "tofu", "root")


def test_vagrantfile_and_inventory_agree_on_addresses():
    text = (REPO / "Vagrantfile").read_text()
    assert f'ENV.fetch("ETCDPROOF_VAGRANT_SUBNET", "{I.VAGRANT_SUBNET}")' in text
    assert 'ip: "#{SUBNET}.#{10 + i}"' in text
    provision = text.split("PROVISION = <<~SHELL\n", 1)[1].split("\nSHELL\n", 1)[0]
    for pkg in ("python3-venv", "iptables", "iproute2", "faketime", "fio", "etcd-server", "rsync"):
        assert pkg in provision
    script = textwrap.dedent(provision).replace("\\\\n", "\\n")
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0  # the shell parses


vagrant = pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant not installed (Debian package vagrant)")


@vagrant
def test_vagrant_validate(tmp_path):
    """The real vagrant accepts the Vagrantfile (with the libvirt provider's settings checked when
    vagrant-libvirt is there), and rejects a broken copy, so the check can fail."""
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")  # vagrant writes .vagrant/ beside it
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, cwd=tmp_path, timeout=120).stdout
    env = {**os.environ, "VAGRANT_DEFAULT_PROVIDER": "libvirt"}
    args = ["vagrant", "validate"] + ([] if "vagrant-libvirt" in plugins else ["--ignore-provider"])
    ok = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert ok.returncode == 0 and "validated successfully" in ok.stdout, ok.stdout + ok.stderr
    broken = (tmp_path / "Vagrantfile").read_text().replace("config.vm.box =", "config.vm.boxx =")
    (tmp_path / "Vagrantfile").write_text(broken)
    bad = subprocess.run(["vagrant", "validate", "--ignore-provider"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert bad.returncode != 0 and "boxx" in bad.stdout + bad.stderr


@vagrant
def test_vagrant_without_vms_is_a_one_line_error(tmp_path, monkeypatch):
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    monkeypatch.setenv("VAGRANT_DEFAULT_PROVIDER", "libvirt")
    with pytest.raises(InventoryError) as e:
        I.vagrant_nodes(cwd=str(tmp_path))
    assert one_line(e).startswith("--nodes vagrant: `vagrant ssh-config` failed (are the VMs up? `vagrant up`): ")


# ------------------------------------------------------------------- names
def test_named_nodes(tmp_path):
    key = tmp_path / "id"
    key.write_text("k")
    nodes = named_nodes("db1,db2", username="admin", key=str(key), port=2200)
    assert nodes == [Node("db1", "db1", 2200, "admin", str(key)), Node("db2", "db2", 2200, "admin", str(key))]
    with pytest.raises(InventoryError, match=r"^--nodes a,,b: empty name in the list$"):
        named_nodes("a,,b")
    with pytest.raises(InventoryError, match=r"^--nodes a,b,a: duplicate node name 'a'$"):
        named_nodes("a,b,a")
    with pytest.raises(InventoryError, match=r"^--ssh-private-key /no/key: no such file$"):
        named_nodes("a", key="/no/key")


def test_resolve_reads_cli_options(tmp_path):
    import argparse

    inv = I.resolve(argparse.Namespace(nodes="loopback", nodes_file=None, username="root", ssh_private_key=None,
                                       node_count=3))
    assert inv.kind == "loopback" and [n.ip for n in inv.nodes] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    assert not inv.can_partition and inv.why_not_partition.startswith("no network namespaces")
    assert set(inv.remotes) == {"n1", "n2", "n3"} and inv.remotes["n2"].run("echo hi").out == "hi\n"
    assert inv.describe()["nodes"][0] == {"name": "n1", "host": "127.0.0.11", "port": 22, "user": inv.nodes[0].user,
                                          "ip": "127.0.0.11", "netns": None}


# ---------------------------------------------------- reaching the nodes (SSH)
@pytest.fixture
def recorded_keys(tmp_path, monkeypatch):
    """User inventories record new host keys; here into a temporary file, not ~/.local/state."""
    path = tmp_path / "known_hosts"
    monkeypatch.setattr("harness.ssh.DEFAULT_KNOWN_HOSTS", str(path))
    return path


def test_nodes_file_over_ssh(embedded_cluster, tmp_path, recorded_keys):
    ns = embedded_cluster.nodes
    key = ns[0].key
    path = write(tmp_path, f'key = "{key}"\n' + "".join(
        f'[[nodes]]\nname = "m{i}"\nhost = "{n.ip}"\n' for i, n in enumerate(ns[:3], 1)))
    inv = load(nodes_file=path)
    try:
        assert inv.kind == "file" and inv.can_partition
        assert inv.remotes["m3"].run("ip -4 -o addr show dev eth0").out.find(f"inet {ns[2].ip}/") >= 0
        assert sorted(line.split()[0] for line in recorded_keys.read_text().splitlines()) == sorted(n.ip for n in ns[:3])
    finally:
        inv.close()


def test_wrong_key_and_unreachable_host_are_one_line_errors(embedded_cluster, tmp_path, recorded_keys):
    good = embedded_cluster.nodes[0]
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    with pytest.raises(RemoteError) as e:
        load(nodes=good.ip, ssh_private_key=str(wrong))
    assert one_line(e) == f"{good.ip} (root@{good.ip}:22): authentication failed for root with key {wrong}"
    ghost = good.ip.rsplit(".", 1)[0] + ".249"
    path = write(tmp_path, f'key = "{good.key}"\n[[nodes]]\nname = "n1"\nhost = "{good.ip}"\n'
                           f'[[nodes]]\nname = "n2"\nhost = "{ghost}"\n')
    with pytest.raises(RemoteError) as e:
        load(nodes_file=path)
    msg = one_line(e)  # only the bad node is named
    assert msg.startswith(f"n2 (root@{ghost}:22): ") and "n1 (" not in msg
    assert re.search(r"No route to host|timed out", msg), msg
