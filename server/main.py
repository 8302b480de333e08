"""etcdproof-server: start the reference etcd server with etcd's flags; stop cleanly on SIGTERM/SIGINT."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from server.config import Config, parse_config
from server.etcdserver import EtcdServer, StartupError

log = logging.getLogger("etcdproof.main")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


def run(cfg: Config) -> int:
    from server.gateway import build_http_server, serve_in_thread
    from server.grpc_api import build_grpc_server

    try:
        srv = EtcdServer(cfg)
    except StartupError as e:
        log.error("%s", e)
        print(f"etcdproof-server: {e}", file=sys.stderr)
        return 1
    http_servers = []
    try:
        grpc_server = build_grpc_server(srv, [u.hostport for u in cfg.listen_client_urls])
        for u in cfg.listen_client_http_urls:
            http_servers.append(build_http_server(srv, u.host, u.port))
        for u in cfg.listen_metrics_urls:
            http_servers.append(build_http_server(srv, u.host, u.port, metrics_only=True))
    except OSError as e:
        print(f"etcdproof-server: {e}", file=sys.stderr)
        srv.stop()
        return 1
    srv.start()
    grpc_server.start()
    for h in http_servers:
        serve_in_thread(h, f"http-{h.server_address[1]}")
    log.info(
        "ready to serve clients: grpc on %s%s",
        ",".join(str(u) for u in cfg.listen_client_urls),
        "; http on " + ",".join(str(u) for u in cfg.listen_client_http_urls) if cfg.listen_client_http_urls else "",
    )
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        log.info("received signal %d, shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(0.5):
        if srv.fatal is not None:
            log.critical("fatal error, exiting: %r", srv.fatal)
            break
    grpc_server.stop(grace=1).wait(2)
    for h in http_servers:
        h.shutdown()
        h.server_close()
    srv.stop()
    log.info("stopped")
    return 2 if srv.fatal is not None else 0


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    logging.basicConfig(
        level=_LEVELS[cfg.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
