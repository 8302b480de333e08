"""MVCC: etcd's multi-version key space as a pure core over a revision-keyed backend.

`revision` encodes (main, sub) revisions as etcd does, `keyindex` keeps each key's generations,
`store` is the key-value store (reads at a revision, write transactions sharing one main revision,
compaction). No I/O happens here: the backend object passed in does it.
"""
