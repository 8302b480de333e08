"""Our fio wrapper: job files written from typed specs, fio run on a node (over its Remote, or this
machine), and fio's JSON output parsed into typed results.

Only what the disk check reads is typed: per job and direction, bytes, IOPS, bandwidth and latency
percentiles, and the sync (fsync/fdatasync) latencies fio reports for `fdatasync=1` jobs. Times in
fio's JSON are nanoseconds; the properties here say their unit.

Errors are one line: `FioMissing` when there is no fio on the node, `FioFailed` when fio exits
non-zero or a job reports an error (with fio's own words), `FioParseError` for output that is not
fio's JSON.
"""
from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import dataclass, field
from typing import Any

from harness.remote import Remote, RemoteError


class FioError(Exception):
    """fio could not give a result; the message is one line."""


class FioMissing(FioError):
    pass


class FioFailed(FioError):
    pass


class FioParseError(FioError):
    pass


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class Latency:
    """A latency distribution as fio reports it (nanoseconds), with its percentiles."""

    n: int
    min_ns: float
    max_ns: float
    mean_ns: float
    stddev_ns: float
    percentiles: dict[float, float] = field(default_factory=dict)  # percent -> ns

    def percentile_ns(self, p: float) -> float:
        """The reported percentile at p (percent), or the next one above it fio reported; the
        maximum past the last. fio's percentiles are the upper edges of its histogram bins, so
        they may exceed the largest latency seen: they are capped at it."""
        if not self.percentiles:
            return self.max_ns
        for k in sorted(self.percentiles):
            if k >= p - 1e-9:
                return min(self.percentiles[k], self.max_ns) if self.max_ns else self.percentiles[k]
        return self.max_ns

    def ms(self, p: float) -> float:
        return self.percentile_ns(p) / 1e6

    @property
    def p50_ms(self) -> float:
        return self.ms(50.0)

    @property
    def p99_ms(self) -> float:
        return self.ms(99.0)

    @property
    def p999_ms(self) -> float:
        return self.ms(99.9)

    @property
    def mean_ms(self) -> float:
        return self.mean_ns / 1e6


@dataclass(frozen=True)
class Direction:
    """One direction (read or write) of a job."""

    io_bytes: int
    bw_bytes: float  # per second
    iops: float
    runtime_ms: float
    total_ios: int
    clat: Latency | None  # completion latency of each I/O
    lat: Latency | None  # submission + completion


@dataclass(frozen=True)
class Job:
    name: str
    error: int
    read: Direction
    write: Direction
    sync: Latency | None  # fsync/fdatasync latencies (jobs with fsync= or fdatasync=)
    usr_cpu: float
    sys_cpu: float
    options: dict[str, str]


@dataclass(frozen=True)
class FioResult:
    version: str
    timestamp: int
    jobs: list[Job]
    disk_util: list[dict]

    def job(self, name: str) -> Job:
        for j in self.jobs:
            if j.name == name:
                return j
        raise FioParseError(f"fio output has no job {name!r} (jobs: {', '.join(j.name for j in self.jobs)})")


def _latency(d: Any) -> Latency | None:
    if not isinstance(d, dict) or not d.get("N"):
        return None
    pct = {float(k): float(v) for k, v in (d.get("percentile") or {}).items()}
    return Latency(int(d["N"]), float(d.get("min", 0)), float(d.get("max", 0)), float(d.get("mean", 0.0)),
                   float(d.get("stddev", 0.0)), pct)


def _direction(d: dict) -> Direction:
    return Direction(int(d.get("io_bytes", 0)), float(d.get("bw_bytes", 0.0)), float(d.get("iops", 0.0)),
                     float(d.get("runtime", 0)), int(d.get("total_ios", 0)), _latency(d.get("clat_ns")),
                     _latency(d.get("lat_ns")))


def parse(text: str) -> FioResult:
    """fio's --output-format=json output (anything printed before the JSON object is skipped)."""
    start = text.find("{")
    if start < 0:
        raise FioParseError(f"no JSON in fio's output: {text.strip()[:200]!r}")
    try:
        d = json.loads(text[start:])
    except ValueError as e:
        raise FioParseError(f"fio's output is not JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("jobs"), list):
        raise FioParseError("fio's JSON has no jobs list")
    jobs = []
    for j in d["jobs"]:
        try:
            sync = j.get("sync") or {}
            jobs.append(Job(
                name=str(j["jobname"]), error=int(j.get("error", 0)),
                read=_direction(j.get("read") or {}), write=_direction(j.get("write") or {}),
                sync=_latency(sync.get("lat_ns")), usr_cpu=float(j.get("usr_cpu", 0.0)),
                sys_cpu=float(j.get("sys_cpu", 0.0)),
                options={str(k): str(v) for k, v in (j.get("job options") or {}).items()}))
        except (KeyError, TypeError, ValueError) as e:
            raise FioParseError(f"fio's JSON job is malformed: {type(e).__name__}: {e}") from None
    return FioResult(str(d.get("fio version", "?")), int(d.get("timestamp", 0)), jobs, list(d.get("disk_util") or []))


# ------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class JobSpec:
    """One fio job; every field becomes an option of its section in the job file."""

    name: str
    rw: str  # write | read | randread | randwrite ...
    bs: int | str
    size: str  # "22m"
    ioengine: str = "sync"
    fdatasync: int = 0  # fdatasync after every N writes (0: never)
    direct: bool = False
    runtime: float | None = None  # seconds; with time_based, run this long
    time_based: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    def options(self) -> list[tuple[str, str]]:
        opts = [("rw", self.rw), ("bs", str(self.bs)), ("size", self.size), ("ioengine", self.ioengine)]
        if self.fdatasync:
            opts.append(("fdatasync", str(self.fdatasync)))
        if self.direct:
            opts.append(("direct", "1"))
        if self.runtime:
            opts.append(("runtime", f"{self.runtime:g}s"))
        if self.time_based:
            opts.append(("time_based", "1"))
        return opts + list(self.extra)


def job_file(directory: str, jobs: list[JobSpec]) -> str:
    """An fio job file running the jobs one after another (stonewall) in directory."""
    lines = ["[global]", f"directory={directory}", "group_reporting=0", ""]
    for j in jobs:
        if "\n" in j.name or "]" in j.name:
            raise ValueError(f"bad fio job name {j.name!r}")
        lines.append(f"[{j.name}]")
        lines.append("stonewall")
        lines += [f"{k}={v}" for k, v in j.options()]
        lines.append("")
    return "\n".join(lines)


def _first_words(err: str, out: str) -> str:
    """fio's complaint as one line: its distinct 'fio:' lines, else the tail of what it printed."""
    lines = [ln.strip() for ln in (err + "\n" + out).splitlines() if ln.strip()]
    said = [ln[4:].strip() if ln.startswith("fio:") else ln for ln in lines if ln.startswith("fio:") or "error" in ln]
    seen: list[str] = []
    for s in said or lines[-3:]:
        if s not in seen:
            seen.append(s)
    return "; ".join(seen)[:400] or "no output"


def run(remote: Remote, workdir: str, jobs: list[JobSpec], fio: str = "fio", timeout: float = 600.0) -> FioResult:
    """Run the jobs with fio on the node behind `remote`, in workdir (which must exist), and parse the
    result here. The job file is uploaded to workdir; fio's data files are left for the caller to remove."""
    where = getattr(remote, "desc", None) or remote.node
    probe = remote.run(f"command -v {shlex.quote(fio)}", timeout=30, check=False)
    if probe.exit != 0 or not probe.out.strip():
        raise FioMissing(f"fio not found on {where} (install the Debian package fio)")
    with tempfile.NamedTemporaryFile("w", suffix=".fio", delete=False) as f:
        f.write(job_file(workdir, jobs))
        local = f.name
    remote_job = f"{workdir.rstrip('/')}/etcdproof-check.fio"
    try:
        remote.upload(local, remote_job)
    except RemoteError as e:
        raise FioFailed(f"could not upload the fio job to {where}:{workdir}: {e}") from None
    finally:
        os.unlink(local)
    res = remote.run(f"{shlex.quote(fio)} --output-format=json {shlex.quote(remote_job)}", timeout=timeout, check=False)
    if res.exit != 0:
        raise FioFailed(f"fio failed on {where} in {workdir}: {_first_words(res.err, res.out)}")
    result = parse(res.out)
    bad = [j for j in result.jobs if j.error]
    if bad:
        raise FioFailed(f"fio job {bad[0].name} failed on {where} in {workdir} (error {bad[0].error}): "
                        f"{_first_words(res.err, '')}")
    return result
