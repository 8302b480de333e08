"""Checkers: pure functions from a history to a verdict (true, false or "unknown").

Imports nothing from the harness, reports or server packages.
"""
