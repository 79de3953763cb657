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

Each configuration runs in a fresh worker process per round (bench/harness.py; a crash is recorded
as a crash, not a lost bench): load the GGUF through tunelab's `open_llama`, one warm-up
generation, then the raw `Llama.generate` loop over the same prompt ids, greedy, exactly `--tokens`
new tokens.
Rounds are interleaved, the order reversed every other round; figures are median (min–max).
Goal: the portable build at >= 0.95x the native one with tunelab's settings.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/llama_cpp_builds.py`
from bench import harness, results  # noqa: E402

TITLE = "llama.cpp builds and weight repacking (bench/llama_cpp_builds.py)"
BENCH = harness.Bench(__file__, smoke={"tokens": 8})
PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
GOAL_PORTABLE = 0.95


def parse_args(argv=None):
    p = BENCH.parser(__doc__)
    p.add_argument("--native-wheel", type=Path, help="a llama-cpp-python wheel built for this CPU (-march=native)")
    p.add_argument("--gguf", type=Path, help="the GGUF to generate with (default: the shipped SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--tokens", type=int, default=128)
    return BENCH.parse(p, argv, worker)


# ---------------------------------------------------------------- one configuration, in a worker process
def worker(name: str, args) -> dict:
    """The configuration `name` (of `configurations`): seconds for `--tokens` new tokens after a warm-up, the ids, the backend."""
    from tunelab.models.llama_cpp import open_llama

    config = configurations(args, gguf_file(args))[name][0]
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
    return {"seconds": seconds, "ids": new_ids, "cpu_backend": loaded_cpu_backend(), "llama_cpp": loaded_llama_cpp()}


def loaded_cpu_backend() -> str:
    """Which of ggml's CPU backends this process mapped (a portable build loads one variant)."""
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    names = sorted({Path(line.split()[-1]).name for line in maps.splitlines() if "libggml-cpu" in line})
    return ", ".join(names) or "linked in"


def loaded_llama_cpp() -> str:
    import llama_cpp

    return str(Path(llama_cpp.__file__).parent)


def run_config(args, name: str, pythonpath: str | None) -> dict:
    """The configuration `name` in a worker process that imports llama_cpp from `pythonpath` (None: the installed build)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(harness.ROOT)) if p)}
    return BENCH.in_worker(args, name, 0, worker, env=env, crash_is_result=True)


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
    if args.native_wheel and not args.smoke:  # --smoke: the installed build only
        site = native_site(args.native_wheel)
        configs[f"native, tunelab's choice (repacking {'on' if choice else 'off'})"] = ({**base, "repack": None}, site)
        configs[f"native, repacking {'off' if choice else 'on'}"] = ({**base, "repack": not choice}, site)
    return configs


def measure(args, configs: dict) -> dict[str, list[dict]]:
    def say(run: dict) -> str:
        return run["crashed"] if "crashed" in run else f"{args.tokens / run['seconds']:.1f} tok/s"

    return harness.rounds(configs, args.repeats, lambda name, r: run_config(args, name, configs[name][1]), say=say)


def gguf_file(args) -> Path:
    from tunelab.serve.registry import default_gguf

    gguf = args.gguf or default_gguf()
    if gguf is None:
        raise SystemExit("no GGUF: pass --gguf, or install the default model's package (make setup-gguf)")
    return Path(gguf)


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
    idle = harness.check_idle(args)

    from tunelab.cpu import cpu

    gguf = gguf_file(args)
    runs = measure(args, configurations(args, gguf))
    native = args.native_wheel.name if args.native_wheel and not args.smoke else "not measured"
    about = [
        f"GGUF: `{gguf.name}`.",
        f"{args.threads} threads, batch 1, greedy, exactly {args.tokens} new tokens after the same prompt ids,",
        f"each configuration in a fresh process per round after a warm-up generation, {args.repeats} interleaved round(s);",
        f"median (min–max). tunelab's decision on this CPU: {cpu().describe()}. Native build: {native}.",
    ]
    harness.write_section(args, TITLE, " ".join(about) + "\n\n" + report(runs, args.tokens), idle)


if __name__ == "__main__":
    main()
