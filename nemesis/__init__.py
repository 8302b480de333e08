"""Faults: partitions, kills, pauses, clock skew, disk and network slowdowns, lost writes, membership.

Every fault is a start/stop pair recorded in the history, and is always undone (docs/nemesis.md).
Each class is a module (partition, process, clock, disk, net, lostwrites, member, admin), composed
by schedule.py and named in registry.py. lwfs.py and delayer.py are standalone programs run on the
nodes (tools.py installs them); they import nothing from this repository. Fault classes act on
nodes only through harness remotes, the DB and the client; the schedule writes checker.history ops;
nothing here imports reports or the checkers.
"""
