"""Drive an auth-enabled etcd endpoint with aetcd (or python-etcd3, which needs TLS for auth)
as a user, print JSON.

Runs in the client virtualenv (.venv-clients). Usage:
    auth_client.py LIBRARY HOST:PORT USER PASSWORD
The user may read and write keys under lib/ only (tests/test_python_client.py sets that up).
Reports what the library saw: a put and a get inside its permission, a put outside it, and a
connection with a wrong password, each as a value or as the exception's class and whether its
text carries etcd's message.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"  # etcd3 0.12's modules predate protobuf 4


def _err(e: BaseException) -> dict:
    text = str(e) + " " + str(getattr(e, "details", lambda: "")() if callable(getattr(e, "details", None)) else "")
    return {"error": type(e).__name__,
            "permission_denied": "permission denied" in text,
            "auth_failed": "authentication failed" in text}


def with_etcd3(host: str, port: int, user: str, password: str) -> dict:
    import etcd3

    out: dict = {}
    c = etcd3.client(host=host, port=port, timeout=10, user=user, password=password)
    c.put("lib/a", "1")
    out["inside"] = c.get("lib/a")[0].decode()
    try:
        c.put("other", "x")
        out["outside"] = "accepted"
    except Exception as e:  # noqa: BLE001 - reported
        out["outside"] = _err(e)
    try:
        etcd3.client(host=host, port=port, timeout=10, user=user, password=password + "-wrong").get("lib/a")
        out["wrong_password"] = "accepted"
    except Exception as e:  # noqa: BLE001
        out["wrong_password"] = _err(e)
    return out


async def with_aetcd(host: str, port: int, user: str, password: str) -> dict:
    import aetcd

    out: dict = {}
    async with aetcd.Client(host=host, port=port, timeout=10, username=user, password=password) as c:
        await c.put(b"lib/a", b"1")
        out["inside"] = (await c.get(b"lib/a")).value.decode()
        try:
            await c.put(b"other", b"x")
            out["outside"] = "accepted"
        except Exception as e:  # noqa: BLE001
            out["outside"] = _err(e)
    try:
        async with aetcd.Client(host=host, port=port, timeout=10, username=user, password=password + "-wrong") as c:
            await c.get(b"lib/a")
        out["wrong_password"] = "accepted"
    except Exception as e:  # noqa: BLE001
        out["wrong_password"] = _err(e)
    return out


if __name__ == "__main__":
    lib, endpoint, user, password = sys.argv[1:5]
    host, port = endpoint.rsplit(":", 1)
    if lib == "etcd3":
        report = with_etcd3(host, int(port), user, password)
    else:
        report = asyncio.run(with_aetcd(host, int(port), user, password))
    print(json.dumps({"library": lib, **report}, sort_keys=True), flush=True)
