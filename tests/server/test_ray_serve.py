"""pybitnet replicas on a real local Ray Serve (server/ray_serve.py): 2 replicas of the embedded
model behind one endpoint on loopback, one Ray for the module. The openai client gets the texts
of the single-sequence path; each replica's Ray metrics count the requests it answered; a
replica killed under load fails only what it held, and comes back."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import httpx
import openai
import psutil
import pytest

from helpers.serving import HTTP_TIMEOUT

ray = pytest.importorskip("ray", reason="Ray Serve is an optional extra: pip install '.[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is an optional extra")

from pybitnet.errors import PyBitnetError  # noqa: E402
from pybitnet.server import ServerConfig, create_app  # noqa: E402
from pybitnet.server.ray_serve import (  # noqa: E402
    APP_NAME,
    REPLICA_HEADER,
    Replica,
    ReplicaSpec,
    _check_cpus,
    build,
)

pytestmark = pytest.mark.slow
DOCS = Path(__file__).parents[2] / "docs"
KEY = "secret"
ID = "tinystories-3m"
MESSAGES = [{"role": "user", "content": "Tell me a story about a cat."}]
REPLICAS = 2
RECOVERY_SECONDS = 90  # for Ray to notice a dead replica and start another, on a busy machine
RSS_SLACK = 0.25  # a replica's RSS after the load, over its RSS before it


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """2 replicas of 1 kernel thread each, on a Ray of 2 CPUs started (and stopped) here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Metrics reported every half second, not every 10 s, for the metrics test's waits.
    ray.init(
        num_cpus=REPLICAS,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,  # the replicas' logs stay in Ray's folder, out of the test's output
        _system_config={"metrics_report_interval_ms": 500},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # As a Serve config file (KubeRay) deploys it: build() of its args.
        args = {"threads": 1, "replicas": REPLICAS, "max_batch": "4", "max_queue": "8"}
        with mock.patch.dict(os.environ, {"PYBITNET_API_KEY": KEY}):
            app = build(args)
        serve.run(app, name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def client(endpoint: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{endpoint}/v1", api_key=KEY, max_retries=0, timeout=HTTP_TIMEOUT
    )


def replica_pids() -> dict[str, int]:
    """The live replicas' processes by replica tag, from Ray's actor table (the actor's name
    ends with the tag that Serve's metrics and REPLICA_HEADER use)."""
    from ray._private.state import actors  # the table without the dashboard's state API

    return {
        info["Name"].rsplit("#", 1)[1]: info["Pid"]
        for info in actors().values()
        if info["Name"].startswith("SERVE_REPLICA::") and info["State"] == "ALIVE"
    }


def running_replicas() -> int:
    status = serve.status().applications[APP_NAME].deployments[APP_NAME]
    return status.replica_states.get("RUNNING", 0)


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {seconds} s"
        time.sleep(0.5)


def test_chat_completions_and_streams_match_the_single_sequence_path(client, model):
    expected = model.complete(
        model.render_chat(MESSAGES), parse_special=True, max_tokens=16, temperature=0
    )
    reply = client.chat.completions.create(
        model=ID, messages=MESSAGES, max_tokens=16, temperature=0
    )
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == 16
    chunks = list(
        client.chat.completions.create(
            model=ID, messages=MESSAGES, max_tokens=16, temperature=0, stream=True
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "the reply came in one piece, not streamed"
    assert "".join(pieces) == expected.text
    plain = model.complete("Once upon a time", max_tokens=12, temperature=0)
    completion = client.completions.create(
        model=ID, prompt="Once upon a time", max_tokens=12, temperature=0
    )
    assert completion.choices[0].text == plain.text
    streamed = client.completions.create(
        model=ID, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == plain.text


def test_the_health_check_asks_the_scheduler(model):
    replica = Replica(ReplicaSpec())
    replica.app = create_app(model, ServerConfig())  # as Serve's wrapper holds it
    scheduler = replica.app.state.scheduler
    scheduler.start()
    replica.check_health()
    scheduler.stop(timeout=5)
    with pytest.raises(RuntimeError, match="the scheduler has stopped"):
        replica.check_health()


def test_bad_deployments_are_refused_in_one_line(endpoint):
    with pytest.raises(PyBitnetError, match="need 6 CPUs; the Ray cluster has 2"):
        _check_cpus(ReplicaSpec(threads=3), 2)
    with pytest.raises(PyBitnetError, match=r"args: unknown \['api_key'\]"):
        build({"api_key": "in a file"})
    with pytest.raises(PyBitnetError, match="args: invalid literal for int"):
        build({"replicas": "two"})


def test_a_context_longer_than_trained_is_refused_as_the_server_refuses_it(model):
    spec = ReplicaSpec(n_ctx=model.config.context_length + 1)
    with pytest.raises(PyBitnetError, match=r"^--ctx: \d+ is more than the \d+ tokens of context"):
        Replica(spec).__serve_build_asgi_app__()


def test_the_kuberay_example_builds():
    import yaml  # a dependency of Ray

    manifest = yaml.safe_load((DOCS / "kuberay-rayservice.yaml").read_text())
    (app,) = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == f"{build.__module__}:{build.__name__}"
    build(app["args"])  # every arg known, every value of its type


def test_the_api_key_and_error_bodies_are_the_servers(endpoint):
    refused = httpx.post(f"{endpoint}/v1/completions", json={"prompt": "a"}, timeout=HTTP_TIMEOUT)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    bad = httpx.post(
        f"{endpoint}/v1/completions",
        json={"prompt": "a", "n": 2},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=HTTP_TIMEOUT,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "n"


def ray_metric(text: str, name: str, replica: str, **labels: str) -> float:
    """A sample's value from Ray's metrics export (0 when it has none yet)."""
    wanted = [f'replica="{replica}"', *(f'{k}="{v}"' for k, v in labels.items())]
    for line in text.splitlines():
        if line.startswith(f"ray_{name}{{") and all(label in line for label in wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_requests_spread_over_both_replicas_and_each_counts_its_own(endpoint):
    port = ray.nodes()[0]["MetricsExportPort"]
    route = {"route": "/v1/models/{name}", "status": "200"}  # a route no other test asks for

    def counted() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=HTTP_TIMEOUT).text
        name = "pybitnet_requests_total"
        return {tag: ray_metric(text, name, tag, **route) for tag in replica_pids()}

    before = counted()
    served = Counter()
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=HTTP_TIMEOUT) as http:
        for _ in range(24):
            response = http.get(f"{endpoint}/v1/models/{ID}")
            assert response.status_code == 200
            served[response.headers[REPLICA_HEADER]] += 1
    assert len(served) == REPLICAS, f"Serve sent every request to one replica: {served}"

    def shown() -> bool:
        now = counted()
        return all(now.get(tag, 0) - before.get(tag, 0) >= n for tag, n in served.items())

    wait_for(shown, 30, "the requests in Ray's metrics")
    now = counted()
    assert {tag: now[tag] - before.get(tag, 0) for tag in served} == dict(served)


@dataclass
class Call:
    started: float
    ended: float = 0.0
    replica: str | None = None
    outcome: str = "pending"


def chat(http: httpx.Client, endpoint: str, seed: int, stream: bool) -> Call:
    """One chat request, streamed or not; its outcome "ok" or the clean error it got."""
    call = Call(time.monotonic())
    body = {"messages": MESSAGES, "max_tokens": 24, "seed": seed, "stream": stream}
    try:
        with http.stream("POST", f"{endpoint}/v1/chat/completions", json=body) as response:
            call.replica = response.headers.get(REPLICA_HEADER)
            text = "\n".join(response.iter_lines())
            whole = "data: [DONE]" in text if stream else '"finish_reason"' in text
            if response.status_code != 200:
                call.outcome = f"HTTP {response.status_code}"
            else:
                call.outcome = "ok" if whole and '"error"' not in text else "cut reply"
    except httpx.TimeoutException:
        call.outcome = "timeout"  # a hang, which the test refuses
    except httpx.TransportError as exc:
        call.outcome = type(exc).__name__
    call.ended = time.monotonic()
    return call


def load(endpoint: str, clients: int, seconds: float, during=None) -> list[Call]:
    """`clients` threads sending chats back to back for `seconds`, streamed (even clients) or
    not (odd ones); `during` runs a third of the way in."""
    calls: list[Call] = []
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=HTTP_TIMEOUT) as http:
            while time.monotonic() < deadline:
                calls.append(chat(http, endpoint, i * 1000 + len(calls), stream=i % 2 == 0))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    if during is not None:
        time.sleep(seconds / 3)
        during()
    for thread in threads:
        thread.join(seconds + HTTP_TIMEOUT + 5)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return calls


def rss_mib(pids: dict[str, int]) -> dict[str, float]:
    return {tag: psutil.Process(pid).memory_info().rss / 2**20 for tag, pid in pids.items()}


def test_a_killed_replica_fails_only_what_it_held_and_comes_back(endpoint, capsys):
    wait_for(lambda: running_replicas() == REPLICAS, RECOVERY_SECONDS, "both replicas running")
    load(endpoint, clients=4, seconds=3)  # the replicas' working sets reached
    pids = replica_pids()
    assert len(pids) == REPLICAS
    rss_before = rss_mib(pids)
    victim, victim_pid = next(iter(pids.items()))
    killed_at = 0.0

    def kill() -> None:
        nonlocal killed_at
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)

    calls = load(endpoint, clients=6, seconds=9, during=kill)
    failed = [c for c in calls if c.outcome != "ok"]
    held = [c for c in calls if c.started < killed_at < c.ended and c.replica in (victim, None)]
    assert not [c for c in calls if c.outcome == "timeout"], "a request hung"
    # Only requests in flight on the killed replica (or not yet given one) at the kill fail.
    assert all(c.started < killed_at < c.ended and c.replica in (victim, None) for c in failed), [
        (round(c.started - killed_at, 2), c.replica, c.outcome) for c in failed
    ]
    wait_for(lambda: running_replicas() == REPLICAS, RECOVERY_SECONDS, "the replica restarted")
    wait_for(lambda: len(replica_pids()) == REPLICAS, RECOVERY_SECONDS, "the replica's process")
    recovered = time.monotonic() - killed_at
    after = load(endpoint, clients=4, seconds=4)
    pids_after = replica_pids()
    assert victim not in pids_after and victim_pid not in pids_after.values()
    assert all(c.outcome == "ok" for c in after), Counter(c.outcome for c in after)
    assert {c.replica for c in after} == set(pids_after), "the new replica serves"
    rss_after = rss_mib(pids_after)
    start, end = sum(rss_before.values()), sum(rss_after.values())
    assert end <= start * (1 + RSS_SLACK), (rss_before, rss_after)
    with capsys.disabled():  # the figures for the report
        print(
            f"\nkilled replica: {len(calls)} requests sent, {len(held)} in flight on it, "
            f"{len(failed)} failed {dict(Counter(c.outcome for c in failed))}; back to {REPLICAS} "
            f"replicas {recovered:.1f} s after the kill; after it {len(after)} sent, all ok; "
            f"replica RSS MiB {start:.0f} before, {end:.0f} after"
        )
