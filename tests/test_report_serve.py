"""`etcdproof serve`: the store over real HTTP. The index follows the store, a run whose report
was never rendered gets it on first request, and a malformed run is listed as files (the server
says why on stderr) instead of dropping the connection."""
from __future__ import annotations

import shutil
import threading
import urllib.request
from pathlib import Path

import pytest

from reports.serve import make_server

FIXTURES = Path(__file__).resolve().parent / "data" / "runs"


@pytest.fixture
def served(tmp_path: Path):
    shutil.copytree(FIXTURES / "valid", tmp_path / "fixture-valid" / "20261201T200000Z")
    broken = tmp_path / "broken" / "20261201T200001Z"
    broken.mkdir(parents=True)
    (broken / "test.json").write_text("{not json")
    srv = make_server(tmp_path, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(10)


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read().decode()


def test_index_and_a_report_rendered_on_first_request(served) -> None:
    root, base = served
    status, page = get(base + "/")
    assert status == 200 and "fixture-valid/20261201T200000Z" in page
    run = root / "fixture-valid" / "20261201T200000Z"
    assert not (run / "index.html").exists()
    status, page = get(base + "/fixture-valid/20261201T200000Z/")
    assert status == 200 and "<title>fixture-valid: valid</title>" in page
    assert (run / "index.html").exists()


def test_a_malformed_run_is_listed_and_the_server_goes_on(served, capfd) -> None:
    root, base = served
    status, page = get(base + "/broken/20261201T200001Z/")
    assert status == 200 and "test.json" in page and "<title>broken" not in page
    err = capfd.readouterr().err
    assert "no report for" in err and "test.json: not valid JSON" in err, err
    assert get(base + "/")[0] == 200
