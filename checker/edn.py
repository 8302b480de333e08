"""A small EDN reader, enough for Jepsen history files, and their conversion to history Ops.

EDN (github.com/edn-format/edn): nil, booleans, strings, characters, integers (N), floats (M),
keywords, symbols, lists, vectors, maps, sets, tagged elements (#inst, #uuid, records such as
#jepsen.history.Op{...}: the tag is dropped, the value kept), comments and #_ discards.
Keywords and symbols read as str subclasses, so :read == "read"; vectors and lists as lists;
sets as frozensets. Why not a PyPI library: docs/design-choices.md.

Jepsen histories are maps with :type (:invoke, :ok, :fail, :info), :process (an integer, or
:nemesis), :f, :value, :time (ns) and often :index; ops on independent keys
(jepsen.independent) carry [key value] tuples as their value.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

from checker.history import NEMESIS, TYPES, Op


class Keyword(str):
    def __repr__(self) -> str:
        return ":" + str(self)


class Symbol(str):
    def __repr__(self) -> str:
        return str(self)


class EDNError(ValueError):
    pass


_TOKEN = re.compile(r'''[\s,]*(?:
    (?P<skip>;[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<open>\#\{|[\[{(])
  | (?P<close>[\]})])
  | (?P<discard>\#_)
  | (?P<tag>\#[A-Za-z][^\s,\[\]{}()"]*)
  | (?P<char>\\(?:newline|space|tab|return|formfeed|backspace|u[0-9a-fA-F]{4}|\S))
  | (?P<atom>[^\s,\[\]{}()";]+)
  | \Z)''', re.X | re.S)
_INT = re.compile(r"[+-]?\d+N?\Z")
_FLOAT = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?M?\Z")
_RATIO = re.compile(r"[+-]?\d+/\d+\Z")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "b": "\b", "f": "\f", "/": "/"}
_CHARS = {"newline": "\n", "space": " ", "tab": "\t", "return": "\r", "formfeed": "\f", "backspace": "\b"}
_CLOSE = {"[": "]", "(": ")", "{": "}", "#{": "}"}


def _string(s: str) -> str:
    body = s[1:-1]
    if "\\" not in body:
        return body
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            n = body[i + 1]
            if n == "u" and i + 5 < len(body) + 1:
                out.append(chr(int(body[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _atom(s: str) -> Any:
    if s == "nil":
        return None
    if s == "true":
        return True
    if s == "false":
        return False
    c = s[0]
    if c.isdigit() or (c in "+-" and len(s) > 1 and s[1].isdigit()):
        if _INT.match(s):
            return int(s.rstrip("N"))
        if _FLOAT.match(s):
            return float(s.rstrip("M"))
        if _RATIO.match(s):
            a, b = s.split("/")
            return int(a) / int(b)
        raise EDNError(f"not a number: {s!r}")
    if c == ":":
        return Keyword(s[1:])
    return Symbol(s)


def _hashable(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_hashable(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted(((_hashable(k), _hashable(v)) for k, v in x.items()), key=repr))
    return x


def read_all(text: str) -> Iterator[Any]:
    """Every top-level EDN value in text, in order. Raises EDNError with the offset."""
    stack: list[tuple[str, list]] = []  # (opener, items so far)
    tags: list[int] = []  # depth at which a pending tag or discard applies, per marker
    markers: list[tuple[str, int]] = []  # ("tag" | "discard", depth)
    pos, n = 0, len(text)
    match = _TOKEN.match

    def emit(v: Any) -> Any:
        """Hand a finished value to the pending markers and the enclosing collection."""
        while markers and markers[-1][1] == len(stack):
            kind, _ = markers.pop()
            if kind == "discard":
                return _NOTHING
            # a tag: keep the value (records, #inst, #uuid are their content)
        if stack:
            stack[-1][1].append(v)
            return _NOTHING
        return v

    while pos < n:
        m = match(text, pos)
        if m is None:
            raise EDNError(f"EDN: cannot read at offset {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind is None:  # only whitespace was left
            break
        if kind == "skip":
            continue
        if kind == "open":
            stack.append((m.group(kind), []))
            continue
        if kind == "discard":
            markers.append(("discard", len(stack)))
            continue
        if kind == "tag":
            markers.append(("tag", len(stack)))
            continue
        if kind == "close":
            if not stack:
                raise EDNError(f"EDN: unexpected {m.group(kind)!r} at offset {m.start(kind)}")
            opener, items = stack.pop()
            if _CLOSE[opener] != m.group(kind):
                raise EDNError(f"EDN: {opener!r} closed by {m.group(kind)!r} at offset {m.start(kind)}")
            if opener == "{":
                if len(items) % 2:
                    raise EDNError(f"EDN: a map with an odd number of forms before offset {m.start(kind)}")
                v: Any = {}
                for i in range(0, len(items), 2):
                    k = items[i]
                    try:
                        v[k] = items[i + 1]
                    except TypeError:
                        v[_hashable(k)] = items[i + 1]
            elif opener == "#{":
                v = frozenset(_hashable(x) for x in items)
            else:
                v = items
        elif kind == "str":
            v = _string(m.group(kind))
        elif kind == "char":
            s = m.group(kind)[1:]
            v = _CHARS.get(s, chr(int(s[1:], 16)) if len(s) == 5 and s[0] == "u" else s)
        else:
            v = _atom(m.group(kind))
        out = emit(v)
        if out is not _NOTHING:
            yield out
    if stack:
        raise EDNError(f"EDN: {len(stack)} collection(s) not closed at the end")


_NOTHING = object()


def loads(text: str) -> Any:
    """The single EDN value in text."""
    vals = list(read_all(text))
    if len(vals) != 1:
        raise EDNError(f"EDN: expected one value, found {len(vals)}")
    return vals[0]


def _plain(x: Any) -> Any:
    """EDN values as the JSON-like ones a history holds (keywords to str, sets to lists)."""
    if isinstance(x, (Keyword, Symbol)):
        return str(x)
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, (frozenset, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k) if isinstance(k, (Keyword, Symbol)) else k: _plain(v) for k, v in x.items()}
    return x


def jepsen_ops(text: str, independent: bool | None = None) -> list[Op]:
    """A Jepsen history (one op map per line, or a vector of them) as Ops.

    independent: True if values are jepsen.independent [key value] tuples, False if not, None to
    decide: they are when every client op's value is a 2-element vector.
    """
    vals = list(read_all(text))
    if len(vals) == 1 and isinstance(vals[0], list):
        vals = vals[0]
    maps = []
    for n, v in enumerate(vals):
        if not isinstance(v, dict):
            raise ValueError(f"history op {n}: not an EDN map: {v!r}"[:200])
        maps.append(v)
    clients = [m for m in maps if m.get(Keyword("process")) != "nemesis"]
    if independent is None:
        independent = bool(clients) and all(
            isinstance(m.get(Keyword("value")), list) and len(m[Keyword("value")]) == 2 for m in clients)
    out = []
    for n, m in enumerate(maps):
        g = {str(k): v for k, v in m.items()}
        typ = str(g.get("type", ""))
        if typ not in TYPES:
            raise ValueError(f"history op {n}: :type must be one of {', '.join(':' + t for t in TYPES)}, not {g.get('type')!r}")
        process = g.get("process")
        process = NEMESIS if process == "nemesis" else _plain(process)
        value = g.get("value")
        key = None
        if independent and process != NEMESIS:
            if not (isinstance(value, list) and len(value) == 2):
                raise ValueError(f"history op {n}: an independent op's value is [key value], not {value!r}")
            key, value = value
            key = _plain(key)
        err = g.get("error")
        out.append(Op(
            index=int(g["index"]) if isinstance(g.get("index"), int) else n,
            process=process, type=typ, f=str(g.get("f")), value=_plain(value), key=key,
            node=str(g["node"]) if g.get("node") is not None else None,
            time=int(g.get("time") or 0), error=None if err is None else str(_plain(err)),
        ))
    return out
