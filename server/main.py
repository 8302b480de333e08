"""etcdproof-server: start the reference etcd server with etcd's flags; stop cleanly on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from server.config import Config, parse_config
from server.etcdserver import EtcdServer, StartupError

log = logging.getLogger("etcdproof.main")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


async def serve(cfg: Config) -> int:
    from server.gateway import gateway_runner, start_http
    from server.grpc_api import open_grpc_server

    try:
        srv = EtcdServer(cfg)
    except StartupError as e:
        log.error("%s", e)
        print(f"etcdproof-server: {e}", file=sys.stderr)
        return 1
    runners = []
    grpc_server = None
    try:
        await srv.start()
        _tune_gc()
        # the gateway also answers HTTP/1.x on the gRPC port, as etcd's does
        gateway = await gateway_runner(srv)
        runners.append(gateway)
        grpc_server = await open_grpc_server(srv, [u.hostport for u in cfg.listen_client_urls], gateway.server)
        for u in cfg.listen_client_http_urls:
            runners.append(await start_http(srv, u.host, u.port))
        for u in cfg.listen_metrics_urls:
            runners.append(await start_http(srv, u.host, u.port, metrics_only=True))
    except (OSError, StartupError) as e:
        log.error("%s", e)
        print(f"etcdproof-server: {e}", file=sys.stderr)
        for r in runners:
            await r.cleanup()
        await srv.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: (log.info("received signal %d, shutting down", s), stop.set()))
    # like etcd, serve clients only once this member has published itself to the cluster
    ready = loop.create_task(srv.ready.wait())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    stopping.cancel()
    if not stop.is_set():
        await grpc_server.start()
        log.info(
            "ready to serve clients: grpc on %s%s",
            ",".join(str(u) for u in cfg.listen_client_urls),
            "; http on " + ",".join(str(u) for u in cfg.listen_client_http_urls) if cfg.listen_client_http_urls else "",
        )
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
        if srv.fatal is not None:
            log.critical("fatal error, exiting: %r", srv.fatal)
            break
        if srv.removed:
            log.warning("removed from the cluster: exiting")
            break
    await grpc_server.stop(grace=1)
    for r in runners:
        await r.cleanup()
    await srv.stop()
    log.info("stopped")
    return 2 if srv.fatal is not None else 0


def _tune_gc() -> None:
    """Fewer, cheaper cyclic collections: almost everything a request allocates is freed by
    reference counting, yet every 700 allocations Python scans the young objects, and full
    collections walk the whole heap (tens of ms here). Objects alive after startup are frozen
    out of the scans; the young generation is collected less often."""
    gc.freeze()
    gc.set_threshold(10000, 20, 20)


def run(cfg: Config) -> int:
    """Serve on asyncio's own loop. ETCDPROOF_EVENT_LOOP=uvloop (with uvloop installed) uses
    uvloop instead, which costs about 10% less CPU per replicated put here but is not safe with
    grpc.aio: about one restart in five never finished starting (the loop idle, waiting on a
    wakeup that never came; tests/test_cluster_liveness.py), so it is opt-in for experiments."""
    if os.environ.get("ETCDPROOF_EVENT_LOOP", "") == "uvloop":
        import uvloop

        return uvloop.run(serve(cfg))
    return asyncio.run(serve(cfg))


# grpc core's EventEngine listener hands every call between several threads; its older listener
# path takes about a third of the context switches and ~10% less CPU per call here (see
# docs/benchmarks.md). Read when gRPC starts, so it is set before the server is built; a
# GRPC_EXPERIMENTS already in the environment (even empty) is left alone.
GRPC_EXPERIMENTS = "-event_engine_listener"


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
    cfg = parse_config(argv)
    logging.basicConfig(
        level=_LEVELS[cfg.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
