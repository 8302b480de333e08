"""Workloads (register, lock, bank, watch): an op generator, client calls and the checkers that grade them."""
