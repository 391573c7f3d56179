"""Prometheus metrics of one server, in a registry of its own (so a process can hold many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pybitnet.server.scheduler import Scheduler, StepObserver

# Seconds: from a few ms (a tiny model's token) to a minute (a long prompt behind a full queue).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics(StepObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pybitnet_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "pybitnet_prompt_tokens", "Prompt tokens prefilled", registry=r
        )
        self.generated_tokens = Counter("pybitnet_generated_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("pybitnet_queue_depth", "Requests waiting for a slot", registry=r)
        self.active = Gauge("pybitnet_active_sequences", "Sequences in the batch", registry=r)
        self.kv_used = Gauge(
            "pybitnet_kv_cache_used_tokens",
            "KV-cache positions reserved by active sequences",
            registry=r,
        )
        self.ttft = Histogram(
            "pybitnet_time_to_first_token_seconds",
            "From a request's arrival to its first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "pybitnet_inter_token_latency_seconds",
            "Between consecutive generated tokens of one sequence (0 for the tokens after the "
            "first of a step that verified drafts: they arrive together)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pybitnet_step_batch_size",
            "Sequences fed to one forward step",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )

    def watch(self, scheduler: Scheduler) -> None:
        """Read the gauges from the scheduler at scrape time, so they are never stale."""
        self.queue_depth.set_function(lambda: scheduler.queue_depth)
        self.active.set_function(lambda: scheduler.active)
        self.kv_used.set_function(lambda: scheduler.kv_used_tokens)

    def prompt_done(self, tokens: int) -> None:
        self.prompt_tokens.inc(tokens)

    def tokens(self, count: int, first: bool, seconds: float) -> None:
        self.generated_tokens.inc(count)
        (self.ttft if first else self.itl).observe(seconds)
        # A step's other tokens (verified drafts) reach the client with its first one.
        for _ in range(count - 1):
            self.itl.observe(0.0)

    def step(self, batch_size: int) -> None:
        self.batch_size.observe(batch_size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
