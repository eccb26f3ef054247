"""Write an Envoy config for N Kairos replicas (the README beside this file explains each part).

    python deploy/envoy/envoy_config.py --upstream 127.0.0.1:9001 --upstream 127.0.0.1:9002 \
        --listen 127.0.0.1:8001 > envoy.yaml
    envoy -c envoy.yaml

With no --upstream it prints the checked-in `envoy.yaml` (three replicas on 127.0.0.1:9001-9003).
Needs only the standard library and PyYAML; the tests import `envoy_config` from it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import yaml

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
HEALTH_SERVICE = "inference.GRPCInferenceService"
INFER_PATH = f"/{HEALTH_SERVICE}/ModelInfer"
STREAM_PATH = f"/{HEALTH_SERVICE}/ModelStreamInfer"
# Retried elsewhere, while the request's deadline leaves time (README.md says why each):
# - Kairos's refusals: UNAVAILABLE (draining, model not loaded) and RESOURCE_EXHAUSTED (queue
#   full, or this replica cannot make the deadline);
# - DEADLINE_EXCEEDED: a try is told min(per-try timeout, time left), so an upstream saying
#   it cannot make that is a per-try timeout, which Envoy retries anyway;
# - CANCELLED: from upstream only when the server cancelled (grpc.aio's drain does, for calls
#   reaching it as it closes; when the client cancels, Envoy cancels upstream itself);
# - no answer at all: refused stream (GOAWAY), connect failure, reset (process killed).
RETRY_ON = ("unavailable,resource-exhausted,deadline-exceeded,cancelled,"
            "refused-stream,connect-failure,reset")
NO_ANSWER = "unavailable,refused-stream,connect-failure"


def _seconds(value: float) -> str:
    return f"{value:g}s"


@dataclass
class EnvoySettings:
    """What varies between deployments; the defaults are the checked-in config's."""

    upstreams: list[tuple[str, int]] = field(
        default_factory=lambda: [("127.0.0.1", 9001), ("127.0.0.1", 9002), ("127.0.0.1", 9003)])
    listen: tuple[str, int] = ("127.0.0.1", 8001)
    admin: tuple[str, int] = ("127.0.0.1", 9901)
    health_interval_s: float = 1.0
    health_timeout_s: float = 0.5
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1
    num_retries: int = 2
    per_try_timeout_s: float = 1.0
    retry_base_interval_s: float = 0.002
    retry_max_interval_s: float = 0.01
    retry_budget_percent: float = 25.0
    min_retry_concurrency: int = 32
    connect_timeout_s: float = 0.25
    consecutive_gateway_failure: int = 2
    consecutive_5xx: int = 3
    base_ejection_time_s: float = 5.0
    outlier_interval_s: float = 1.0
    max_ejection_percent: int = 50
    keepalive_interval_s: float = 2.0
    keepalive_timeout_s: float = 1.0


def _address(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def _retry_policy(s: EnvoySettings, retry_on: str, per_try: bool) -> dict:
    policy = {
        "retry_on": retry_on,
        "num_retries": s.num_retries,
        "retry_back_off": {"base_interval": _seconds(s.retry_base_interval_s),
                           "max_interval": _seconds(s.retry_max_interval_s)},
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                                  "typed_config": {"@type": PREVIOUS_HOSTS}}],
        "host_selection_retry_max_attempts": 20,
    }
    if per_try:
        policy["per_try_timeout"] = _seconds(s.per_try_timeout_s)
    return policy


def _infer_route(s: EnvoySettings) -> dict:
    """ModelInfer: every retry condition, and a per-try timeout against hung replicas."""
    return {
        "cluster": "kairos",
        # Deadline = the request's grpc-timeout (no cap: 0s); no deadline = no limit, as in
        # a direct call. Envoy rewrites grpc-timeout on every try to what remains of it.
        "max_grpc_timeout": "0s",
        "timeout": "0s",
        "retry_policy": _retry_policy(s, RETRY_ON, per_try=True),
    }


def _stream_route() -> dict:
    """ModelStreamInfer (`kairos batch`): a stream may last hours, and once it has started
    it cannot be retried, so no per-try timeout and no retries; its grpc-timeout, if any,
    still bounds it."""
    return {"cluster": "kairos", "max_grpc_timeout": "0s", "timeout": "0s"}


def _other_route(s: EnvoySettings) -> dict:
    """Metadata, health, reflection, statistics, repository control: retried only when no
    replica answered (a RepositoryModelLoad may take seconds and must not be cut by a
    per-try timeout or sent twice on a slow answer). Repository control through a load
    balancer reaches one replica; send it to each replica instead."""
    return {"cluster": "kairos", "max_grpc_timeout": "0s", "timeout": "0s",
            "retry_policy": _retry_policy(s, NO_ANSWER, per_try=False)}


def _listener(s: EnvoySettings) -> dict:
    manager = {
        "@type": HCM,
        "stat_prefix": "kairos",
        "codec_type": "AUTO",
        "http2_protocol_options": {"max_concurrent_streams": 1024},
        "route_config": {"name": "kairos", "virtual_hosts": [
            {"name": "kairos", "domains": ["*"],
             "routes": [{"match": {"path": INFER_PATH}, "route": _infer_route(s)},
                        {"match": {"path": STREAM_PATH}, "route": _stream_route()},
                        {"match": {"prefix": "/"}, "route": _other_route(s)}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {"name": "kairos_grpc", "address": _address(*s.listen),
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": manager}]}]}


def _cluster(s: EnvoySettings) -> dict:
    endpoints = [{"endpoint": {"address": _address(host, port)}} for host, port in s.upstreams]
    return {
        "name": "kairos",
        "type": "STATIC",
        "connect_timeout": _seconds(s.connect_timeout_s),
        "lb_policy": "LEAST_REQUEST",
        "least_request_lb_config": {"choice_count": 2},
        # No panic routing: an unhealthy Kairos is draining, loading or gone, and refuses
        # or drops everything; better the healthy few (or a fast 503) than those.
        # Health changes reach the load balancer at once: Envoy's default merges those
        # that come within 1 s of the last one and delivers them when that second ends,
        # so a host just ejected, failing its health check or NOT_SERVING kept its
        # picks for up to 1 s (a killed replica got ~500 requests in our runs, and
        # once it listened again, requests while it was still loading its models).
        # Merging saves CPU only for clusters of thousands of hosts.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0},
                             "update_merge_window": "0s"},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {
                "max_concurrent_streams": 1024,
                "connection_keepalive": {"interval": _seconds(s.keepalive_interval_s),
                                         "timeout": _seconds(s.keepalive_timeout_s)}}}}},
        "circuit_breakers": {"thresholds": [{
            "priority": "DEFAULT", "max_requests": 100000, "max_pending_requests": 100000,
            "retry_budget": {"budget_percent": {"value": s.retry_budget_percent},
                             "min_retry_concurrency": s.min_retry_concurrency}}]},
        "health_checks": [{
            "timeout": _seconds(s.health_timeout_s),
            "interval": _seconds(s.health_interval_s),
            # The same interval before any traffic (Envoy's default then is 60 s): a replica
            # must be seen draining or back before traffic proves anything.
            "no_traffic_interval": _seconds(s.health_interval_s),
            "unhealthy_threshold": s.unhealthy_threshold,
            "healthy_threshold": s.healthy_threshold,
            "reuse_connection": True,
            "grpc_health_check": {"service_name": HEALTH_SERVICE},
        }],
        "outlier_detection": {
            "consecutive_gateway_failure": s.consecutive_gateway_failure,
            "enforcing_consecutive_gateway_failure": 100,
            "consecutive_5xx": s.consecutive_5xx,
            "interval": _seconds(s.outlier_interval_s),
            "base_ejection_time": _seconds(s.base_ejection_time_s),
            "max_ejection_percent": s.max_ejection_percent,
        },
        "load_assignment": {"cluster_name": "kairos", "endpoints": [{"lb_endpoints": endpoints}]},
    }


def envoy_config(settings: EnvoySettings | None = None) -> dict:
    """The whole bootstrap config as a dict (dump it as YAML or JSON)."""
    s = settings or EnvoySettings()
    return {
        "admin": {"address": _address(*s.admin)},
        "static_resources": {"listeners": [_listener(s)], "clusters": [_cluster(s)]},
    }


def render(settings: EnvoySettings | None = None) -> str:
    header = ("# Generated by deploy/envoy/envoy_config.py; edit that and regenerate:\n"
              "#   python deploy/envoy/envoy_config.py > deploy/envoy/envoy.yaml\n")
    return header + yaml.safe_dump(envoy_config(settings), sort_keys=False)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", action="append", type=_host_port, default=None,
                        help="a Kairos replica's gRPC HOST:PORT (repeat for each)")
    parser.add_argument("--listen", type=_host_port, default=EnvoySettings().listen)
    parser.add_argument("--admin", type=_host_port, default=EnvoySettings().admin)
    parser.add_argument("--health-interval", type=float, default=EnvoySettings().health_interval_s)
    args = parser.parse_args(argv)
    settings = EnvoySettings(listen=args.listen, admin=args.admin,
                             health_interval_s=args.health_interval)
    if args.upstream:
        settings.upstreams = args.upstream
    sys.stdout.write(render(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
