"""Benchmarks: disk (fio) and KV load (puts/s, reads/s, latency) against the reference server and real etcd."""
