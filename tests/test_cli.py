"""`etcdproof` on bad input: one line saying what is wrong, exit 2, nothing started.

Real processes: the CLI is run as a user runs it. Inventories that cannot work (a missing file,
an unknown key, an unreachable host) must fail before anything is installed, naming the file or
host and the problem.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def etcdproof(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("usage:") and not x.startswith("  ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_help_lists_every_command() -> None:
    r = etcdproof("--help")
    assert r.returncode == 0
    for cmd in ("test", "analyze", "report", "check", "cluster", "bench", "demo"):
        assert cmd in r.stdout


def test_unknown_command() -> None:
    assert "unknown command 'tset'" in one_line_error(etcdproof("tset"))


@pytest.mark.parametrize("args, expect", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--time-limit", "-3"], "--time-limit must be positive"),
    (["--rate", "-1"], "--rate must not be negative"),
    (["--db", "mysql"], "invalid choice: 'mysql'"),
    (["--nemesis", "kill,meteor"], "unknown nemesis 'meteor'"),
    (["-w", "queue"], "unknown workload 'queue'"),
    (["--nodes", "loopback", "--node-count", "0"], "--node-count must be at least 1, not 0"),
    # the second name is checked before the first run would start (the nodes file cannot even load)
    (["-w", "register,queue", "--nodes-file", "/nonexistent.toml"], "unknown workload 'queue'"),
    (["-w", ","], "no workload named"),
])
def test_bad_test_flags(args, expect, tmp_path) -> None:
    r = etcdproof("test", "--store", str(tmp_path), *args)
    assert expect in one_line_error(r)
    assert not any(tmp_path.iterdir()), "a run directory was made for a test that could not run"


@pytest.mark.parametrize("args, expect", [
    ([], "no benchmark named"),
    (["frob"], "unknown benchmark 'frob'"),
    (["kv", "--clients", "1,many"], "--clients '1,many': comma-separated whole numbers"),
    (["kv", "--clients", "0,64"], "each count must be at least 1"),
    (["kv", "--ops", "put,scan"], "unknown op 'scan'"),
    (["kv", "--duration", "-5"], "--duration must be positive"),
    (["kv", "--procs", "0"], "--procs must be at least 1"),
    (["kv", "--nodes", "loopback", "--node-count", "0"], "bench kv: --node-count must be at least 1"),
    (["disk", "--nodes-file", "/nonexistent.toml"], "bench disk: --nodes-file /nonexistent.toml: no such file"),
])
def test_bad_bench_flags(args, expect, tmp_path) -> None:
    r = etcdproof("bench", *args, "--store", str(tmp_path)) if args else etcdproof("bench")
    assert expect in one_line_error(r)
    assert not any(tmp_path.iterdir()), "something was stored for a benchmark that could not run"


def test_missing_nodes_file(tmp_path) -> None:
    err = one_line_error(etcdproof("test", "--nodes-file", str(tmp_path / "nope.toml"), "--store", str(tmp_path)))
    assert "nope.toml" in err and "no such file" in err


def test_nodes_file_with_an_unknown_key(tmp_path) -> None:
    f = tmp_path / "nodes.toml"
    f.write_text('[[nodes]]\nname = "n1"\nhost = "127.0.0.1"\npassword = "hunter2"\n')
    err = one_line_error(etcdproof("test", "--nodes-file", str(f), "--store", str(tmp_path / "s")))
    assert "unknown key 'password'" in err and "nodes.toml" in err


def test_unreachable_host_names_the_host(tmp_path) -> None:
    # a port on loopback where nothing listens: the connection is refused at once
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = tmp_path / "nodes.toml"
    f.write_text(f'port = {port}\n[[nodes]]\nname = "n1"\nhost = "127.0.0.1"\n')
    err = one_line_error(etcdproof("test", "--nodes-file", str(f), "--store", str(tmp_path / "s"), timeout=120))
    assert "n1" in err and "127.0.0.1" in err and "refused" in err


def test_analyze_and_report_refuse_what_is_not_a_run(tmp_path) -> None:
    assert "not a run directory" in one_line_error(etcdproof("analyze", str(tmp_path)))
    assert "not a run directory" in one_line_error(etcdproof("report", str(tmp_path)))


@pytest.mark.parametrize("test_json, history, expect", [
    ("{not json", "", "test.json: not valid JSON"),
    ("[]", "", "test.json: not a JSON object but list"),
    ('{"spec": {"workload": "register"}}', "not json\n", "history.jsonl: history line 1:"),
    ('{"spec": {"workload": "register"}}', "[1]\n", "history.jsonl: history line 1: not a JSON object"),
])
@pytest.mark.parametrize("command", ["analyze", "report"])
def test_analyze_and_report_name_the_malformed_file(tmp_path, command, test_json, history, expect) -> None:
    (tmp_path / "test.json").write_text(test_json)
    (tmp_path / "history.jsonl").write_text(history)
    err = one_line_error(etcdproof(command, str(tmp_path)))
    assert err.startswith(f"etcdproof {command}: {tmp_path}/") and expect in err, err


def test_a_setup_failure_is_one_line_and_leaves_a_run_that_says_why(tmp_path) -> None:
    import json

    r = etcdproof("test", "--nodes", "loopback", "--node-count", "1", "--db", "etcd", "--etcd-bin", "/nonexistent/etcd",
                  "--time-limit", "5", "--store", str(tmp_path), "--base-dir", str(tmp_path / "base"), "--no-progress",
                  "--client-port", "23111", "--peer-port", "23112")
    assert r.returncode == 2, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("etcdproof test:")]
    assert len(errors) == 1, r.stderr
    err = errors[0]
    assert "/nonexistent/etcd" in err and "n1" in err
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert results["valid"] == "unknown" and "/nonexistent/etcd" in results["error"]
