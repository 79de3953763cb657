"""Speed of `tunelab benchmark` against lm-evaluation-harness itself, on the same ARC questions.

    .venv/bin/python bench/arc_scoring.py [--model smollm2-135m-instruct] [--benchmark arc-easy] [--questions 200]
                                          [--batch-size 16] [--threads 2] [--repeats 3]

Both sides score every choice of the same seeded sample of questions in fp32 (the precision whose
numbers agree) with the same batch size and torch threads, in the same process, in interleaved
rounds. Each is timed from the model folder to the per-choice log-likelihoods, model load
included: lm-eval through `simple_evaluate` with a local custom task (bench/lm_eval_reference.py),
tunelab through `load_for_scoring` and `choice_logprobs` (one row per question, the choices
sharing the prompt). Every round checks that acc and acc_norm are equal and records the largest
log-likelihood difference. Figures: median (min–max) questions/s over the rounds; the section
replaces its own in bench/RESULTS.md (bench/results.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/arc_scoring.py`
from bench import harness, results  # noqa: E402

TITLE = "ARC scoring (bench/arc_scoring.py)"
BENCH = harness.Bench(__file__)


def time_tunelab(model_dir: str, questions, batch_size: int) -> tuple[float, list[list[float]]]:
    from tunelab.evaluate.benchmark import choice_logprobs
    from tunelab.evaluate.loading import free_memory, load_for_scoring

    start = time.perf_counter()
    chat, _ = load_for_scoring(model_dir)
    logprobs = choice_logprobs(chat, questions, batch_size)
    seconds = time.perf_counter() - start
    del chat
    free_memory()
    return seconds, logprobs


def time_lm_eval(model_dir: str, questions, batch_size: int) -> tuple[float, list[list[float]]]:
    from bench.lm_eval_reference import lm_eval_multiple_choice

    start = time.perf_counter()
    out = lm_eval_multiple_choice(model_dir, questions, batch_size=batch_size)
    return time.perf_counter() - start, out["logprobs"]


def one_round(model_dir: str, questions, batch_size: int) -> dict:
    from tunelab.evaluate.benchmark import accuracies

    ours_s, ours = time_tunelab(model_dir, questions, batch_size)
    theirs_s, theirs = time_lm_eval(model_dir, questions, batch_size)
    a, b = accuracies(questions, ours), accuracies(questions, theirs)
    assert a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"], "tunelab and lm-eval disagree on a pick"
    max_diff = max(abs(x - y) for q_ours, q_theirs in zip(ours, theirs) for x, y in zip(q_ours, q_theirs))
    n = len(questions)
    acc, acc_norm = sum(a["acc"]) / n, sum(a["acc_norm"]) / n
    return {"tunelab_qps": n / ours_s, "lm_eval_qps": n / theirs_s, "max_diff": max_diff, "acc": acc, "acc_norm": acc_norm}


def report(args, rounds: list[dict]) -> str:
    r = results.median_range
    rows = [
        ["lm-evaluation-harness 0.4.13 (`hf` model, fp32)", r([x["lm_eval_qps"] for x in rounds], 2), "1.00x"],
        [
            "tunelab `benchmark` (fp32)",
            r([x["tunelab_qps"] for x in rounds], 2),
            r([x["tunelab_qps"] / x["lm_eval_qps"] for x in rounds], 2, "x"),
        ],
    ]
    first = rounds[0]
    return "\n\n".join(
        [
            f"{args.model}, {args.questions} {args.benchmark} questions (seed 0), batch size {args.batch_size}, "
            f"{args.threads} torch threads, model load included, {len(rounds)} interleaved rounds.",
            results.table(["scorer", "questions/s", "vs lm-eval"], rows),
            f"Both gave acc {first['acc']:.3f} and acc_norm {first['acc_norm']:.3f} in every round; "
            f"largest log-likelihood difference {max(x['max_diff'] for x in rounds):.1e}.",
        ]
    )


def main(argv=None) -> None:
    ap = BENCH.parser(__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--benchmark", default="arc-easy")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    args = BENCH.parse(ap, argv)
    idle = harness.check_idle(args)

    import torch

    from tunelab.evaluate.benchmark import benchmark_path, read_questions, sample_questions
    from tunelab.models.resolve import resolve_model

    torch.set_num_threads(args.threads)
    model_dir = str(resolve_model(args.model).path)
    questions = sample_questions(read_questions(benchmark_path(args.benchmark)), args.questions, seed=0)
    rounds = []
    for i in range(args.repeats):
        rounds.append(one_round(model_dir, questions, args.batch_size))
        print(f"round {i + 1}/{args.repeats}: {rounds[-1]}", flush=True)
    harness.write_section(args, TITLE, report(args, rounds), idle)


if __name__ == "__main__":
    main()
