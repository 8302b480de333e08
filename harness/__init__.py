"""The runner's core: remotes, inventories, DB lifecycle, the etcd client, generators, history, CLI.

May import server.proto (the wire stubs) and server.keyrange but nothing else of server/; imports
reports only to render a run's report (the runner's last phase, `analyze`, `report`).
"""
