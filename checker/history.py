"""The history: every operation, twice (invoke, then ok | fail | info), appended as it happens.

One JSON object per line (docs/history-format.md):

    {"index": 12, "process": 3, "node": "n2", "type": "invoke", "f": "cas", "value": [1, 4],
     "key": "r7", "time": 1523345112, "wall": 1795323300.25, "error": null}

`time` is nanoseconds on the runner's monotonic clock since the run started; `wall` is Unix
seconds. `type` is invoke, ok (it happened), fail (it certainly did not happen) or info (it may
or may not have happened: a timeout, a connection lost after sending). A process that gets an
info never invokes again; the worker continues as a new process id, as in Jepsen.
Nemesis operations use process "nemesis" and f = start-<fault> / stop-<fault>.
It lives with the checkers, which read it; the harness imports it to write. It does no I/O beyond
the file it is given.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Iterable, Iterator

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"
TYPES = (INVOKE, OK, FAIL, INFO)
NEMESIS = "nemesis"


@dataclass(slots=True)
class Op:
    index: int
    process: int | str
    type: str
    f: str
    value: Any = None
    key: str | None = None
    node: str | None = None
    time: int = 0  # ns since the run started, monotonic
    wall: float = 0.0
    error: str | None = None
    extra: dict = field(default_factory=dict)  # raw response details (revision, lease, ...)

    def to_json(self) -> str:
        d = asdict(self)
        if not d["extra"]:
            del d["extra"]
        return json.dumps(d, separators=(",", ":"), default=_jsonable)

    @staticmethod
    def from_dict(d: dict) -> "Op":
        if d.get("type") not in TYPES:
            raise ValueError(f"op {d.get('index')}: type must be one of {TYPES}, not {d.get('type')!r}")
        return Op(
            index=int(d["index"]), process=d["process"], type=d["type"], f=d["f"], value=d.get("value"),
            key=d.get("key"), node=d.get("node"), time=int(d.get("time", 0)), wall=float(d.get("wall", 0.0)),
            error=d.get("error"), extra=d.get("extra") or {},
        )

    def __str__(self) -> str:
        k = f" {self.key}" if self.key is not None else ""
        e = f" ({self.error})" if self.error else ""
        return f"{self.index} p{self.process} {self.type} {self.f}{k} {self.value!r}{e}"


def _jsonable(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    if isinstance(x, (set, frozenset, tuple)):
        return list(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


class HistoryWriter:
    """Appends ops to a JSONL file, flushing each line so a crash loses at most the last one."""

    def __init__(self, f: IO[str]) -> None:
        self._f = f
        self.count = 0

    def write(self, op: Op) -> Op:
        op.index = self.count
        self._f.write(op.to_json() + "\n")
        self._f.flush()
        self.count += 1
        return op


def read_history(lines: Iterable[str]) -> list[Op]:
    """Parse a JSONL history; raises ValueError naming the line of a malformed op."""
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict):
                raise ValueError(f"not a JSON object but {type(d).__name__}")
            out.append(Op.from_dict(d))
        except KeyError as e:
            raise ValueError(f"history line {n}: no {e.args[0]!r} field") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"history line {n}: {e}") from None
    return out


def load_history(path: str) -> list[Op]:
    with open(path, encoding="utf-8") as f:
        return read_history(f)


def pairs(history: list[Op]) -> Iterator[tuple[Op, Op | None]]:
    """(invoke, completion) for each client op; completion None if the run ended first."""
    pending: dict[Any, Op] = {}
    done: list[tuple[Op, Op | None]] = []
    for op in history:
        if op.process == NEMESIS:
            continue
        if op.type == INVOKE:
            pending[op.process] = op
        else:
            inv = pending.pop(op.process, None)
            if inv is not None:
                done.append((inv, op))
    done.extend((inv, None) for inv in pending.values())
    done.sort(key=lambda p: p[0].index)
    return iter(done)
