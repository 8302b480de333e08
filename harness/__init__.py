"""The runner's core: remotes, inventories, DB lifecycle, the etcd client, generators, history, CLI.

May import server.proto (the wire stubs) but nothing else of server/; never imports reports.
"""
