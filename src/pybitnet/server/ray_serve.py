"""Replicas of the server on Ray Serve (`pybitnet serve --ray`, docs/deploy.md).

The server's FastAPI app (create_app) is the ingress of a Serve deployment: each replica loads
its own model and runs its own continuous-batching scheduler, so the routes, streaming, API key
and error bodies are the single-process server's. Ray Serve routes each request to a replica,
scales on ongoing requests per replica, calls each replica's health check and restarts a replica
that fails it or dies. Only `pybitnet serve --ray` imports this module (and so Ray): the
single-process server never does.

    from pybitnet.server.ray_serve import ReplicaSpec, application
    serve.run(application(ReplicaSpec(model="/models/2b.gguf"), replicas=2), route_prefix="/")
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from ray import serve
from ray.serve import metrics as ray_metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pybitnet import kernels
from pybitnet.errors import ModelError, PyBitnetError
from pybitnet.generate import load
from pybitnet.server.app import create_app
from pybitnet.server.config import FINAL_WORDS_SECONDS, ServerConfig

APP_NAME = "pybitnet"
# Each response names the replica that answered, as Ray's metrics tag it (its `replica` tag).
REPLICA_HEADER = "X-Pybitnet-Replica"
# A forward step running longer than this is a hung replica (the slowest real step, a full
# batch of 4k-token prompts of a 2B model on a slow node, takes well under a minute).
STUCK_STEP_SECONDS = 300.0
HEALTH_PERIOD_SECONDS = 5.0
METRICS_COPY_SECONDS = 2.0


@dataclass(frozen=True)
class ReplicaSpec:
    """What each replica loads, and how it serves. `model` is a path on the replica's node (a
    GGUF file, or a checkpoint folder converted into that node's cache), None for the embedded
    model; with `model_sha256` a replica refuses a file whose digest differs. `threads`: the
    replica's kernel threads and the CPUs it reserves in Ray (None: all its node's cores,
    reserving one)."""

    model: str | None = None
    model_sha256: str | None = None
    n_ctx: int | None = None
    output_head: str | None = None
    kv_cache: str | None = None
    threads: int | None = None
    config: ServerConfig = field(default_factory=ServerConfig)


def deployment_options(
    spec: ReplicaSpec, replicas: int = 1, autoscale: tuple[int, int] | None = None
) -> dict:
    """Serve's limits, from the scheduler's sizes. A replica holds at most max_batch + max_queue
    requests (max_ongoing_requests), what its scheduler can hold: Serve sends it no request that
    it would refuse, and keeps the rest in its own queue, at most max_queue of them (then 503).
    The autoscaler aims at max_batch ongoing requests a replica (target_ongoing_requests): a
    full batch and an empty queue. It adds a replica when requests queue, removes one when the
    batches run part empty."""
    config = spec.config
    options: dict = {
        "max_ongoing_requests": config.max_batch + config.max_queue,
        "max_queued_requests": config.max_queue,
        "ray_actor_options": {"num_cpus": spec.threads or 1},
        "graceful_shutdown_timeout_s": config.shutdown_timeout + FINAL_WORDS_SECONDS,
        "health_check_period_s": HEALTH_PERIOD_SECONDS,
    }
    if autoscale is None:
        options["num_replicas"] = replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": autoscale[0],
            "max_replicas": autoscale[1],
            "target_ongoing_requests": config.max_batch,
        }
    return options


class Replica:
    """One replica: its model, its app (and so its scheduler and metrics), its health."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by Serve on the replica once it is constructed: the app it serves."""
        spec = self.spec
        if spec.threads is not None:
            kernels.set_threads(spec.threads)
        if spec.model is not None and spec.model_sha256 is not None:
            check_sha256(Path(spec.model), spec.model_sha256)
        model = load(
            spec.model, n_ctx=spec.n_ctx, output_head=spec.output_head, kv_cache=spec.kv_cache
        )
        if problem := model.context_problem(spec.n_ctx):  # as `pybitnet serve` refuses it
            raise PyBitnetError(f"--ctx: {problem}")
        app = create_app(model, spec.config)
        app.add_middleware(NameReplica, name=serve.get_replica_context().replica_tag)
        MetricsCopy(app.state.metrics.registry).start()
        return app

    def check_health(self) -> None:
        """Asks the scheduler, not the process: a replica whose scheduler thread has stopped, or
        whose forward step has hung, cannot generate and is restarted."""
        scheduler = self.app.state.scheduler  # `app`: the property of Serve's ingress wrapper
        if not scheduler.alive:
            raise RuntimeError("the scheduler has stopped: this replica can no longer generate")
        if scheduler.step_seconds > STUCK_STEP_SECONDS:
            raise RuntimeError(f"a forward step has run for {scheduler.step_seconds:.0f} s")


Deployment = serve.deployment(name=APP_NAME)(serve.ingress()(Replica))


def application(
    spec: ReplicaSpec, replicas: int = 1, autoscale: tuple[int, int] | None = None
) -> serve.Application:
    """The Serve application: `replicas` replicas, or MIN to MAX of them with `autoscale`."""
    return Deployment.options(**deployment_options(spec, replicas, autoscale)).bind(spec)


# What a Serve config file's `args` may set (`import_path: pybitnet.server.ray_serve:build`),
# as strings or numbers; the API key comes from PYBITNET_API_KEY, never from the file.
BUILD_ARGS = {
    "model": str,
    "model_sha256": lambda value: str(value).lower(),
    "n_ctx": int,
    "threads": int,
    "max_batch": int,
    "max_queue": int,
    "replicas": int,
    "min_replicas": int,
    "max_replicas": int,
}


def build(args: dict) -> serve.Application:
    """The application of a Serve config file (a KubeRay RayService: docs/deploy.md), from its
    `args`: BUILD_ARGS by name, replicas or min_replicas and max_replicas."""
    unknown = sorted(set(args) - set(BUILD_ARGS))
    if unknown:
        raise PyBitnetError(f"args: unknown {unknown}; expected some of {sorted(BUILD_ARGS)}")
    try:
        a = {key: BUILD_ARGS[key](value) for key, value in args.items()}
    except ValueError as exc:
        raise PyBitnetError(f"args: {exc}") from None
    config = ServerConfig(
        max_batch=a.get("max_batch", 8),
        max_queue=a.get("max_queue", 64),
        api_key=os.environ.get("PYBITNET_API_KEY") or None,
    )
    spec = ReplicaSpec(
        model=a.get("model"),
        model_sha256=a.get("model_sha256"),
        n_ctx=a.get("n_ctx"),
        threads=a.get("threads"),
        config=config,
    )
    scaled = "min_replicas" in a or "max_replicas" in a
    autoscale = (a.get("min_replicas", 1), a.get("max_replicas", 1)) if scaled else None
    return application(spec, a.get("replicas", 1), autoscale)


def check_sha256(path: Path, expected: str) -> None:
    """Refuses a model file whose SHA-256 is not `expected` (a node's stale or partial copy)."""
    if not path.is_file():
        raise ModelError(f"{path}: --model-sha256 checks a model file; this node has no such file")
    with path.open("rb") as f:  # as `pybitnet inspect --sha256` hashes a file
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != expected:
        raise ModelError(
            f"{path}: this node's copy has SHA-256 {digest}, not the {expected} of --model-sha256"
        )


class NameReplica:
    """Adds REPLICA_HEADER to every response: which replica answered."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode(), name.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_named if scope["type"] == "http" else send)


class MetricsCopy(threading.Thread):
    """Copies a replica's Prometheus samples into Ray's metrics every METRICS_COPY_SECONDS,
    where Ray Serve tags them with the deployment and the replica. Ray exports each node's
    metrics on its metrics port (as `ray_pybitnet_...`, every sample a gauge), which is what
    a Prometheus of the cluster scrapes; through the Serve endpoint, /metrics would answer
    for whichever replica the request reached."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(name="pybitnet-ray-metrics", daemon=True)
        self.registry = registry
        self.gauges: dict[str, ray_metrics.Gauge] = {}

    def run(self) -> None:
        while True:
            self.copy()
            time.sleep(METRICS_COPY_SECONDS)

    def copy(self) -> None:
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):  # a timestamp, not a measurement
                    continue
                gauge = self.gauges.get(sample.name)
                if gauge is None:
                    gauge = self.gauges[sample.name] = ray_metrics.Gauge(
                        sample.name, description=family.documentation, tag_keys=tuple(sample.labels)
                    )
                gauge.set(sample.value, tags=sample.labels)


def run(
    spec: ReplicaSpec,
    *,
    replicas: int = 1,
    autoscale: tuple[int, int] | None = None,
    address: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
) -> None:
    """Deploys the replicas to the Ray cluster at `address` and returns (the cluster runs
    them), or without one, to a local Ray started here, serving until SIGTERM or Ctrl-C."""
    # The replicas' logs (and a failing one's traceback) stay in Ray's log folder.
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not its "Started Serve ..."
    stop = threading.Event()
    if address is None:  # after ray.init, whose own SIGTERM handler would end the process
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        _check_cpus(spec, autoscale[0] if autoscale else replicas)
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(application(spec, replicas, autoscale), name=APP_NAME, route_prefix="/")
        except RuntimeError:
            raise PyBitnetError(f"the replicas did not start: {_why_not()}") from None
        print(f"pybitnet: {APP_NAME} on Ray Serve at http://{host}:{port}/", flush=True)
        if address is None:
            stop.wait()
            serve.shutdown()
    finally:
        ray.shutdown()


def _check_cpus(spec: ReplicaSpec, replicas: int) -> None:
    """Replicas that the cluster has no CPUs for would wait for them for ever."""
    needed = replicas * (spec.threads or 1)
    cpus = ray.cluster_resources().get("CPU", 0)
    if needed > cpus:
        raise PyBitnetError(
            f"{replicas} replica(s) of {spec.threads or 1} thread(s) need {needed} CPUs; the Ray "
            f"cluster has {cpus:g} (use fewer --replicas or --threads)"
        )


def _why_not() -> str:
    """The last line of the replicas' failure (Serve keeps their traceback in the deployment's
    status), without a pybitnet error's class name."""
    message = serve.status().applications[APP_NAME].deployments[APP_NAME].message
    lines = [line.strip() for line in message.splitlines() if line.strip()] or ["no reason given"]
    return re.sub(r"^pybitnet\.errors\.\w+: ", "", lines[-1])
