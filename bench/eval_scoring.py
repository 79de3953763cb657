"""Speed of `tunelab eval`: text scoring (encoder load included), and generation by today's path against the fast one.

    .venv/bin/python bench/eval_scoring.py [--threads 2] [--examples 805] [--answer-prompts 200] [--prompts 16]
        [--tokens 128] [--batch-size 8] [--repeats 3] [--gguf FILE] [--work DIR] [--smoke]

1. Scoring (not generation) with BLEU, ROUGE-L and BERTScore (the default offline encoder) through
   `tunelab.evaluate.metrics.score_predictions`, in three scenarios:
   `instruction`: AlpacaEval's 805 GPT-4 reference answers (../shared/data/alpaca_eval_gpt4_reference.json)
   scored against their own instructions (short candidates, the easy case); `perturbed`: against copies
   with their words lightly changed (every 7th word dropped, neighbours swapped: 1,610 distinct long
   texts, the worst case for BERTScore); `answers`: SmolLM2-135M-Instruct's real greedy answers
   (`--tokens` new tokens) to the first `--answer-prompts` AlpacaEval instructions against their
   references, what `tunelab eval` scores. Those answers are generated once with the default model
   and cached in `--work`. The BERTScore encoder is loaded anew in every scenario and round (its cache
   cleared; files in the page cache) and its load time is its own column and part of each total.
   Target: under 60 s in all; × is seconds / 60. BERTScore runs in float32 (bit-equal to bert-score's
   own call) and, on CPUs with AVX512-BF16, under bfloat16 autocast (`eval.bertscore_precision: auto`).
2. Generation: `--prompts` AlpacaEval instructions answered greedily with `--tokens` new tokens by
   SmolLM2-135M-Instruct through `tunelab.evaluate.run.generate_answers`, batches of `--batch-size`,
   as `tunelab eval` does, by each plan of tunelab/evaluate/generation.py: today's float32
   transformers (`generation_precision: fp32`), `auto` (bf16 drafts checked by float32) and bf16
   weights alone, plus `--gguf FILE` through llama.cpp when given. Tokens/s and how many answers are
   identical to today's path; `auto` must give all of them identical (reported in bold if not).

Torch threads are pinned (default 2). Every measurement is repeated in `--repeats` interleaved rounds
(each scenario and each way of generating once per round); figures are median (min–max) over the
rounds. The section replaces its own in bench/RESULTS.md (bench/results.py). `--smoke`: a few
prompts and examples, one round, for checking the script (with --results /tmp/x.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/eval_scoring.py`
from bench import harness, results  # noqa: E402

TITLE = "Evaluation (bench/eval_scoring.py)"
BENCH = harness.Bench(__file__, smoke={"examples": 24, "answer_prompts": 8, "prompts": 4, "tokens": 24, "batch_size": 2})
TARGET_SECONDS = 60.0


def perturb(text: str) -> str:
    """Same text, lightly changed: drop every 7th word, swap each 5th word with its neighbour."""
    words = [w for i, w in enumerate(text.split(" ")) if i % 7 != 6]
    for i in range(4, len(words) - 1, 5):
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def scenario_texts(rows: list[dict], scenario: str, answers: list[str] | None) -> tuple[list[str], list[str]]:
    """(candidates, references): instructions, perturbed copies, or the model's real answers, against the references."""
    if scenario == "answers":
        return list(answers), [r["output"] for r in rows[: len(answers)]]
    refs = [r["output"] for r in rows]
    if scenario == "instruction":
        return [r["instruction"] for r in rows], refs
    return [perturb(r) for r in refs], refs


def bench_scoring(cands: list[str], refs: list[str], bf16: bool) -> dict:
    """Seconds of BLEU, ROUGE-L, the encoder load and BERTScore (fp32 and bf16) on one scenario; totals include the load."""
    import torch

    from tunelab.evaluate import metrics

    out = {"examples": len(refs)}
    t = time.perf_counter()
    metrics.score_predictions(cands, refs, metrics=("bleu",))
    out["bleu_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics.score_predictions(cands, refs, metrics=("rougeL",))
    out["rougeL_s"] = time.perf_counter() - t
    metrics.bertscore_scorer.cache_clear()  # every scenario and round pays the load, as a `tunelab eval` process does
    t = time.perf_counter()
    model_type = metrics.resolve_encoder(metrics.DEFAULT_ENCODER)
    metrics.bertscore_scorer(model_type, metrics.encoder_layers(model_type))
    out["load_s"] = time.perf_counter() - t
    t, cpu = time.perf_counter(), time.process_time()
    fp32 = metrics.score_predictions(cands, refs, metrics=("bertscore",))
    out["bertscore_fp32_s"] = time.perf_counter() - t
    out["bertscore_fp32_cpu_s"] = time.process_time() - cpu
    if bf16:
        t, cpu = time.perf_counter(), time.process_time()
        fast = metrics.score_predictions(cands, refs, metrics=("bertscore",), bertscore_bf16=True)
        out["bertscore_bf16_s"] = time.perf_counter() - t
        out["bertscore_bf16_cpu_s"] = time.process_time() - cpu
        out["bertscore_bf16_max_abs_diff"] = max(
            abs(a - b) for a, b in zip(fp32["per_example"]["bertscore_f1"], fast["per_example"]["bertscore_f1"])
        )
    fixed = out["bleu_s"] + out["rougeL_s"] + out["load_s"]
    threads = torch.get_num_threads()  # CPU seconds spread over the pinned threads: the wall time with the cores to ourselves
    for kind in ("fp32", "bf16") if bf16 else ("fp32",):
        out[f"total_{kind}_s"] = fixed + out[f"bertscore_{kind}_s"]
        out[f"idle_estimate_{kind}_s"] = fixed + out[f"bertscore_{kind}_cpu_s"] / threads
    return out


SCENARIOS = {
    "instruction": "reference answers vs their instructions (easy case)",
    "perturbed": "reference answers vs perturbed copies (all texts distinct and long)",
    "answers": "SmolLM2-135M-Instruct's greedy answers vs the references",
}


def cell(rounds: list[dict], key: str, scale: float = 1.0, digits: int = 1) -> str:
    """median (min–max) of `key` / `scale` over the rounds that have it."""
    return results.median_range([d[key] / scale for d in rounds if key in d], digits)


def scoring_table(runs: dict[str, list[dict]]) -> str:
    """One row per scenario; each cell median (min–max) over the rounds; totals include the encoder load."""
    header = ["candidates", "examples", "encoder load s", "BLEU s", "ROUGE-L s", "BERTScore fp32 s", "BERTScore bf16 s"]
    header += ["total fp32 s (load incl.)", "total bf16 s (load incl.)", "bf16 total × 60 s", "max \\|ΔF1\\| bf16 vs fp32"]
    header += ["CPU time / threads, fp32 / bf16 s"]
    rows = []
    for scenario, done in runs.items():
        rows.append(
            [
                SCENARIOS[scenario],
                done[0]["examples"],
                cell(done, "load_s"),
                cell(done, "bleu_s"),
                cell(done, "rougeL_s"),
                cell(done, "bertscore_fp32_s"),
                cell(done, "bertscore_bf16_s"),
                cell(done, "total_fp32_s"),
                cell(done, "total_bf16_s"),
                cell(done, "total_bf16_s", TARGET_SECONDS, 2),
                f"{max(d['bertscore_bf16_max_abs_diff'] for d in done):.4f}" if "bertscore_bf16_max_abs_diff" in done[0] else "n/a",
                f"{cell(done, 'idle_estimate_fp32_s')} / {cell(done, 'idle_estimate_bf16_s')}",
            ]
        )
    return results.table(header, rows)


# ---------------------------------------------------------------- generation
def as_rows(instructions: list[str]) -> list[dict]:
    """AlpacaEval instructions as `tunelab eval` rows (prompt messages; the reference is not used here)."""
    return [{"id": str(i), "prompt": [{"role": "user", "content": text}], "reference": ""} for i, text in enumerate(instructions)]


def cached_answers(chat, instructions: list[str], tokens: int, batch_size: int, work: Path) -> list[str]:
    """SmolLM2's greedy answers to `instructions` (`tokens` new tokens), generated once by `tunelab eval`'s plan, then read from `work`."""
    from tunelab.config import EvalConfig
    from tunelab.evaluate.generation import choose_generation
    from tunelab.evaluate.run import generate_answers, generation_of

    path = work / f"smollm2-answers-{len(instructions)}x{tokens}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached["instructions"] == instructions:
            return cached["answers"]
    cfg = EvalConfig(max_new_tokens=tokens, batch_size=batch_size)
    plan = choose_generation(chat, "smollm2-135m-instruct", cfg.generation_backend, cfg.generation_precision, generation_of(cfg))
    answers, info = generate_answers(plan, as_rows(instructions), cfg, f"answers to score, {plan.label}")
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"instructions": instructions, "answers": answers, "generation": info}, ensure_ascii=False))
    os.replace(tmp, path)
    return answers


def generation_plans(chat, gguf: Path | None) -> dict:
    """Each way `tunelab eval` can generate, by the recipe setting that selects it; today's path first."""
    from tunelab.evaluate.generation import choose_generation
    from tunelab.models.interface import GenerationSettings

    greedy = GenerationSettings()
    plans = {
        "fp32": choose_generation(chat, "m", "auto", "fp32", greedy),
        "auto": choose_generation(chat, "m", "auto", "auto", greedy),
        "bf16": choose_generation(chat, "m", "auto", "bf16", greedy),
    }
    if gguf is not None:
        plans["gguf"] = choose_generation(chat, gguf, "gguf", "auto", greedy)
    return plans


def bench_generation(plans: dict, instructions: list[str], tokens: int, batch_size: int) -> dict[str, dict]:
    """One round: every plan answers the same prompts; tokens/s and answers identical to today's (fp32)."""
    from tunelab.config import EvalConfig
    from tunelab.evaluate.generation import DraftStats
    from tunelab.evaluate.run import generate_answers

    cfg = EvalConfig(max_new_tokens=tokens, batch_size=batch_size)
    rows = as_rows(instructions)
    out, today = {}, None
    for name, plan in plans.items():
        plan.stats = DraftStats()
        answers, info = generate_answers(plan, rows, cfg, name)
        today = today or answers
        out[name] = {**info, "identical": sum(a == b for a, b in zip(answers, today)), "label": plan.label}
    return out


GENERATION_ROWS = {
    "fp32": "today: transformers fp32 (`generation_precision: fp32`)",
    "auto": "`auto`: bf16 drafts checked by fp32",
    "bf16": "bf16 weights alone (`generation_precision: bf16`)",
    "gguf": "the GGUF through llama.cpp (`generation_backend: gguf`)",
}


def generation_table(rounds: list[dict[str, dict]], n_prompts: int, tokens: int, batch_size: int) -> str:
    header = ["generation", "tok/s", "vs today", "answers identical to today's (worst round)", "draft tokens kept by fp32"]
    base = [r["fp32"]["tokens_per_second"] for r in rounds]
    rows = []
    for name in rounds[0]:
        done = [r[name] for r in rounds]
        worst = min(d["identical"] for d in done)
        identical = f"{worst}/{n_prompts}" if worst == n_prompts or name != "auto" else f"**{worst}/{n_prompts}**"
        checks = [d["draft_check"] for d in done if "draft_check" in d]
        kept = f"{sum(c['kept'] for c in checks) / max(1, sum(c['drafted'] for c in checks)):.1%}" if checks else ""
        speed = [d["tokens_per_second"] for d in done]
        rows.append(
            [
                GENERATION_ROWS[name] if name != "gguf" else f"{GENERATION_ROWS[name]}: {done[0]['label'].split(' (')[0]}",
                results.median_range(speed),
                results.median_range([s / b for s, b in zip(speed, base)], 2, "x"),
                identical,
                kept,
            ]
        )
    intro = (
        f"Generation as `tunelab eval` runs it (`generate_answers`, batches of {batch_size}): SmolLM2-135M-Instruct, "
        f"{n_prompts} AlpacaEval prompts × at most {tokens} greedy tokens (stops at end of sequence), model load not included."
    )
    return intro + "\n\n" + results.table(header, rows)


# ---------------------------------------------------------------- the run
def parse_args(argv=None) -> argparse.Namespace:
    ap = BENCH.parser(__doc__)
    ap.add_argument("--examples", type=int, default=805, help="reference answers in the instruction and perturbed scenarios")
    ap.add_argument("--answer-prompts", type=int, default=200, help="real model answers in the answers scenario")
    ap.add_argument("--prompts", type=int, default=16, help="prompts in the generation comparison")
    ap.add_argument("--tokens", type=int, default=128, help="max new tokens (tunelab eval's default)")
    ap.add_argument("--batch-size", type=int, default=8, help="tunelab eval's default")
    ap.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--gguf", type=Path, help="also generate through this GGUF file (llama.cpp)")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "tunelab" / "bench", help="where the model answers are cached")
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--skip-scoring", action="store_true")
    return BENCH.parse(ap, argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    idle = harness.check_idle(args)

    import torch

    from tunelab.models.chat import load_chat_model
    from tunelab.models.load import bf16_supported
    from tunelab.paths import shared_data_dir

    torch.set_num_threads(args.threads)
    data_dir = shared_data_dir()
    if data_dir is None or not (data_dir / "alpaca_eval_gpt4_reference.json").is_file():
        sys.exit("needs ../shared/data/alpaca_eval_gpt4_reference.json")
    rows = json.loads((data_dir / "alpaca_eval_gpt4_reference.json").read_text())
    instructions = [r["instruction"] for r in rows]
    scoring = {} if args.skip_scoring else {scenario: [] for scenario in args.scenario}
    chat = load_chat_model("smollm2-135m-instruct") if (not args.skip_generation or "answers" in scoring) else None
    answers = None
    if "answers" in scoring:
        answers = cached_answers(chat, instructions[: args.answer_prompts], args.tokens, args.batch_size, args.work)
    plans = {} if args.skip_generation else generation_plans(chat, args.gguf)
    generation = []
    for r in range(args.repeats):
        for scenario in scoring:
            s = bench_scoring(*scenario_texts(rows[: args.examples], scenario, answers), bf16=bf16_supported())
            scoring[scenario].append(s)
            print(
                f"round {r}, scoring ({scenario}): encoder load {s['load_s']:.1f} s, total {s['total_fp32_s']:.1f} s fp32"
                + (f", {s['total_bf16_s']:.1f} s bf16 ({s['total_bf16_s'] / TARGET_SECONDS:.2f}x of 60 s)" if "total_bf16_s" in s else ""),
                flush=True,
            )
        if plans:
            g = bench_generation(plans, instructions[: args.prompts], args.tokens, args.batch_size)
            generation.append(g)
            print(
                f"round {r}, generation: "
                + ", ".join(f"{k} {v['tokens_per_second']:.1f} tok/s ({v['identical']}/{args.prompts} as today)" for k, v in g.items()),
                flush=True,
            )
    parts = []
    if scoring:
        parts.append(
            "Scoring (not generation) with BLEU, ROUGE-L and BERTScore (the default offline encoder, loaded anew in each "
            "scenario and round with its files in the page cache; its load is in every total). `tunelab eval` uses bf16 "
            "autocast for BERTScore on this CPU (`eval.bertscore_precision: auto`). Target: under 60 s in all; × is seconds / 60."
            + (
                f" The model answers: {args.answer_prompts} prompts × at most {args.tokens} greedy tokens, cached in {args.work}."
                if answers
                else ""
            )
            + "\n\n"
            + scoring_table(scoring)
        )
    if generation:
        parts.append(generation_table(generation, args.prompts, args.tokens, args.batch_size))
    harness.write_section(args, TITLE, "\n\n".join(parts), idle)


if __name__ == "__main__":
    main()
