"""The shipped model served and measured: MLflow's own scoring server (`mlflow models serve`, the local
environment) on the package, a bounded load test against it, and the malformed requests it must survive.

Serving: `served(model_uri)` starts `mlflow models serve -m URI --env-manager local --workers 1` on 127.0.0.1 at a
free port in its own process group, waits for `/ping`, and stops the whole group when done. A model URI is a
registered version (`models:/ptqflow-classifier/3`), or the MLflow model folder `model_for` writes from a package.

Load test (`loadtest`): closed-loop clients on loopback only, written on asyncio streams (standard library; one
connection per client, kept alive): each of C clients sends its next request when the last one is answered, so
C is the number of requests in flight. A phase ends after `max_requests` requests or `max_seconds` seconds,
whichever comes first, and the whole test is bounded by their sum. Why not Locust: its gevent workers and
statistics run in Python beside the server on the same 2 cores, and its headless percentiles come from rounded
buckets; this client does less per request than Locust does (one write, one read, one perf_counter pair) and
keeps every latency exactly. Several servers are measured side by side: all are started first, then every phase
(payload x clients) runs on each server in turn, in a fresh seeded order per round, so a ratio between two
servers comes from phases run minutes apart at most, and its spread over rounds is reported. Requests per
second = answered requests / the phase's wall time; p50 / p95 / p99 over the phase's requests; an error is any
answer other than 200 with one label per row sent. Server memory: the resident set of the server's process
group (psutil) after its first answer and after the last phase.

Bad requests (`probe`): each of BAD_REQUESTS is sent, its status and one-line reason kept, then a good request,
whose labels must be the ones the server gave before any bad request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import PtqflowError
from .inputs import MAX_ROWS

HOST = "127.0.0.1"  # loopback only: nothing else is ever a target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def mlflow_executable() -> str:
    """The `mlflow` command of this environment (beside the running Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "mlflow"
    return str(beside) if beside.is_file() else "mlflow"


def serve_command(model_uri: str, port: int, host: str = HOST) -> list[str]:
    return [mlflow_executable(), "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", host,
            "--port", str(port), "--workers", "1"]


@dataclass
class Server:
    name: str
    model_uri: str
    url: str
    process: subprocess.Popen
    log: Path

    def rss_bytes(self) -> int:
        """Resident memory of the server's process and its children (uvicorn's worker)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            return 0


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0


@contextlib.contextmanager
def served(model_uri: str, name: str = "model", port: int | None = None, env: dict | None = None, timeout_s: float = 240,
           log_dir: Path | None = None) -> Iterator[Server]:
    """`mlflow models serve` of `model_uri` on 127.0.0.1 (a free port unless given), ready when `/ping` answers; the
    process group is stopped on exit. A server that does not come up is one PtqflowError with its log's last line."""
    import tempfile

    port = port or free_port()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="ptqflow-serve-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"server-{name}-{port}.log"
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # MLflow runs `uvicorn` by name
    with log.open("w") as out:
        process = subprocess.Popen(serve_command(model_uri, port), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    server = Server(name, model_uri, f"http://{HOST}:{port}", process, log)
    try:
        deadline = time.monotonic() + timeout_s
        while _get(server.url + "/ping") != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:] or ["no output"]
                why = "exited" if process.poll() is not None else f"did not answer /ping within {timeout_s:.0f} s"
                raise PtqflowError(f"the MLflow server for {model_uri} {why} ({tail[0][:300]}; log: {log})")
            time.sleep(0.5)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM to the server's process group, SIGKILL after `grace_s`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


# --------------------------------------------------------------------------------------------- requests
def body(texts: list[str]) -> bytes:
    """A scoring request in MLflow's `dataframe_split` form with a `text` column."""
    return table([[t] for t in texts])


def table(rows: list[list]) -> bytes:
    """A `dataframe_split` request of a `text` column with these rows as they are (the bad requests put other
    values than strings there)."""
    return json.dumps({"dataframe_split": {"columns": ["text"], "data": rows}}).encode()


def post(url: str, data: bytes, content_type: str = "application/json", timeout: float = 120) -> tuple[int, str]:
    """(status, body) of one POST to `url`/invocations (urllib: for single requests, the probe and checks)."""
    request = urllib.request.Request(url + "/invocations", data=data, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def reason(text: str) -> str:
    """The one-line reason of an error answer: in MLflow's JSON `message`, the line after "Error: " (MLflow puts the
    data it failed on before it: the model's own one-line reason follows), else its first line; or the plain text."""
    try:
        message = json.loads(text).get("message", text)
    except (ValueError, AttributeError):
        message = text
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    said = [line[len("Error: "):] for line in lines if line.startswith("Error: ")]
    return said[-1] if said else (lines[0] if lines else "")


def labels_of(text: str) -> list | None:
    try:
        return json.loads(text)["predictions"]
    except (ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------ bad requests
def bad_requests(good: str, max_rows: int) -> list[tuple[str, str, bytes, str]]:
    """(name, content type, body, what must happen) for each malformed request the served model must survive."""
    return [
        ("empty body", "application/json", b"", "4xx"),
        ("JSON of the wrong shape", "application/json", json.dumps({"texts": [good]}).encode(), "4xx"),
        ("a number where text belongs", "application/json", table([[42]]), "4xx"),
        ("a number among texts", "application/json", table([[good], [42]]), "4xx"),
        ("a null text", "application/json", table([[None]]), "4xx"),
        ("an empty string", "application/json", table([[""]]), "4xx"),
        ("a 1 MB text", "application/json", table([[("word " * 210_000)[:1_000_000]]]), "200 (cut, then truncated to max_length)"),
        (f"{10_000} rows in one request", "application/json", table([[good]] * 10_000), f"4xx (at most {max_rows} rows)"),
        ("a wrong content type", "text/plain", good.encode(), "4xx"),
        ("not UTF-8", "application/json", b'{"dataframe_split": {"columns": ["text"], "data": [["\xff\xfe"]]}}', "4xx"),
    ]


def probe(url: str, good: list[str], max_rows: int) -> list[dict]:
    """Every bad request against the running server at `url`, each followed by a good request: what each got, and
    whether the server still answered the good one with the same labels as before."""
    status, text = post(url, body(good))
    expected = labels_of(text)
    if status != 200 or not expected:
        raise PtqflowError(f"{url}: a good request failed before any bad one ({status}: {reason(text)})")
    out = []
    for name, content_type, data, must in bad_requests(good[0], max_rows):
        started = time.perf_counter()
        status, text = post(url, data, content_type)
        seconds = time.perf_counter() - started
        after_status, after = post(url, body(good))
        ok = (200 <= status < 300) if must.startswith("200") else (400 <= status < 500)
        out.append({"request": name, "status": status, "reason": reason(text) if status != 200 else "answered",
                    "seconds": round(seconds, 3), "expected": must, "ok": ok, "traceback_in_body": "Traceback" in text,
                    "good_after": after_status == 200 and labels_of(after) == expected})
    return out


# --------------------------------------------------------------------------------------------- load test
async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 POST /invocations on a kept-alive connection: (status, body)."""
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() == "content-length":
            length = int(value.strip())
        elif key.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    parts = []
    while (size := int((await reader.readline()).strip() or b"0", 16)) > 0:
        parts.append(await reader.readexactly(size))
        await reader.readline()
    await reader.readline()
    return status, b"".join(parts)


async def _phase(url: str, payloads: list[tuple[bytes, int]], clients: int, max_requests: int, max_seconds: float) -> dict:
    host, port = url.split("//")[1].split(":")
    latencies: list[float] = []
    errors: list[str] = []
    issued = {"n": 0}
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while issued["n"] < max_requests and time.perf_counter() < deadline:
                data, rows = payloads[issued["n"] % len(payloads)]
                issued["n"] += 1
                started = time.perf_counter()
                status, answer = await _exchange(reader, writer, data)
                latencies.append((time.perf_counter() - started) * 1000.0)
                labels = labels_of(answer.decode("utf-8", "replace")) if status == 200 else None
                if status != 200 or labels is None or len(labels) != rows:
                    errors.append(f"{status}: {reason(answer.decode('utf-8', 'replace'))[:200]}")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    return summary(latencies, errors, wall, clients, sum(rows for _, rows in payloads) / len(payloads))


def summary(latencies_ms: list[float], errors: list[str], wall_s: float, clients: int, rows_per_request: float) -> dict:
    import numpy as np

    lat = np.asarray(latencies_ms or [float("nan")])
    return {"clients": clients, "requests": len(latencies_ms), "rows_per_request": rows_per_request, "wall_s": round(wall_s, 3),
            "requests_per_s": round(len(latencies_ms) / wall_s, 2) if wall_s else 0.0,
            "rows_per_s": round(len(latencies_ms) * rows_per_request / wall_s, 1) if wall_s else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "errors": len(errors), "first_errors": errors[:3]}


def run_phase(url: str, payloads: list[tuple[bytes, int]], clients: int, max_requests: int, max_seconds: float) -> dict:
    return asyncio.run(_phase(url, payloads, clients, max_requests, max_seconds))


@dataclass
class LoadPlan:
    clients: tuple[int, ...] = (1, 4, 16)
    payloads: dict[str, int] = field(default_factory=lambda: {"single rows": 1, "batches of 16": 16})  # rows per request
    requests_per_client: int = 12  # a phase: at most clients x this many requests ...
    min_requests: int = 24
    max_seconds: float = 12.0  # ... and at most this long
    rounds: int = 2
    seed: int = 0

    def max_requests(self, clients: int) -> int:
        return max(self.min_requests, clients * self.requests_per_client)

    def bound_s(self, servers: int) -> float:
        return self.rounds * servers * len(self.clients) * len(self.payloads) * self.max_seconds


def loadtest(servers: list[Server], texts: list[str], plan: LoadPlan, progress=print) -> dict:
    """Every phase (payload x clients) on every server, interleaved per round (module docstring); per server and
    phase the summaries of each round, and the memory of each server before and after."""
    import numpy as np

    rng = np.random.default_rng(plan.seed)
    if len(texts) < max(plan.payloads.values()):
        raise PtqflowError(f"the load test needs at least {max(plan.payloads.values())} texts, got {len(texts)}")
    payloads = {kind: [(body(texts[i: i + rows]), rows) for i in range(0, len(texts) - rows + 1, rows)]
                for kind, rows in plan.payloads.items()}
    memory = {}
    for s in servers:  # one answer first: the model is loaded and every lazy import done
        status, text = post(s.url, body(texts[:1]))
        if status != 200:
            raise PtqflowError(f"{s.name}: the first request failed ({status}: {reason(text)})")
        memory[s.name] = {"before_bytes": s.rss_bytes()}
    results: dict[str, dict[str, list]] = {s.name: {} for s in servers}
    for r in range(plan.rounds):
        for kind in plan.payloads:
            for clients in plan.clients:
                for i in rng.permutation(len(servers)):
                    s = servers[i]
                    res = run_phase(s.url, payloads[kind], clients, plan.max_requests(clients), plan.max_seconds)
                    results[s.name].setdefault(f"{kind} x {clients}", []).append(res)
                    progress(f"loadtest round {r + 1}/{plan.rounds}: {s.name}, {kind}, {clients} client(s): "
                             f"{res['requests_per_s']:.1f} req/s, p99 {res['p99_ms']:.0f} ms, {res['errors']} errors")
        for s in servers:  # the resident set after each round: growth that stops is a cache filling, not a leak
            memory[s.name].setdefault("after_round_bytes", []).append(s.rss_bytes())
    for s in servers:
        memory[s.name]["after_bytes"] = s.rss_bytes()
        memory[s.name]["growth_bytes"] = memory[s.name]["after_bytes"] - memory[s.name]["before_bytes"]
    return {"results": results, "memory": memory}


def compare_servers(results: dict, baseline: str) -> dict:
    """Per server and phase, the ratio of its requests per second to `baseline`'s in the same round: median and
    range over rounds (the side-by-side figure)."""
    import statistics

    out: dict[str, dict] = {}
    for name, phases in results.items():
        out[name] = {}
        for phase, rounds in phases.items():
            base = results.get(baseline, {}).get(phase)
            if not base:
                continue
            ratios = [mine["requests_per_s"] / ref["requests_per_s"] for mine, ref in zip(rounds, base) if ref["requests_per_s"]]
            if ratios:
                out[name][phase] = {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                                    "max": round(max(ratios), 3)}
    return out


# ------------------------------------------------------------------------------------- models to serve
SERVE_DIR = Path(".ptqflow/serve")  # under the project root: the MLflow model folders built for serving


def model_uri_for(variant: str, registered: str | None = None, max_rows: int = MAX_ROWS) -> str:
    """What `mlflow models serve -m` takes for `variant`: `recommended` = the registered model's latest version when
    `registered` names one in the store, else models/recommended saved as an MLflow model folder; any other variant
    the report compared is packaged first (package.package into .ptqflow/serve/<variant>/), then saved likewise."""
    from .io import read_json
    from .package import package, save_mlflow_model

    if variant == "recommended":
        if registered and _registered(registered):
            return f"models:/{registered}/latest"
        folder = Path("models/recommended")
        if not (folder / "package.json").is_file():
            raise PtqflowError(f"{folder}: no packaged model (run: dvc repro package)")
    else:
        folder = SERVE_DIR / variant / "package"
        package(variant, Path("metrics/comparison.json"), Path("models/quantized"), Path("models/finetuned"),
                Path("reports/eval"), read_json(Path("data/prepared/meta.json")), folder, max_rows)
    return str(save_mlflow_model(folder.resolve(), (SERVE_DIR / variant / "mlflow").resolve()))


def _registered(name: str) -> bool:
    import logging

    import mlflow

    from .tracking import tracking_uri

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return bool(mlflow.MlflowClient().search_model_versions(f"name = '{name}'", max_results=1))
    except Exception:  # noqa: BLE001 - no store, or no such model: serve the package folder instead
        return False


def sample_texts(count: int, seed: int = 0, prepared: Path = Path("data/prepared")) -> list[str]:
    """`count` test rows' texts drawn with a seed (the online profile's kind of traffic: real texts, real lengths)."""
    import numpy as np

    from .data import load_prepared

    data, _ = load_prepared(prepared)
    texts = data["test"]["text"]
    picked = np.random.default_rng(seed).permutation(len(texts))[:count]
    return [texts[int(i)] for i in picked]


def markdown(record: dict) -> str:
    """The load test and the bad requests as the committed results page's tables."""
    env, plan = record["environment"], record["plan"]
    base = record["baseline"]
    lines = [f"Measured {record['date']} on {env['device_name']}; torch {env['torch']}, transformers {env['transformers']}, "
             f"mlflow {record['mlflow']}, onnxruntime {env.get('onnxruntime')}, openvino {env.get('openvino')}.",
             f"Command: `{record['command']}`", "",
             f"Servers: {', '.join(f'`{n}` ({u})' for n, u in record['servers'].items())}; `mlflow models serve "
             f"--env-manager local --workers 1` on 127.0.0.1, each on its own port, all running during the test. "
             f"Phases: {plan['rounds']} rounds, each running every (payload x clients) phase on every server in a seeded "
             f"random order; a phase = closed-loop clients, at most max(clients x {plan['requests_per_client']}, "
             f"{plan['min_requests']}) requests or {plan['max_seconds']:.0f} s. Texts: {record['texts']} seeded test rows.", "",
             f"| server | payload | clients | req/s | rows/s | p50 (ms) | p95 (ms) | p99 (ms) | errors | req/s vs {base} (median [min, max] over rounds) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, phases in record["results"].items():
        for phase, rounds in phases.items():
            kind, clients = phase.rsplit(" x ", 1)
            best = sorted(rounds, key=lambda r: r["requests_per_s"])[len(rounds) // 2]  # the median round
            ratio = record["ratios"].get(name, {}).get(phase)
            lines.append(f"| {name} | {kind} | {clients} | {best['requests_per_s']:.1f} | {best['rows_per_s']:.0f} | "
                         f"{best['p50_ms']:.1f} | {best['p95_ms']:.1f} | {best['p99_ms']:.1f} | {sum(r['errors'] for r in rounds)} | "
                         + (f"{ratio['median']:.2f}x [{ratio['min']:.2f}, {ratio['max']:.2f}]" if ratio else "-") + " |")
    lines += ["", "| server | resident memory after the first answer (MiB) | after each round (MiB) | growth (MiB) |",
              "|---|---|---|---|"]
    for name, m in record["memory"].items():
        rounds = ", ".join(f"{b / 2**20:.1f}" for b in m.get("after_round_bytes", [m["after_bytes"]]))
        lines.append(f"| {name} | {m['before_bytes'] / 2**20:.1f} | {rounds} | {m['growth_bytes'] / 2**20:+.1f} |")
    if record.get("probe"):
        lines += ["", f"Bad requests against `{record['probe_server']}`, each followed by a good request:", "",
                  "| request | status | reason (the answer's message, last line) | seconds | expected | good request after |",
                  "|---|---|---|---|---|---|"]
        for p in record["probe"]:
            lines.append(f"| {p['request']} | {p['status']} | {p['reason'][:160].replace('|', '/')} | {p['seconds']} | "
                         f"{p['expected']} | {'answered correctly' if p['good_after'] else 'FAILED'} |")
    return "\n".join(lines) + "\n"
