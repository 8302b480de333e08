"""The reference etcd v3 server: gRPC API, HTTP/JSON gateway, WAL, MVCC store, leases, watches.

It speaks etcd's wire protocol (stubs generated from server/proto at install time) and imports
nothing from the harness, workloads, nemesis, checker, bench or reports packages.
The cores (mvcc/, lease.py, watch.py) are pure: no time, os, socket, asyncio or random.
"""
