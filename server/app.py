"""`kairos serve`: the server process (gRPC on 8001, metrics on 8002 by default).

SIGTERM or SIGINT drains: readiness and health turn false at once, new requests
are refused, requests already accepted finish within the grace period, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from kairos.protos import grpc_service_pb2 as pb

from .memory import keep_freed_memory
from .metrics import MetricsSink
from .repository import ModelRepository
from .security import (
    BearerTokenInterceptor,
    SecurityConfigError,
    load_tokens,
    server_credentials,
    tls_material,
)
from .statistics import FanoutMetrics, StatisticsRecorder
from .transport.servicer import InferenceServicer, ServingOptions, add_to_server
from .watch import RepositoryWatcher

log = logging.getLogger("kairos.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def pending_limit_options(limit: int) -> list[tuple[str, int]]:
    """gRPC core options that bound calls waiting to be read by the server.

    grpc.aio reads one new call per event-loop round trip; under overload the rest wait
    in the core, where the scheduler cannot see them, and reach Python late. Past
    `limit` waiting calls the core refuses new ones at once, in C."""
    if limit <= 0:
        return []
    return [("grpc.server.max_pending_requests", limit),
            ("grpc.server.max_pending_requests_hard_limit", limit)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `kairos serve` flags (also used by `python -m kairos.server`)."""
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="model repository folder (default: the built-in demo models)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 = any free)")
    parser.add_argument("--metrics-port", type=int, default=8002,
                        help="Prometheus /metrics port (default 8002; 0 = any free; -1 = off)")
    parser.add_argument("--port-file", type=Path, default=None,
                        help="write the bound ports here as JSON once serving")
    parser.add_argument("--max-message-mb", type=float, default=64.0,
                        help="largest gRPC message accepted or sent, in MiB (default 64)")
    parser.add_argument("--max-rows-per-request", type=int, default=100_000,
                        help="largest batch dimension one request may carry (default 100000)")
    parser.add_argument("--default-slo-ms", type=float, default=1000.0,
                        help="deadline for requests that set none and whose model sets no slo_ms")
    parser.add_argument("--grace-seconds", type=float, default=30.0,
                        help="how long a shutdown waits for accepted requests (default 30)")
    parser.add_argument("--disable-repository-control", action="store_true",
                        help="refuse RepositoryModelLoad/Unload RPCs")
    parser.add_argument("--max-streams", type=int, default=64,
                        help="concurrent ModelStreamInfer calls; beyond it RESOURCE_EXHAUSTED "
                             "(default 64; 0 = no limit)")
    parser.add_argument("--max-pending-rpcs", type=int, default=0,
                        help="requests received and not yet answered beyond which new ones are "
                             "refused at once, natively (RESOURCE_EXHAUSTED; with --transport aio "
                             "gRPC's core refuses calls it holds unread, and clients see CANCELLED); "
                             "default 0 = no bound beyond admission control")
    parser.add_argument("--transport", choices=("native", "aio"), default="native",
                        help="gRPC front end: native (Rust, tonic; default) or aio (Python grpc.aio, "
                             "the former transport, kept for comparison)")
    parser.add_argument("--frontend-threads", type=int, default=1,
                        help="threads of the native front end (HTTP/2, decoding; default 1)")
    parser.add_argument("--max-concurrent-streams", type=int, default=4096,
                        help="HTTP/2 streams (calls in flight) per client connection; a client "
                             "beyond it waits for a free one (default 4096; load balancers "
                             "multiplex many calls on few connections)")
    parser.add_argument("--drain-delay-seconds", type=float, default=0.0,
                        help="on shutdown, how long health answers NOT_SERVING before the "
                             "listener closes, so load balancers see it; inference is still "
                             "served meanwhile (with --transport aio it is refused UNAVAILABLE) "
                             "(default 0)")
    parser.add_argument("--watch", action="store_true",
                        help="poll the model repository and reload models whose files change")
    parser.add_argument("--watch-interval", type=float, default=2.0,
                        help="seconds between --watch polls (default 2)")
    security = parser.add_argument_group("security")
    security.add_argument("--tls-cert", type=Path, default=None,
                          help="PEM server certificate (chain): serve gRPC over TLS")
    security.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    security.add_argument("--tls-client-ca", type=Path, default=None,
                          help="PEM CA bundle: require client certificates it signed (mutual TLS)")
    security.add_argument("--auth-token-file", type=Path, default=None,
                          help="bearer tokens, one per line; with it (or env KAIROS_AUTH_TOKENS) "
                               "every RPC except health, reflection, ServerLive and ServerReady "
                               "needs 'authorization: Bearer <token>'")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    from .kserve import add_kserve_arguments  # --model-dir, --model-name, KServe spellings

    add_kserve_arguments(parser)


def _make_metrics() -> MetricsSink:
    # prometheus-client is a hard dependency: an import failure is a broken install.
    from .metrics.prometheus import PrometheusMetrics

    return PrometheusMetrics()


class KairosServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ready = False
        self.prometheus = _make_metrics()
        self.statistics = StatisticsRecorder()
        self.metrics = FanoutMetrics(self.prometheus, self.statistics)
        self.repository = ModelRepository(self._repository_path(), metrics=self.metrics)
        self.servicer = InferenceServicer(
            self.repository,
            self.metrics,
            self.statistics,
            ServingOptions(
                default_slo_s=args.default_slo_ms / 1000,
                max_rows_per_request=args.max_rows_per_request,
                repository_control=not args.disable_repository_control,
                max_streams=args.max_streams,
            ),
            is_ready=lambda: self.ready,
        )
        self.health = health.aio.HealthServicer()
        self.stopping = asyncio.Event()
        self.watcher: RepositoryWatcher | None = None
        self.native = None
        try:
            self.tls = tls_material(args.tls_cert, args.tls_key, args.tls_client_ca)
            self.credentials = server_credentials(self.tls) if args.transport == "aio" else None
            self.tokens = load_tokens(args.auth_token_file)
        except SecurityConfigError as exc:
            raise SystemExit(f"kairos serve: {exc}") from None

    def _repository_path(self) -> Path:
        from .kserve import kserve_repository  # KServe's /mnt/models layouts

        if (kserve := kserve_repository(self.args)) is not None:
            return kserve
        if self.args.model_repository is not None:
            path = self.args.model_repository
            if not path.is_dir():
                raise SystemExit(f"kairos serve: model repository {path} is not a folder")
            return path
        from .demo_models import demo_repository

        path = demo_repository()
        log.info("no --model-repository given: serving the built-in demo models from %s", path)
        return path

    def _grpc_server(self) -> tuple[grpc.aio.Server, int]:
        limit = int(self.args.max_message_mb * 1024 * 1024)
        interceptors = [BearerTokenInterceptor(self.tokens)] if self.tokens else []
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                *pending_limit_options(self.args.max_pending_rpcs),
            ]
        )
        add_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME],
            server,
        )
        address = f"{self.args.host}:{self.args.grpc_port}"
        try:
            if self.credentials is not None:
                port = server.add_secure_port(address, self.credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:  # grpc raises when the port is taken
            port = 0
        if port == 0:
            raise SystemExit(
                f"kairos serve: cannot listen on {address} (port in use? choose another with --grpc-port)"
            )
        return server, port

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        metrics_port = self._start_metrics()
        server = None
        if self.args.transport == "native":
            grpc_port = self._start_native()
        else:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            server, grpc_port = self._grpc_server()
            await server.start()
        await self.repository.load_all()
        if not self.stopping.is_set():  # a SIGTERM during loading: never report ready
            await self._set_ready(True)
        if self.args.watch:
            self.watcher = RepositoryWatcher(self.repository, self.args.watch_interval)
            self.watcher.start()
        self._write_port_file(grpc_port, metrics_port)
        log.info("Kairos serving on %s:%d (%s transport; metrics on %s; %s; auth %s)",
                 self.args.host, grpc_port, self.args.transport, metrics_port,
                 "TLS" if self.tls else "plain text", "on" if self.tokens else "off")
        await self.stopping.wait()
        if server is not None:
            await self._drain(server)
        else:
            await self._drain_native()
        return 0

    def _start_native(self) -> int:
        from .frontend import NativeTransport, make_frontend

        try:
            frontend = make_frontend(self.args, self.tokens, self.tls)
        except OSError as exc:
            raise SystemExit(
                f"kairos serve: cannot listen on {self.args.host}:{self.args.grpc_port} "
                f"({exc}; port in use? choose another with --grpc-port)"
            ) from None
        self.native = NativeTransport(frontend, self.repository, self.metrics, self.servicer)
        self.native.start()
        return frontend.port

    async def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        if self.native is not None:
            self.native.frontend.set_ready(ready)
        else:
            serving = health_pb2.HealthCheckResponse
            await self._set_health(serving.SERVING if ready else serving.NOT_SERVING)

    async def _drain_native(self) -> None:
        """Not ready and refusing new requests at once; every request already received
        is served (within --grace-seconds); GOAWAY; then the models close."""
        log.info("shutting down: refusing new requests, finishing received ones")
        self.ready = False
        self.servicer.accepting = False
        draining = asyncio.ensure_future(
            self.native.drain(self.args.grace_seconds, self.args.drain_delay_seconds)
        )
        if self.watcher is not None:
            await self.watcher.stop()
        await draining
        await self.repository.close()
        log.info("shut down cleanly")

    async def _drain(self, server: grpc.aio.Server) -> None:
        log.info("shutting down: refusing new requests, finishing accepted ones")
        # Order matters: stop admitting and report NOT_SERVING before anything waits,
        # so no request is accepted after the signal and probes see it at once.
        self.ready = False
        self.servicer.accepting = False
        await self.health.enter_graceful_shutdown()
        # Open streams end (UNAVAILABLE) once the requests they read are answered.
        streams = asyncio.create_task(
            asyncio.wait_for(self.servicer.close_streams(), self.args.grace_seconds)
        )
        if self.watcher is not None:
            await self.watcher.stop()
        if self.args.drain_delay_seconds > 0:
            await asyncio.sleep(self.args.drain_delay_seconds)
        # Waits for every accepted RPC (queued ones included) up to the grace period.
        await server.stop(self.args.grace_seconds)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await streams
        await self.repository.close()
        log.info("shut down cleanly")

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    def _start_metrics(self) -> int | None:
        start = getattr(self.prometheus, "start_http_server", None)
        if self.args.metrics_port < 0 or start is None:
            return None
        return start(self.args.metrics_port, self.args.host)

    def _write_port_file(self, grpc_port: int, metrics_port: int | None) -> None:
        if self.args.port_file is None:
            return
        temporary = self.args.port_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"grpc_port": grpc_port, "metrics_port": metrics_port}))
        temporary.replace(self.args.port_file)


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    keep_freed_memory()  # before the front end's threads start (server/memory.py)
    return asyncio.run(KairosServer(args).run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kairos serve", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
