"""The scaffolding every bench script shares, so that a script says only what it measures.

A bench script starts and ends like this; everything between is its own:

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/x.py`
    from bench import harness, results  # noqa: E402

    TITLE = "What it measures (bench/x.py)"
    BENCH = harness.Bench(__file__, smoke={"examples": 12})

    def parse_args(argv=None):
        parser = BENCH.parser(__doc__)  # --threads, --repeats, --smoke, --results, --max-load, --allow-busy
        parser.add_argument(...)        # its own flags
        return BENCH.parse(parser, argv, measure_one)  # a worker process measures its kind here, and ends

    def main(argv=None):
        args = parse_args(argv)
        idle = harness.check_idle(args)
        runs = harness.rounds(KINDS, args.repeats, lambda kind, r: BENCH.in_worker(args, kind, r, measure_one))
        harness.write_section(args, TITLE, body, idle)

- Importing this module sets the environment every bench runs in (the hub offline, tokenizers
  single-threaded: the bench pins its own threads) before tunelab or transformers is imported.
- Workers: each kind of run measured in a fresh process of the same script, started with its own
  command line plus hidden flags (`--worker KIND --out FILE --seed R`), so its peak memory, caches
  and crashes are its own; its figures come back as JSON. Under `--smoke` it runs in the bench's
  own process instead (quicker, and a test sees its errors), unless crashes are results.
- Rounds are interleaved: every kind once per round, the order reversed every other round, so no
  kind always runs first on a cooler or warmer machine; round r passes r (a worker's seed).
- `--smoke` checks that the bench runs: a few examples, one round, on a busy machine too; its
  figures go to a file of one's own (`--results`), never to bench/RESULTS.md.
- The idle check and the section of bench/RESULTS.md: bench/results.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench import results

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tunelab.cpu import cpu  # noqa: E402  (torch-free, as bench/results.py's import of it)

ROOT = results.ROOT
# Whether bf16 matmuls pay on this CPU (tunelab.cpu owns the answer), and so the precision of every training bench's
# rows, the peers' included: without AVX512-BF16 or AMX, torch emulates bf16 at under 1% of fp32's speed (1.2 against
# 180 GFLOP/s on a 2-core AMD EPYC with AVX2, 2026-12-07), and a peer in bf16 there would be one weakened 150x.
BF16 = cpu().bf16_matmul
PRECISION = "bf16" if BF16 else "fp32"
WORKER_TIMEOUT_S = 600  # a worker whose crash is a result may also hang: that is a result too
Measure = Callable[[str, argparse.Namespace], dict]  # the figures of one kind of run, measured with these arguments


@dataclass(frozen=True)
class Bench:
    """A bench script's command line and workers. `script`: its __file__. `smoke`: what --smoke caps (option:
    largest value), or None for a bench without --smoke. `threads`, `repeats`: the defaults of --threads
    and --repeats (None: the bench has no such option)."""

    script: str
    smoke: dict[str, int] | None = None
    threads: int | None = 2
    repeats: int | None = 3

    def parser(self, doc: str) -> argparse.ArgumentParser:
        """The parser with the flags every bench shares; the script adds its own."""
        parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
        if self.threads is not None:
            parser.add_argument("--threads", type=int, default=self.threads, help="threads of the measured work")
        if self.repeats is not None:
            parser.add_argument("--repeats", type=int, default=self.repeats, help="rounds; figures are median (min–max) over them")
        if self.smoke is not None:
            caps = ", ".join(f"--{name.replace('_', '-')} {cap}" for name, cap in self.smoke.items())
            parser.add_argument(
                "--smoke", action="store_true", help=f"checks the bench runs: at most {caps}, one round, on a busy machine too"
            )
        results.add_arguments(parser)
        return parser

    def parse(self, parser: argparse.ArgumentParser, argv: list[str] | None, worker: Measure | None = None) -> argparse.Namespace:
        """The arguments, with `argv` and `command` (as recorded in the section) kept, and --smoke's caps applied.

        A bench that measures in worker processes passes `worker(kind, args)`, the measurement of one kind.
        In a worker process (started by `in_worker` with --worker KIND --out FILE --seed R) this measures
        KIND, writes its figures to FILE as JSON and ends the process: a worker does nothing else.
        """
        if worker is not None:
            parser.add_argument("--worker", help=argparse.SUPPRESS)
            parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
            parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        script = Path(self.script).resolve()
        args.command = [str(script.relative_to(ROOT) if script.is_relative_to(ROOT) else script), *args.argv]
        if getattr(args, "smoke", False):
            if Path(args.results).resolve() == results.RESULTS.resolve():
                parser.error("--smoke checks that the bench runs; its figures are not for bench/RESULTS.md: add --results FILE")
            for name, cap in self.smoke.items():
                setattr(args, name, min(getattr(args, name), cap))
            if self.repeats is not None:
                args.repeats = 1
            args.allow_busy = True
        if getattr(args, "worker", None) is not None:
            args.out.write_text(json.dumps(worker(args.worker, args)))
            sys.exit(0)
        return args

    def in_worker(
        self,
        args: argparse.Namespace,
        kind: str,
        seed: int,
        measure: Measure,
        *,
        env: dict[str, str] | None = None,
        crash_is_result: bool = False,
    ) -> dict:
        """`measure(kind, args)` with `seed` in a fresh process of this script (environment `env`), its figures.

        With `crash_is_result`, a worker that dies or hangs gives {"crashed": why, "stderr": its end} and its
        output is kept for that; otherwise a failed worker ends the bench. Under --smoke, `measure` runs here.
        """
        if getattr(args, "smoke", False) and not crash_is_result:
            return measure(kind, argparse.Namespace(**{**vars(args), "seed": seed}))
        with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
            out = Path(tmp) / "figures.json"
            command = [sys.executable, self.script, *args.argv, "--worker", kind, "--out", str(out), "--seed", str(seed)]
            try:
                done = subprocess.run(
                    command, env=env, capture_output=crash_is_result, text=True, timeout=WORKER_TIMEOUT_S if crash_is_result else None
                )
            except subprocess.TimeoutExpired as hung:
                return {"crashed": f"no answer in {WORKER_TIMEOUT_S} s", "stderr": str(hung.stderr or "")[-400:]}
            if done.returncode == 0:
                return json.loads(out.read_text())
        why = f"signal {signal.Signals(-done.returncode).name}" if done.returncode < 0 else f"exit {done.returncode}"
        if crash_is_result:
            return {"crashed": why, "stderr": done.stderr[-400:]}
        sys.exit(f"{kind}: the worker process failed ({why}); its messages are above")


def rounds(
    kinds: Iterable[str],
    repeats: int,
    measure: Callable[[str, int], object],
    *,
    say: Callable[[object], str] = lambda result: "done",
    before_round: Callable[[int], None] | None = None,
) -> dict[str, list]:
    """`measure(kind, r)` of every kind in each of `repeats` interleaved rounds: {kind: [result of each round]}.

    The order is reversed every other round; `before_round(r)` runs first in each round; `say(result)` is
    printed after each measurement, so a long bench shows where it is.
    """
    kinds = list(kinds)
    done: dict[str, list] = {kind: [] for kind in kinds}
    for r in range(repeats):
        if before_round is not None:
            before_round(r)
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            done[kind].append(measure(kind, r))
            print(f"round {r + 1}/{repeats}: {kind}: {say(done[kind][-1])}", flush=True)
    return done


def check_idle(args: argparse.Namespace) -> dict:
    """results.check_idle with the bench's --max-load and --allow-busy: call it before measuring anything."""
    return results.check_idle(args.max_load, args.allow_busy)


def write_section(args: argparse.Namespace, title: str, body: str, idle: dict) -> str:
    """Replace this CPU's section of `title` in --results (results.write_section, with the bench's command line); print it."""
    section = results.write_section(args.results, title, body, idle, command=args.command)
    print("\n" + section, flush=True)
    return section


# ---------------------------------------------------------------- peers
def trl_arguments(workdir: Path, *, batch: int, learning_rate: float, max_length: int, seed: int) -> dict:
    """What every CPU bench gives a TRL trainer's config (SFTConfig, DPOConfig) besides the settings it compares:
    one epoch at a constant learning rate on the CPU, nothing saved, reported, logged or drawn while it is timed."""
    return dict(
        output_dir=str(workdir),
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        max_length=max_length,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        seed=seed,
    )
