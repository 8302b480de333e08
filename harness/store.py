"""The store: one directory per run, written in phases, so a run can be re-checked and re-rendered.

    store/<test-name>/<UTC start time>/
        test.json        the test's parameters, targets, versions (written first)
        history.jsonl    every op, appended as it happens
        nodes/<name>/    node logs and data, collected at teardown
        results.json     the checkers' verdicts (written last)
        index.html       the report
    store/<test-name>/latest -> <UTC start time>
    store/latest -> <test-name>/<UTC start time>

The root is --store, else $ETCDPROOF_STORE, else ./store.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

TEST_JSON, HISTORY, RESULTS, REPORT = "test.json", "history.jsonl", "results.json", "index.html"


def store_root(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("ETCDPROOF_STORE") or "store").resolve()


def safe_name(name: str) -> str:
    """A test name usable as one path component."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-.")
    return s or "test"


def _point(link: Path, target: str) -> None:
    """Atomically make link a symlink to target (relative)."""
    tmp = link.with_name(f".{link.name}-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def new_run_dir(root: Path, test_name: str, now: datetime | None = None) -> Path:
    """Create store/<test>/<time>/ (suffixed when taken) and point the latest links at it."""
    name = safe_name(test_name)
    parent = root / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    run = parent / stamp
    n = 1
    while True:
        try:
            run.mkdir()
            break
        except FileExistsError:
            n += 1
            run = parent / f"{stamp}-{n}"
    _point(parent / "latest", run.name)
    _point(root / "latest", f"{name}/{run.name}")
    return run


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_object(path: Path) -> dict:
    """A run file holding one JSON object; {} when it is not there (not written yet), ValueError
    naming the file when it is not a JSON object."""
    try:
        data = read_json(path)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object but {type(data).__name__}")
    return data


def runs(root: Path) -> list[Path]:
    """Every run directory in the store (those with a test.json), newest first."""
    found = [p.parent for p in root.glob(f"*/*/{TEST_JSON}") if not p.parent.is_symlink()]
    return sorted(found, key=lambda p: p.name, reverse=True)
