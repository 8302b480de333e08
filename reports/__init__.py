"""Reports: pure functions from a run directory (or the store) to HTML and PNG. Never talk to a cluster.

data (a run's files -> ops, faults, rows), series (quantile windows, throughput, clock offsets),
layout (timeline and Porcupine-like bands, in pixels) are pure and tested on small inputs; plots
(matplotlib) and the jinja2 templates only draw what they return. run renders one run, bench one
benchmark, index the store's index.html, serve a local web server over the store. Nothing here
imports the harness beyond harness.store's names (bench pages use bench.results' pure summaries),
nor the server, workloads or nemeses.
"""
