"""Reports: pure functions from a run directory to HTML and PNG. Never talk to a cluster."""
