"""`etcdproof check` on JSONL and Jepsen EDN histories (exit codes, text, --json), and the EDN
reader on its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from checker import edn
from checker.cli import main
from checker.history import HistoryWriter

from checker_oracle import Recorder, exponential_history

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_edn_values():
    v = edn.loads('{:a [1 -2 3.5 4N 5M 1/2] :b "x\\"y\\n\\u00e9" :c #{:k} :d (nil true false) '
                  ':e \\a :f sym/name ; a comment\n :g #_ :gone :kept :h #inst "2020-01-01" '
                  ':i #jepsen.history.Op{:type :ok}, :j {[1 2] 3}}')
    assert v["a"] == [1, -2, 3.5, 4, 5.0, 0.5]
    assert v["b"] == 'x"y\né'
    assert v["c"] == frozenset({"k"}) and isinstance(next(iter(v["c"])), edn.Keyword)
    assert v["d"] == [None, True, False]
    assert v["e"] == "a" and v["f"] == "sym/name" and isinstance(v["f"], edn.Symbol)
    assert v["g"] == "kept"
    assert v["h"] == "2020-01-01" and v["i"] == {"type": "ok"}
    assert v["j"] == {(1, 2): 3}
    assert list(edn.read_all("1 [2] {:a 3}")) == [1, [2], {"a": 3}]


@pytest.mark.parametrize("text,msg", [("[1 2", "not closed"), ("[1 2}", "closed by"), ("{:a}", "odd number"),
                                      (")", "unexpected"), ("12abc", "not a number")])
def test_edn_errors_say_where(text, msg):
    with pytest.raises(edn.EDNError, match=msg):
        list(edn.read_all(text))


JEPSEN_CAS = """\
{:type :invoke, :f :write, :value 1, :process 0, :time 10, :index 0}
{:type :ok, :f :write, :value 1, :process 0, :time 20, :index 1}
{:type :invoke, :f :cas, :value [1 2], :process 1, :time 30, :index 2}
{:type :invoke, :f :read, :value nil, :process 2, :time 31, :index 3}
{:type :info, :f :start, :value nil, :process :nemesis, :time 32, :index 4}
{:type :fail, :f :cas, :value [1 2], :process 1, :time 40, :index 5, :error :value-mismatch}
{:type :ok, :f :read, :value %s, :process 2, :time 50, :index 6}
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_jepsen_histories_convert_with_jepsen_meanings():
    ops = edn.jepsen_ops(JEPSEN_CAS % "1")
    assert [(o.index, o.process, o.type, o.f, o.value) for o in ops][:3] == [
        (0, 0, "invoke", "write", 1), (1, 0, "ok", "write", 1), (2, 1, "invoke", "cas", [1, 2])]
    assert ops[4].process == "nemesis" and ops[5].error == "value-mismatch"


def test_check_jepsen_edn(tmp_path, capsys):
    assert main(["--model", "register", write(tmp_path, "history.edn", JEPSEN_CAS % "1")]) == 0
    assert main(["--model", "register", write(tmp_path, "h2.edn", JEPSEN_CAS % "7")]) == 1
    out = capsys.readouterr().out
    assert "NOT linearizable" in out and "op 3 (process 2) read 7" in out


def test_check_jepsen_independent_keys(tmp_path):
    lines = []
    for n, (p, typ, f, k, v) in enumerate([(0, "invoke", "write", 1, 5), (0, "ok", "write", 1, 5),
                                           (1, "invoke", "read", 2, "nil"), (1, "ok", "read", 2, "nil"),
                                           (0, "invoke", "read", 1, "nil"), (0, "ok", "read", 1, 5)]):
        lines.append(f"{{:type :{typ}, :f :{f}, :value [{k} {v}], :process {p}, :time {n}}}")
    path = write(tmp_path, "ind.edn", "\n".join(lines))
    assert main(["--json", path]) == 0
    lines[-1] = lines[-1].replace("[1 5]", "[1 6]")  # key 1 read a value never written to it
    assert main([write(tmp_path, "ind2.edn", "\n".join(lines))]) == 1


def save_jsonl(tmp_path, rec: Recorder, name="history.jsonl") -> str:
    path = tmp_path / name
    with open(path, "w") as f:
        w = HistoryWriter(f)
        for op in rec.ops:
            w.write(op)
    return str(path)


def test_check_jsonl_exit_codes_and_json(tmp_path, capsys):
    good = save_jsonl(tmp_path, Recorder().op(0, "write", 1).op(1, "read", None, result=1), "good.jsonl")
    assert main([good]) == 0
    assert "linearizable: model register, 2 ops in 1 partitions" in capsys.readouterr().out
    bad = save_jsonl(tmp_path, Recorder().op(0, "write", 1).op(0, "write", 2).op(1, "read", None, result=1), "bad.jsonl")
    assert main(["--json", bad]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["valid"] is False and d["failures"] == ["x"]
    assert d["partitions"][0]["minimal"]["ops"] == [2, 4]
    assert main([bad]) == 1
    out = capsys.readouterr().out
    assert "read 1 but the register holds 2" in out and "ops to look at (minimal" in out
    # a run directory works too
    os.rename(bad, tmp_path / "history.jsonl")
    assert main([str(tmp_path)]) == 1


def test_unknown_is_exit_2(tmp_path):
    rec = exponential_history()
    assert main(["--time-limit", "0.3", "--explain-limit", "0", save_jsonl(tmp_path, rec)]) == 2


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert main([write(tmp_path, "bad.jsonl", '{"index": 0, "type": "bogus"}\n')]) == 2
    assert main([write(tmp_path, "bad.edn", "{:type :ok")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("etcdproof check: ") for line in err)
    assert "history line 1" in err[1] and "not closed" in err[2]


@pytest.mark.parametrize("line, expect", [
    ("[1, 2]", "history line 1: not a JSON object but list"),
    ('{"type": "invoke", "f": "read", "process": 0}', "history line 1: no 'index' field"),
    ('{"index": 0, "type": "ok", "f": "read"}', "history line 1: no 'process' field"),
])
def test_a_line_that_is_no_op_is_named_in_one_line(tmp_path, capsys, line, expect):
    assert main([write(tmp_path, "bad.jsonl", line + "\n")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"etcdproof check: {expect}"]


def test_the_installed_command(tmp_path):
    bad = save_jsonl(tmp_path, Recorder().op(0, "write", 1).op(1, "read", None, result=3))
    exe = os.path.join(os.path.dirname(sys.executable), "etcdproof")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "harness.cli"]
    r = subprocess.run([*cmd, "check", "--model", "register", bad], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "NOT linearizable" in r.stdout


def test_ctrl_c_during_a_long_check_is_one_line_and_exit_130(tmp_path):
    """The same 2^26 history with no budget: a SIGINT ends `etcdproof check` with exit 130 and
    one line, not a traceback."""
    import signal
    import time

    rec = exponential_history()
    path = save_jsonl(tmp_path, rec)
    exe = os.path.join(os.path.dirname(sys.executable), "etcdproof")
    proc = subprocess.Popen([exe, "check", "--model", "register", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # well into the search (the 0.5 s budget test shows it is still going)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip() == "etcdproof check: interrupted", err
