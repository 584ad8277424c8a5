"""Ray Serve: the same FastAPI app as `mvit serve`, one copy per Ray Serve replica.

Each replica loads and warms up its models in its constructor, so Ray routes to it only once it can
answer; sizes its inference and decode threads to the CPUs Ray gave it; and names itself in an
`x-replica-id` header. Overload answers 429 + Retry-After through Ray too, never 503: Ray's
`max_ongoing_requests` sits above the replica's own queue (`max_queue_size`), so Ray hands requests on
and the replica's admission refuses what it cannot hold, with the service's JSON error. Ray's own
queue, in front of the replicas, is bounded by `max_queued_requests` and refuses with 429 as well.
Removing a replica (scale-down, redeploy, `serve shutdown`) stops routing to it and lets its ongoing
requests finish, for up to `drain_timeout_s`.

`mvit serve --ray` runs it on a local Ray instance; `serve run app.ray_serve:build_app` and
`deploy/ray/serve_config.yaml` run it on an existing cluster.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field, model_validator
from ray import serve
from ray.serve.config import AutoscalingConfig, BackpressureConfig
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import create_app
from app.api.ops import liveness
from app.config import ServerSettings
from app.logs import configure_logging

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "mvit"
MIRROR_PERIOD_S = 5.0  # Ray exports its metrics every few seconds; Prometheus scrapes every 15-30 s
# Requests besides inference that count against Ray's max_ongoing_requests: probes, /metrics, /models.
SIDE_REQUESTS = 8


class RayOptions(BaseModel):
    """How Ray runs the replicas (the service's own settings stay in `ServerSettings`)."""

    num_replicas: int = Field(1, ge=1, description="Replicas, without autoscaling.")
    autoscale: bool = Field(False, description="Scale between min_replicas and max_replicas instead.")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(4, ge=1)
    # Ray adds replicas while each holds more than this. The default is the requests one replica answers
    # within about a second at the throughput measured in docs/deployment.md (2 CPUs, width 1.0, c=8).
    target_ongoing_requests: float = Field(8.0, gt=0)
    num_cpus: float = Field(1.0, gt=0, description="CPUs each replica reserves (fractions allowed).")
    max_queued_requests: int = Field(
        64, ge=-1, description="Requests Ray holds in front of busy replicas before it answers 429."
    )

    @model_validator(mode="after")
    def _bounds(self) -> RayOptions:
        if self.autoscale and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


def replica_settings(overrides: dict[str, Any], cpus: float) -> ServerSettings:
    """A replica's settings: `overrides` on top of its environment, with inference and decode threads
    sized to the CPUs Ray reserved for it unless either sets them (every replica of a node sees all its
    cores)."""
    threads = max(1, math.floor(cpus))
    sized = {
        name: threads
        for name in ("inference_threads", "decode_threads")
        if name not in overrides and f"MVIT_{name.upper()}" not in os.environ
    }
    return ServerSettings(**sized, **overrides)


class MetricsMirror:
    """Copies a replica's `mvit_*` samples into Ray's metrics, tagged with the replica, so that Prometheus
    finds every replica's figures where it scrapes Ray (each node's metrics export port, as `ray_mvit_*`):
    through Ray's proxy, `/metrics` answers from whichever replica takes the request. Counters and histogram
    buckets arrive as gauges of the same values, which `rate()` and `histogram_quantile()` read as they are."""

    def __init__(self, registry: CollectorRegistry, replica_id: str) -> None:
        self.registry = registry
        self.replica_id = replica_id
        self.gauges: dict[str, Any] = {}

    def copy(self) -> None:
        from ray.util.metrics import Gauge

        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                gauge = self.gauges.get(sample.name)
                if gauge is None:
                    keys = (*sorted(sample.labels), "replica")
                    gauge = self.gauges[sample.name] = Gauge(sample.name, family.documentation, tag_keys=keys)
                gauge.set(sample.value, tags={**sample.labels, "replica": self.replica_id})

    async def run(self, period_s: float = MIRROR_PERIOD_S) -> None:
        while True:
            try:
                self.copy()
            except Exception:  # a metric Ray refuses must not end the copying of the others
                log.exception("copying the metrics into Ray's failed")
            await asyncio.sleep(period_s)


class ReplicaIdHeader:
    """Adds `x-replica-id` to every answer: which replica served it."""

    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        self.app = app
        self.header = (b"x-replica-id", replica_id.encode("latin-1", "replace"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)


@serve.deployment
@serve.ingress()
class MvitReplica:
    async def __init__(self, overrides: dict[str, Any]) -> None:
        from ray import get_runtime_context

        # As `mvit serve` does: spinning OpenMP threads steal the cores the decode threads need.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        cpus = float(get_runtime_context().get_assigned_resources().get("CPU", 1.0))
        settings = replica_settings(overrides, cpus)
        configure_logging(settings.log_level, settings.log_format)
        self.service = create_app(settings)
        manager = self.service.state.manager
        await manager.load_all()  # here rather than in the app's lifespan: Ray waits for the constructor
        if manager.error:
            raise RuntimeError(f"model loading failed: {manager.error}")
        replica_id = serve.get_replica_context().replica_id.unique_id
        self.service.add_middleware(ReplicaIdHeader, replica_id=replica_id)
        mirror = MetricsMirror(self.service.state.metrics.registry, replica_id)
        self.mirroring = asyncio.get_running_loop().create_task(mirror.run())

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self.service  # type: ignore[no-any-return]

    async def check_health(self) -> None:
        """Ray replaces a replica whose check fails: here, one whose batching loop has died."""
        status, body = liveness(self.service.state.manager)
        if status != 200:
            raise RuntimeError(body["error"])


def deployment_options(settings: ServerSettings, ray: RayOptions) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": ray.num_cpus},
        "max_ongoing_requests": settings.max_queue_size + SIDE_REQUESTS,
        "max_queued_requests": ray.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=1),
        "graceful_shutdown_timeout_s": settings.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.1,  # how often a stopping replica looks for ongoing requests
        "health_check_period_s": 5,
    }
    if ray.autoscale:
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=ray.min_replicas,
            max_replicas=ray.max_replicas,
            target_ongoing_requests=ray.target_ongoing_requests,
        )
    else:
        options["num_replicas"] = ray.num_replicas
    return options


def application(overrides: dict[str, Any], ray: RayOptions) -> serve.Application:
    """The Ray Serve application; `overrides` are `ServerSettings` fields (the rest comes from each replica's
    MVIT_* environment)."""
    settings = ServerSettings(**overrides)  # fails here, in the driver, on a bad setting
    return MvitReplica.options(**deployment_options(settings, ray)).bind(overrides)  # type: ignore[attr-defined]


def build_app(args: dict[str, Any]) -> serve.Application:
    """`serve run app.ray_serve:build_app models=... num_replicas=2` or `import_path` in a Serve config:
    `args` holds `ServerSettings` fields and `RayOptions` fields."""
    ray_fields = {k: v for k, v in args.items() if k in RayOptions.model_fields}
    overrides = {k: v for k, v in args.items() if k not in RayOptions.model_fields}
    unknown = sorted(set(overrides) - set(ServerSettings.model_fields))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)}: expected ServerSettings or RayOptions fields"
        )
    if isinstance(overrides.get("models"), str):
        overrides["models"] = overrides["models"].split(",")
    return application(overrides, RayOptions(**ray_fields))


def shutdown_ray() -> None:
    """`ray.shutdown()`, without its one-second wait for the autoscaler monitor of a local instance: the
    monitor has nothing to save, and answers SIGTERM only between its update rounds. A Ray without the
    private `_global_node` gets the plain `ray.shutdown()`."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    for process_info in getattr(node, "all_processes", {}).get("monitor", []):
        process_info.process.kill()
    ray.shutdown()


def serve_until_stopped(settings: ServerSettings, options: RayOptions, address: str | None) -> int:
    """`mvit serve --ray`: the application on a new local Ray instance, or on the cluster at `address`,
    until SIGTERM or Ctrl-C (also while it deploys). Then Serve drains the replicas; a local instance
    stops, while on a cluster only this application is deleted."""
    import signal
    import threading

    import ray

    ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING)
    stop, asked = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        asked.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
        signal.signal(sig, on_signal)
    # Tokens stay in the replicas' environment: deployment arguments are stored in Ray's GCS.
    overrides = settings.model_dump(exclude_unset=True, exclude={"api_tokens"})
    failure: list[str] = []

    def deploy() -> None:
        try:
            serve.start(http_options={"host": settings.host, "port": settings.port})
            serve.run(application(overrides, options), name=DEPLOYMENT_NAME, route_prefix="/")
            log.info("Ray Serve is serving on http://%s:%d/ (%s)", settings.host, settings.port, options)
        except Exception as exc:  # Ray's messages are long; the first line says what failed
            failure.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            stop.set()

    threading.Thread(target=deploy, name="ray-deploy", daemon=True).start()
    try:
        stop.wait()
        log.info("stopping: Ray Serve drains the replicas (at most %g s)", settings.drain_timeout_s)
        if address:
            serve.delete(DEPLOYMENT_NAME)
        else:
            serve.shutdown()
    finally:
        shutdown_ray()
    if failure and not asked.is_set():  # a deployment cut short by a signal is no failure
        print(f"mvit serve --ray: the deployment failed: {failure[0]}", file=sys.stderr)
        return 1
    return 0
