"""Faults: partitions, kills, pauses, clock skew, disk and network slowdowns, lost writes, membership.

Every fault is a start/stop pair recorded in the history, and is always undone.
"""
