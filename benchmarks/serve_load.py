"""Load test of `pybitnet serve`: N concurrent clients for a bounded time, on loopback.

    .venv/bin/python benchmarks/serve_load.py [--model FILE | --url http://127.0.0.1:PORT]
        [--clients 8] [--duration 30] [--max-tokens 64] [--compare-single [--pairs 3]]
        [--disconnect-rate 0.3] [--max-batch 8] [--max-queue 64] [--output-head q8]
        [--threads N] [--json load.json]

    # the soak: 64 clients leaving 30% of their requests midway, for a minute
    .venv/bin/python benchmarks/serve_load.py --clients 64 --duration 60 --disconnect-rate 0.3
    # the batching speed-up: one client, then 8, three times over, on a 2B-shaped model
    .venv/bin/python benchmarks/serve_load.py --model 2b.gguf --clients 8 --compare-single \
        --pairs 3 --max-tokens 128

Without --url it starts `pybitnet serve` on a free port (the embedded model unless --model),
sends one warm-up request, and stops the server with SIGTERM at the end. Each client sends chat
completions back to back until the time is up (max_tokens drawn from [--max-tokens / 2,
--max-tokens]), three in four streamed; with --disconnect-rate it leaves that share of its
requests early: a stream after a random number of chunks (0: as soon as the response starts,
possibly while still queued), a plain request after a random delay. --compare-single first
runs one client alone for the same time, and checks that the N clients together generate at
least 3x its tokens per second; --pairs alternates such pairs of runs and checks their median
ratio (the machine is shared: one client's decoding is bound by memory bandwidth, which other
work on the machine takes a varying share of, and N clients' by compute).

Figures: tokens/s = tokens the server generated during the run (its Prometheus counter) / the
run's seconds; prompt tokens a request = tokens prefilled / prompts prefilled (its counters: a
prompt's length in the model's vocabulary, chat template included); TTFT = request sent ->
first content chunk; ITL = gap between content chunks of one stream (one chunk per token,
except where the server holds text back). Checks: no 5xx
other than a deliberate 503, no error inside a stream, no transport error; the active, queued
and KV-cache gauges back to zero after the run; when it started the server, the server's RSS
(sampled 4 times a second) in the run's last quarter within --rss-tolerance of its second (the
first holds the ramp-up; a full batch of the longest requests runs first, so the server's
working set is reached before it), and the server gone within 5 s of SIGTERM (it waits for any
request still running).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
from load_clients import Run, measure, wait_idle, warm_up  # benchmarks/

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# An idle server exits at once on SIGTERM; one still running a request waits for it (up to
# its shutdown timeout, 10 s): a request whose client left must not be one.
STOP_SECONDS = 5.0


def start_server(args, log) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(Path(sys.executable).parent / "pybitnet"), "serve", "--port", str(port)]
    command += ["--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue)]
    if args.model:
        command += ["--model", str(args.model)]
    if args.output_head:
        command += ["--output-head", args.output_head]
    if args.threads:
        command += ["--threads", str(args.threads)]
    # Its log goes to a file: a pipe nobody reads would block the server once full.
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the server exited: {log.read().decode(errors='replace')}")
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit("the server did not become ready in 10 minutes")
        time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> float:
    """Seconds from SIGTERM to the server's exit (it waits for the requests it still runs)."""
    sent = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    return time.monotonic() - sent


class RSSSampler:
    """The server's resident memory, sampled every `interval` seconds in a thread of its own."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (monotonic seconds, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:  # the server has exited
                return
            self.samples.append((time.monotonic(), rss / 2**20))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, start: float, end: float) -> dict:
        """RSS over [start, end]: at its start and end, its maximum, the medians of its second
        and last quarters (the first is the run's ramp-up) and the growth from one to
        the other, and a timeline of about ten points."""
        mib = [m for t, m in self.samples if start <= t <= end]
        times = [t - start for t, _ in self.samples if start <= t <= end]
        if len(mib) < 8:
            return {"samples": len(mib)}
        quarter = len(mib) // 4
        second = statistics.median(mib[quarter : 2 * quarter])
        last = statistics.median(mib[-quarter:])
        every = max(1, len(mib) // 10)
        return {
            "samples": len(mib),
            "start_mib": round(mib[0], 1),
            "end_mib": round(mib[-1], 1),
            "max_mib": round(max(mib), 1),
            "second_quarter_mib": round(second, 1),
            "last_quarter_mib": round(last, 1),
            "growth_pct": round(100 * (last - second) / second, 2),
            "timeline": [[round(times[i], 1), round(mib[i], 1)] for i in range(0, len(mib), every)],
        }


def print_run(name: str, run: Run) -> None:
    s = run.summary()
    print(
        f"{name}: {s['clients']} clients, {s['seconds']:.1f} s, {s['tokens']:.0f} tokens, "
        f"{s['tokens_per_s']:.2f} tok/s, {s['prompt_tokens_per_request']} prompt tokens a "
        f"request | TTFT p50 {s['ttft_ms']['p50']} ms p99 "
        f"{s['ttft_ms']['p99']} ms | ITL p50 {s['itl_ms']['p50']} ms p99 {s['itl_ms']['p99']} ms"
    )
    print(
        f"  requests: {s['requests_completed']} completed, {s['requests_left_on_purpose']} left "
        f"on purpose; statuses {s['statuses']}; errors {s['errors'] or 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server on loopback (default: start one)")
    parser.add_argument("--model", type=Path, help="GGUF file to serve (default: embedded)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--disconnect-rate", type=float, default=0.0)
    parser.add_argument("--compare-single", action="store_true")
    parser.add_argument(
        "--pairs", type=int, default=1, help="with --compare-single: alternating runs of each"
    )
    parser.add_argument("--output-head", help="the server's --output-head (q8)")
    parser.add_argument("--threads", type=int, help="the server's kernel threads")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--rss-tolerance", type=float, default=5.0, help="percent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.duration <= 600:
        parser.error("--clients must be in [1, 256] and --duration in (0, 600]")
    if not 1 <= args.pairs <= 20:
        parser.error("--pairs must be in [1, 20]")
    if not 0 <= args.disconnect_rate <= 1:
        parser.error("--disconnect-rate must be in [0, 1]")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a loopback address: this benchmark loads only this machine")

    with tempfile.TemporaryFile() as log:
        server, url = (None, args.url.rstrip("/")) if args.url else start_server(args, log)
        rss = RSSSampler(server.pid) if server else None
        results: dict = {"url": url}
        checks: dict[str, bool] = {}
        try:
            load(url, rss, args, results, checks)
        finally:
            if rss:
                rss.stop()
            if server:
                results["stop_seconds"] = stopped = round(stop_server(server), 2)
                print(f"the server stopped {stopped} s after SIGTERM")
                checks[f"server stopped within {STOP_SECONDS} s of SIGTERM (no request left)"] = (
                    stopped <= STOP_SECONDS
                )
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    sys.exit(0 if all(checks.values()) else 1)


def load(url: str, rss: RSSSampler | None, args, results: dict, checks: dict[str, bool]) -> None:
    """The runs against the server at url, adding to results and checks."""
    results["model"] = httpx.get(f"{url}/health").json()["model"]
    httpx.post(  # warm-up: first-touch costs are not the runs'
        f"{url}/v1/completions", json={"prompt": "Once", "max_tokens": 4}, timeout=600
    ).raise_for_status()
    warm_up(url, args)
    server_errors, errors, gauges_back, speedups = 0, Counter(), True, []
    for _ in range(args.pairs if args.compare_single else 1):
        if args.compare_single:
            single = measure(url, 1, args.duration, args)
            print_run("single client", single)
            results["single"] = single.summary()
            wait_idle(url)
        results["gauges_before"] = before = wait_idle(url)
        started = time.monotonic()
        run = measure(url, args.clients, args.duration, args)
        ended = time.monotonic()
        print_run("concurrent", run)
        results["concurrent"] = run.summary()
        results["gauges_after"] = after = wait_idle(url)
        print(f"gauges before the run: {before}; after it: {after}")
        server_errors += sum(n for code, n in run.statuses.items() if code >= 500 and code != 503)
        errors += run.errors
        gauges_back = gauges_back and not any(after.values())
        if args.compare_single:
            speedups.append(run.tokens_per_s / single.tokens_per_s)
            print(f"aggregate speedup: {speedups[-1]:.2f}x one client's tokens/s")
            pair = {"single": results["single"], "concurrent": results["concurrent"]}
            results.setdefault("pairs", []).append({**pair, "speedup": round(speedups[-1], 2)})
    checks["no 5xx except 503"] = server_errors == 0
    checks["no error in a stream, no transport error"] = not errors
    checks["active, queue and KV gauges back to 0"] = gauges_back
    if args.compare_single:
        results["speedup"] = speedup = round(statistics.median(speedups), 2)
        if len(speedups) > 1:
            each = sorted(round(x, 2) for x in speedups)
            print(f"aggregate speedups of the {len(speedups)} pairs: {each}, median {speedup}")
        checks[f"{args.clients} clients >= 3x one client's tok/s (median of pairs)"] = speedup >= 3
    if rss:  # over the last run
        results["server_rss"] = memory = rss.during(started, ended)
        print(f"server RSS during the run (MiB): {memory}")
        if "growth_pct" in memory:
            checks[f"server RSS flat (last quarter within {args.rss_tolerance}% of the 2nd)"] = (
                abs(memory["growth_pct"]) <= args.rss_tolerance
            )


if __name__ == "__main__":
    main()
