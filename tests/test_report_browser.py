"""The pages in a real browser: `etcdproof serve` on loopback over a store holding the report
fixtures and a disk benchmark, and Debian's chromium, headless, driven over the DevTools protocol
(a small client on aiohttp's websockets).

For the store index, a run report with a failure view, a history page and a benchmark page: the
page loads, every <img> has loaded with a nonzero size, no console error, uncaught exception or
failed request; and the index's filters really filter. Also the server's own behaviour: raw files
as text, a missing report rendered on first request, 404s, and a one-line error for a taken port.
Skips with the reason when chromium is not installed.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from harness.localproc import free_port

FIXTURES = Path(__file__).parent / "data" / "runs"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and os.path.exists(p)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
ETCDPROOF = Path(sys.executable).with_name("etcdproof")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for i, kind in enumerate(("valid", "invalid", "unknown")):
        shutil.copytree(FIXTURES / kind, root / f"fixture-{kind}" / f"20261201T20000{i}Z")
    # a small real disk benchmark, stored like any other
    out = subprocess.run([str(ETCDPROOF), "bench", "disk", "--dir", str(root), "--wal-size", "512k",
                          "--read-size", "1m", "--read-runtime", "0.5", "--no-batch", "--store", str(root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr
    return root


@pytest.fixture(scope="module")
def server(store: Path):
    port = free_port()
    p = subprocess.Popen([str(ETCDPROOF), "serve", "--store", str(store), "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        line = p.stdout.readline()
        assert f"at {url}/" in line, (line, p.stderr.read() if p.poll() is not None else "")
        yield url
    finally:
        p.terminate()
        p.wait(timeout=10)


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


def test_serve_answers_with_pages_raw_files_and_404s(store: Path, server: str) -> None:
    status, ctype, body = get(server + "/")
    assert status == 200 and ctype.startswith("text/html") and b"every run in the store" in body
    assert (store / "index.html").exists()
    run = "fixture-unknown/20261201T200002Z"
    assert not (store / run / "index.html").exists()
    status, _, body = get(f"{server}/{run}/")  # never rendered: rendered now
    assert status == 200 and b"fixture-unknown" in body and (store / run / "index.html").exists()
    status, ctype, body = get(f"{server}/{run}/history.jsonl")
    assert status == 200 and ctype.startswith("text/plain") and body == (store / run / "history.jsonl").read_bytes()
    assert get(f"{server}/{run}/nodes/n1/server.log")[1].startswith("text/plain")
    assert get(f"{server}/no/such/run/")[0] == 404
    assert get(f"{server}/../../etc/passwd")[0] == 404


def test_serve_refuses_a_taken_port_in_one_line(store: Path, server: str) -> None:
    port = server.rsplit(":", 1)[1]
    out = subprocess.run([str(ETCDPROOF), "serve", "--store", str(store), "--port", port],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "address already in use" in out.stderr
    out = subprocess.run([str(ETCDPROOF), "serve", "--store", str(store / "nope")], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "is not a directory" in out.stderr


# ------------------------------------------------------------------ a small DevTools client
class Page:
    """One browser tab over the DevTools protocol: commands, and the events we judge pages by."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
                if data["method"] == "Page.loadEventFired":
                    self.loaded.set()

    async def send(self, method: str, **params) -> dict:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        data = await asyncio.wait_for(fut, 30)
        if "error" in data:
            raise AssertionError(f"{method}: {data['error']}")
        return data.get("result", {})

    async def evaluate(self, js: str):
        r = await self.send("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{js}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def open(self, url: str) -> None:
        self.events.clear()
        self.loaded.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(self.loaded.wait(), 30)
        await asyncio.sleep(0.3)  # late console messages and requests

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, failed or erroring requests since the last open."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"request failed: {p.get('errorText')}")
            elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
                out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        return out


async def browse(urls: list[str], tmp: Path, index: str) -> dict[str, dict]:
    """Open each URL in headless chromium; per URL its problems, images and a few page facts (and,
    on the store index, what its verdict filter leaves shown)."""
    profile = tmp / "profile"
    profile.mkdir()
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    tabs = [t for t in await r.json() if t.get("type") == "page"]
                if tabs:
                    break
                await asyncio.sleep(0.1)
            async with http.ws_connect(tabs[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await page.send(f"{domain}.enable")
                out = {}
                for url in urls:
                    await page.open(url)
                    out[url] = {
                        "problems": page.problems(),
                        "title": await page.evaluate("document.title"),
                        "images": await page.evaluate(
                            "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
                            ".then(() => Array.from(document.images).map(i => [i.getAttribute('src'), i.complete,"
                            " i.naturalWidth, i.naturalHeight]))"),
                        "bands": await page.evaluate("document.querySelectorAll('.tl.band').length"),
                        "boxes": await page.evaluate("document.querySelectorAll('a.op').length"),
                        # a failing band is scrolled so that the end of its prefix is in view
                        "cut_in_view": await page.evaluate(
                            "Array.from(document.querySelectorAll('.band .scroll')).filter(s => s.querySelector('.cut'))"
                            ".map(s => { const c = s.querySelector('.cut').getBoundingClientRect(),"
                            " v = s.getBoundingClientRect(); return c.left >= v.left && c.left <= v.right; })"),
                    }
                    if url == index:  # do the filters filter?
                        out[url]["filtered"] = await page.evaluate(
                            "(() => { const s = document.getElementById('f-verdict'); s.value = 'INVALID';"
                            " s.dispatchEvent(new Event('change'));"
                            " const shown = Array.from(document.querySelectorAll('#runs tbody tr'))"
                            ".filter(tr => !tr.classList.contains('hidden')).map(tr => tr.dataset.verdict);"
                            " return [shown, document.getElementById('shown').textContent]; })()")
                        out[url]["problems"] += page.problems()[len(out[url]["problems"]):]
                page.reader.cancel()
        return out
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
def test_pages_render_in_a_real_browser(store: Path, server: str, tmp_path: Path) -> None:
    bench = next((store / "bench-disk").glob("2*")).relative_to(store).as_posix()
    urls = {
        "index": server + "/",
        "invalid": server + "/fixture-invalid/20261201T200001Z/",
        "valid": server + "/fixture-valid/20261201T200000Z/index.html",
        "unknown": server + "/fixture-unknown/20261201T200002Z/",
        "history": server + "/fixture-invalid/20261201T200001Z/report/history.html#op-310",
        "bench": f"{server}/{bench}/",
    }
    got = asyncio.run(asyncio.wait_for(browse(list(urls.values()), tmp_path, urls["index"]), 180))
    for name, url in urls.items():
        assert got[url]["problems"] == [], (name, got[url]["problems"])
    imgs = {name: got[url]["images"] for name, url in urls.items()}
    # the invalid run is the valid one with a planted read: both had the clock fault, so four plots
    assert [len(imgs[k]) for k in ("valid", "invalid", "unknown", "bench")] == [4, 4, 3, 1]
    for name in ("valid", "invalid", "unknown", "bench"):
        for src, complete, w, h in imgs[name]:
            assert complete and w > 100 and h > 100, (name, src, w, h)
    assert got[urls["invalid"]]["title"] == "fixture-invalid: INVALID"
    assert got[urls["invalid"]]["bands"] >= 2  # the failing partition, and those that passed
    assert got[urls["invalid"]]["cut_in_view"] == [True]
    assert got[urls["valid"]]["boxes"] > 100  # the timeline's ops
    assert got[urls["history"]]["title"] == "fixture-invalid: history"
    shown, text = got[urls["index"]]["filtered"]
    assert shown == ["INVALID"] and text == "1 of 4 shown"
