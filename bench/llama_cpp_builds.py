"""llama.cpp builds and settings on this CPU: the portable build against a native one, weight repacking on and off.

    python bench/llama_cpp_builds.py --native-wheel DIR/llama_cpp_python-0.3.36-*.whl [--tokens 128] [--repeats 3] [--threads 2]
    python bench/llama_cpp_builds.py --smoke --results /tmp/builds.md   # the installed build only, 8 tokens, one round

The Makefile builds llama-cpp-python portably (ggml's CPU backend for every x86-64 level, the
best one for the CPU loaded at run time), so its cached wheel runs on any x86-64. This bench
measures what that costs against a build for this CPU alone (`-march=native`, llama-cpp-python's
default; build one with `pip wheel --no-deps llama-cpp-python==0.3.36` and pass it), installed
into a folder of its own. It also measures weight repacking into llama.cpp's extra buffer types
(the AMX buffer on an AMX CPU, where tunelab turns it off because the first decode segfaults):
on, off, and tunelab's choice.

Each configuration runs in a fresh child process per round (a crash is recorded as a crash, not
a lost bench): load the GGUF through tunelab's `open_llama`, one warm-up generation, then the
raw `Llama.generate` loop over the same prompt ids, greedy, exactly `--tokens` new tokens.
Rounds are interleaved, the order reversed every other round; figures are median (min–max).
Goal: the portable build at >= 0.95x the native one with tunelab's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import results  # noqa: E402

TITLE = "llama.cpp builds and weight repacking (bench/llama_cpp_builds.py)"
PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
GOAL_PORTABLE = 0.95


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--native-wheel", type=Path, help="a llama-cpp-python wheel built for this CPU (-march=native)")
    p.add_argument("--gguf", type=Path, help="the GGUF to generate with (default: the shipped SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="the installed build only, 8 tokens, one round")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # a JSON configuration: run it here and print one JSON line
    results.add_arguments(p)
    return p.parse_args(argv)


# ---------------------------------------------------------------- one configuration, in a child process
def worker(config: dict) -> None:
    from tunelab.models.llama_cpp import open_llama

    llm = open_llama(config["gguf"], n_ctx=512, n_threads=config["threads"], repack=config["repack"])
    ids = llm.tokenize(PROMPT.encode(), add_bos=True)

    def generate(n: int) -> list[int]:
        out = []
        llm.reset()
        for token in llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == n:
                return out
        raise AssertionError(f"generation ended after {len(out)} tokens, before {n}")

    generate(8)  # warm-up
    start = time.perf_counter()
    new_ids = generate(config["tokens"])
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "ids": new_ids, "cpu_backend": loaded_cpu_backend(), "llama_cpp": loaded_llama_cpp()}))


def loaded_cpu_backend() -> str:
    """Which of ggml's CPU backends this process mapped (a portable build loads one variant)."""
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    names = sorted({Path(line.split()[-1]).name for line in maps.splitlines() if "libggml-cpu" in line})
    return ", ".join(names) or "linked in"


def loaded_llama_cpp() -> str:
    import llama_cpp

    return str(Path(llama_cpp.__file__).parent)


def run_config(config: dict, pythonpath: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p)
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(config)], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        why = f"signal {signal.Signals(-done.returncode).name}" if done.returncode < 0 else f"exit {done.returncode}"
        return {"crashed": why, "stderr": done.stderr[-400:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def native_site(wheel: Path) -> str:
    """A folder holding the native wheel's llama_cpp alone (made once per wheel)."""
    from tunelab.paths import cache_dir

    target = cache_dir() / "bench" / "llama-native" / wheel.stem
    if not (target / "llama_cpp").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return str(target)


# ---------------------------------------------------------------- the bench
def configurations(args, gguf: Path) -> dict[str, tuple[dict, str | None]]:
    from tunelab.cpu import cpu

    base = {"gguf": str(gguf), "tokens": args.tokens, "threads": args.threads}
    choice = cpu().llama_extra_buffers
    configs = {f"portable, tunelab's choice (repacking {'on' if choice else 'off'})": ({**base, "repack": None}, None)}
    configs[f"portable, repacking {'off' if choice else 'on'}"] = ({**base, "repack": not choice}, None)
    if args.native_wheel:
        site = native_site(args.native_wheel)
        configs[f"native, tunelab's choice (repacking {'on' if choice else 'off'})"] = ({**base, "repack": None}, site)
        configs[f"native, repacking {'off' if choice else 'on'}"] = ({**base, "repack": not choice}, site)
    return configs


def measure(configs: dict, repeats: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for r in range(repeats):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            config, site = configs[name]
            runs[name].append(run_config(config, site))
            last = runs[name][-1]
            shown = last["crashed"] if "crashed" in last else f"{config['tokens'] / last['seconds']:.1f} tok/s"
            print(f"== round {r + 1}/{repeats}: {name}: {shown}", flush=True)
    return runs


def report(runs: dict[str, list[dict]], tokens: int) -> str:
    rows, tps = [], {}
    reference = next((r[0]["ids"] for r in runs.values() if "ids" in r[0]), None)
    for name, rounds in runs.items():
        crashed = [r["crashed"] for r in rounds if "crashed" in r]
        if crashed:
            rows.append([name, f"crashed in {len(crashed)} of {len(rounds)} rounds ({crashed[0]})", "", ""])
            continue
        tps[name] = [tokens / r["seconds"] for r in rounds]
        same = "yes" if all(r["ids"] == reference for r in rounds) else "no"
        rows.append([name, results.median_range(tps[name]), rounds[0]["cpu_backend"], same])
    lines = [results.table(["configuration", "tokens/s", "CPU backend loaded", "same token ids as the first row"], rows), ""]
    portable, native = (next((k for k in tps if k.startswith(kind) and "choice" in k), None) for kind in ("portable", "native"))
    if portable and native:
        ratios = [a / b for a, b in zip(tps[portable], tps[native])]
        ratio = statistics.median(ratios)
        met = "met" if ratio >= GOAL_PORTABLE else "NOT met"
        lines.append(
            f"Portable build against the native one, tunelab's settings: **{ratio:.2f}x** "
            f"({results.median_range(ratios, 2, 'x')} per round; goal >= {GOAL_PORTABLE}x: {met})."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if args.smoke:
        args.tokens, args.repeats, args.native_wheel = 8, 1, None
    command = sys.argv if argv is None else ["bench/llama_cpp_builds.py", *argv]
    idle = results.check_idle(args.max_load, args.allow_busy)

    from tunelab.cpu import cpu
    from tunelab.serve.registry import default_gguf

    gguf = args.gguf or default_gguf()
    if gguf is None:
        raise SystemExit("no GGUF: pass --gguf, or install the default model's package (make setup-gguf)")
    runs = measure(configurations(args, gguf), args.repeats)
    body = report(runs, args.tokens)
    print("\n" + body)
    intro = (
        f"GGUF: `{Path(gguf).name}`. {args.threads} threads, batch 1, greedy, exactly {args.tokens} new tokens after the same "
        f"prompt ids, each configuration in a fresh process per round after a warm-up generation, {args.repeats} interleaved "
        f"round(s); median (min–max). tunelab's decision on this CPU: {cpu().describe()}. "
        f"Native build: {args.native_wheel.name if args.native_wheel else 'not measured'}.\n\n"
    )
    results.write_section(args.results, TITLE, intro + body, idle, command)


if __name__ == "__main__":
    main()
