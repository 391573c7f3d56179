"""pybitnet replicas on Ray Serve beside the single-process server, in one command, on loopback.

    .venv/bin/python benchmarks/serve_ray.py --model /tmp/2b-i2s.gguf [--duration 20]
        [--clients 8 32] [--max-tokens 32] [--json serve-ray.json]

Three servers of the same model, each loaded with every --clients count for --duration
seconds: `pybitnet serve --threads 2` (one process), then on a local Ray Serve
(server/ray_serve.py) 1 replica of 2 kernel threads and 2 replicas of 1 thread each, then the
single process again. The clients are serve_load.py's (load_clients.py: chat requests back to
back, three in four streamed, max_tokens drawn from [--max-tokens / 2, --max-tokens]). Figures
as serve_load.py's: tokens/s = tokens the servers generated during the run (for Ray, the
replicas' counters summed from Ray's metrics export) / the run's seconds; TTFT = request sent
-> first streamed token; errors = 5xx statuses, transport errors and errors inside streams;
load = the machine's 1-minute load average at the run's end (it is shared).
Needs `pip install '.[ray]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
from load_clients import COUNTERS, GAUGES, Run, measure, wait_idle, warm_up  # benchmarks/
from serve_load import print_run, start_server, stop_server  # benchmarks/

# Ray's metrics trail the replicas' counters: copied every 2 s (ray_serve.METRICS_COPY_SECONDS),
# reported every 0.5 s (set below), so a read waits this long first.
RAY_METRICS_SETTLE_SECONDS = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF file to serve (default: embedded)")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not all(1 <= n <= 256 for n in args.clients) or not 0 < args.duration <= 600:
        parser.error("--clients must be in [1, 256] and --duration in (0, 600]")
    args.disconnect_rate, args.output_head = 0.0, None  # what serve_load's helpers read

    # The single-process server before and after the Ray cells: the machine is shared, and
    # the two say how much its load moved meanwhile.
    rows = single_runs("single process, 2 threads", args)
    rows += ray_runs(args)
    rows += single_runs("single process again", args)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    sys.exit(0 if not any(row["errors"] for row in rows) else 1)


def single_runs(name: str, args) -> list[dict]:
    """`pybitnet serve --threads 2` under each client count."""
    with tempfile.TemporaryFile() as log:
        args.threads = 2
        server, url = start_server(args, log)
        try:
            return runs(name, url, args)
        finally:
            stop_server(server)


def runs(name: str, url: str, args, counters=None) -> list[dict]:
    """A warm-up, then a run for each client count."""
    httpx.post(
        f"{url}/v1/completions", json={"prompt": "Once", "max_tokens": 4}, timeout=600
    ).raise_for_status()
    warm_up(url, args)
    rows = []
    for clients in args.clients:
        wait_idle(url, counters=counters)
        run = measure(url, clients, args.duration, args, counters)
        print_run(name, run)
        load = round(os.getloadavg()[0], 1)  # the machine is shared: its load beside each run
        rows.append({"server": name, **run.summary(), "errors": errors(run), "load_1min": load})
    return rows


def errors(run: Run) -> int:
    server_errors = sum(n for code, n in run.statuses.items() if code >= 500)
    return server_errors + sum(run.errors.values())


def ray_runs(args) -> list[dict]:
    """The Ray Serve cells: a local Ray of this machine's 2 CPUs, one deployment after the
    other on the same port."""
    import ray
    from ray import serve

    from pybitnet.server import ServerConfig
    from pybitnet.server.ray_serve import APP_NAME, ReplicaSpec, application

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,  # a replica logs a traceback for each request its client left
        _system_config={"metrics_report_interval_ms": 500},
    )
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        metrics_url = f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"
        config = ServerConfig(max_batch=args.max_batch, max_queue=args.max_queue)
        model = str(args.model.absolute()) if args.model else None
        for replicas, threads in ((1, 2), (2, 1)):
            spec = ReplicaSpec(model=model, threads=threads, config=config)
            serve.run(application(spec, replicas), name=APP_NAME, route_prefix="/")
            name = f"Ray Serve, {replicas} x {threads} thread(s)"
            rows += runs(name, url, args, lambda: ray_counters(metrics_url))
            serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def ray_counters(metrics_url: str) -> dict[str, float]:
    """What load_clients.gauges reads from one server, summed over the live replicas in Ray's
    metrics export (a deleted deployment's replicas leave it at some point, mid-run maybe)."""
    import ray

    time.sleep(RAY_METRICS_SETTLE_SECONDS)
    live = {
        actor["name"].rsplit("#", 1)[1]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("SERVE_REPLICA::")
    }
    text = httpx.get(metrics_url, timeout=10).text
    values = {}
    for key, name in {**GAUGES, **COUNTERS}.items():
        found = re.findall(rf'^ray_{name}{{[^}}]*replica="([^"]+)"[^}}]*}} (\S+)$', text, re.M)
        values[key] = sum(float(value) for replica, value in found if replica in live)
    return values


def print_table(rows: list[dict]) -> None:
    head = f"{'server':32} {'clients':>7} {'tok/s':>8} {'TTFT p50 ms':>12} {'p99 ms':>9}"
    print(f"\n{head} errors load")
    for row in rows:
        ttft = row["ttft_ms"]
        print(
            f"{row['server']:32} {row['clients']:>7} {row['tokens_per_s']:>8.2f} "
            f"{ttft['p50'] or 0:>12.0f} {ttft['p99'] or 0:>9.0f} {row['errors']:>6} "
            f"{row['load_1min']}"
        )


if __name__ == "__main__":
    main()
