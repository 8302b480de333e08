"""The reference server answers real etcdctl, and so does real etcd, with the same outputs."""
from __future__ import annotations


def test_put_get_roundtrip(any_server):
    r = any_server.etcdctl("put", "greeting", "hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK"
    r = any_server.etcdctl("get", "greeting", "--print-value-only")
    assert r.stdout.strip() == "hello"


def test_empty_key_is_rejected_with_etcds_message(any_server):
    r = any_server.etcdctl("put", "", "v")
    assert r.returncode != 0
    assert "etcdserver: key is not provided" in r.stderr
