"""Speed of `tunelab eval`: text scoring of the AlpacaEval set, and batched against one-at-a-time generation.

    .venv/bin/python bench/eval_scoring.py [--threads 2] [--examples 805] [--prompts 8] [--tokens 64] [--repeats 3] [--skip-generation]

1. Scoring (not generation): the 805 GPT-4 reference answers of ../shared/data/alpaca_eval_gpt4_reference.json
   scored with BLEU, ROUGE-L and BERTScore (the default offline encoder) through
   `tunelab.evaluate.metrics.score_predictions`, against other real text: `instruction` scores each
   reference against its own instruction (short candidates); `perturbed` against a copy of the reference
   with its words lightly changed (every 7th word dropped, neighbours swapped), so all 1,610 texts are
   distinct and long, the worst case for BERTScore. Target: under 60 s in all;
   the ratio printed is seconds / 60 (below 1 meets it). BERTScore is timed in float32 (bit-equal to
   bert-score's own call) and, on CPUs with AVX512-BF16, under bfloat16 autocast (the speed option).
2. Generation: the real default model (SmolLM2-135M-Instruct) answers `--prompts` AlpacaEval instructions
   greedily with `--tokens` new tokens, batched (batch = all prompts) and one prompt at a time, in the same
   run; prints tokens/s of each and the speed-up.

Torch threads are pinned (default 2). Every measurement is repeated in `--repeats` interleaved rounds
(each scenario and each way of generating once per round); figures are median (min–max) over the
rounds. The section replaces its own in bench/RESULTS.md (bench/results.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import results  # noqa: E402

TITLE = "Evaluation (bench/eval_scoring.py)"
TARGET_SECONDS = 60.0


def perturb(text: str) -> str:
    """Same text, lightly changed: drop every 7th word, swap each 5th word with its neighbour."""
    words = [w for i, w in enumerate(text.split(" ")) if i % 7 != 6]
    for i in range(4, len(words) - 1, 5):
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def scenario_texts(rows: list[dict], scenario: str) -> tuple[list[str], list[str]]:
    """(candidates, references): the reference answers against their instructions, or against perturbed copies."""
    refs = [r["output"] for r in rows]
    if scenario == "instruction":
        return [r["instruction"] for r in rows], refs
    return [perturb(r) for r in refs], refs


def bench_scoring(rows: list[dict], scenario: str, bf16: bool) -> dict:
    import torch

    from tunelab.evaluate import metrics

    cands, refs = scenario_texts(rows, scenario)
    out = {"scenario": scenario, "examples": len(refs)}
    t = time.perf_counter()
    metrics.score_predictions(cands, refs, metrics=("bleu",))
    out["bleu_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics.score_predictions(cands, refs, metrics=("rougeL",))
    out["rougeL_s"] = time.perf_counter() - t
    t = time.perf_counter()
    model_type = metrics.resolve_encoder(metrics.DEFAULT_ENCODER)
    metrics.bertscore_scorer(model_type, metrics.encoder_layers(model_type))
    out["bertscore_load_s"] = time.perf_counter() - t
    t, cpu = time.perf_counter(), time.process_time()
    fp32 = metrics.score_predictions(cands, refs, metrics=("bertscore",))
    out["bertscore_fp32_s"] = time.perf_counter() - t
    out["bertscore_fp32_cpu_s"] = time.process_time() - cpu
    out["bertscore_fp32_f1"] = fp32["corpus"]["bertscore_f1"]
    if bf16:
        t, cpu = time.perf_counter(), time.process_time()
        fast = metrics.score_predictions(cands, refs, metrics=("bertscore",), bertscore_bf16=True)
        out["bertscore_bf16_s"] = time.perf_counter() - t
        out["bertscore_bf16_cpu_s"] = time.process_time() - cpu
        out["bertscore_bf16_f1"] = fast["corpus"]["bertscore_f1"]
        out["bertscore_bf16_max_abs_diff"] = max(
            abs(a - b) for a, b in zip(fp32["per_example"]["bertscore_f1"], fast["per_example"]["bertscore_f1"])
        )
    out["total_fp32_s"] = out["bleu_s"] + out["rougeL_s"] + out["bertscore_fp32_s"]
    # CPU seconds spread over the pinned threads: what the wall time would be with the cores to ourselves
    threads = torch.get_num_threads()
    out["idle_estimate_fp32_s"] = out["bleu_s"] + out["rougeL_s"] + out["bertscore_fp32_cpu_s"] / threads
    if bf16:
        out["total_bf16_s"] = out["bleu_s"] + out["rougeL_s"] + out["bertscore_bf16_s"]
        out["idle_estimate_bf16_s"] = out["bleu_s"] + out["rougeL_s"] + out["bertscore_bf16_cpu_s"] / threads
    return out


SCENARIOS = {
    "instruction": "reference answers vs their instructions",
    "perturbed": "reference answers vs perturbed copies (all texts distinct and long)",
}


def cell(rounds: list[dict], key: str, scale: float = 1.0, digits: int = 1) -> str:
    """median (min–max) of `key` / `scale` over the rounds that have it."""
    return results.median_range([d[key] / scale for d in rounds if key in d], digits)


def scoring_table(runs: dict[str, list[dict]]) -> str:
    """One row per scenario; each cell median (min–max) over the rounds; × = seconds / the 60 s budget."""
    header = ["candidates", "examples", "BLEU s", "ROUGE-L s", "BERTScore fp32 s", "total fp32 s", "× 60 s", "BERTScore bf16 s"]
    header += ["total bf16 s", "× 60 s", "max \\|ΔF1\\| bf16 vs fp32", "CPU time / threads, fp32 / bf16 s"]
    rows = []
    for scenario, done in runs.items():
        rows.append(
            [
                SCENARIOS[scenario],
                done[0]["examples"],
                cell(done, "bleu_s"),
                cell(done, "rougeL_s"),
                cell(done, "bertscore_fp32_s"),
                cell(done, "total_fp32_s"),
                cell(done, "total_fp32_s", TARGET_SECONDS, 2),
                cell(done, "bertscore_bf16_s"),
                cell(done, "total_bf16_s"),
                cell(done, "total_bf16_s", TARGET_SECONDS, 2),
                f"{max(d['bertscore_bf16_max_abs_diff'] for d in done):.4f}" if "bertscore_bf16_max_abs_diff" in done[0] else "n/a",
                f"{cell(done, 'idle_estimate_fp32_s')} / {cell(done, 'idle_estimate_bf16_s')}",
            ]
        )
    return results.table(header, rows)


def bench_generation(rows: list[dict], n_prompts: int, tokens: int) -> dict:
    from tunelab.models.chat import GenerationSettings, load_chat_model

    chat = load_chat_model("smollm2-135m-instruct")
    convs = [[{"role": "user", "content": r["instruction"]}] for r in rows[:n_prompts]]
    settings = GenerationSettings(max_new_tokens=tokens)
    chat.generate(convs[:1], GenerationSettings(max_new_tokens=4), batch_size=1)  # warm-up
    t = time.perf_counter()
    single = [chat.generate([c], settings, batch_size=1)[0] for c in convs]
    single_s = time.perf_counter() - t
    t = time.perf_counter()
    batched = chat.generate(convs, settings, batch_size=len(convs))
    batched_s = time.perf_counter() - t
    single_tokens = sum(chat.count_tokens(a) for a in single)
    batched_tokens = sum(chat.count_tokens(a) for a in batched)
    same = sum(a == b for a, b in zip(single, batched))
    return {
        "prompts": len(convs),
        "max_new_tokens": tokens,
        "single_s": single_s,
        "single_tokens": single_tokens,
        "single_tok_s": single_tokens / single_s,
        "batched_s": batched_s,
        "batched_tokens": batched_tokens,
        "batched_tok_s": batched_tokens / batched_s,
        "speedup": (batched_tokens / batched_s) / (single_tokens / single_s),
        "identical_answers": same,
    }


def generation_table(rounds: list[dict]) -> str:
    g = rounds[0]
    row = [
        f"SmolLM2-135M-Instruct fp32, {g['prompts']} AlpacaEval prompts × {g['max_new_tokens']} greedy tokens",
        results.median_range([r["batched_tok_s"] for r in rounds]),
        results.median_range([r["single_tok_s"] for r in rounds]),
        results.median_range([r["speedup"] for r in rounds], 2, "x"),
        f"{min(r['identical_answers'] for r in rounds)}/{g['prompts']}",
    ]
    return results.table(["generation", "batched tok/s", "one at a time tok/s", "speed-up", "identical answers (worst round)"], [row])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--examples", type=int, default=805)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument(
        "--scenario",
        nargs="+",
        choices=["instruction", "perturbed"],
        default=["instruction", "perturbed"],
        help="candidates: the instructions (short, as the brief suggests) and/or perturbed copies of the references (long, worst case)",
    )
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--skip-scoring", action="store_true")
    results.add_arguments(ap)
    args = ap.parse_args()
    idle = results.check_idle(args.max_load, args.allow_busy)

    import torch

    from tunelab.models.load import bf16_supported
    from tunelab.paths import shared_data_dir

    torch.set_num_threads(args.threads)
    data_dir = shared_data_dir()
    if data_dir is None or not (data_dir / "alpaca_eval_gpt4_reference.json").is_file():
        sys.exit("needs ../shared/data/alpaca_eval_gpt4_reference.json")
    rows = json.loads((data_dir / "alpaca_eval_gpt4_reference.json").read_text())[: args.examples]
    scoring = {} if args.skip_scoring else {scenario: [] for scenario in args.scenario}
    generation = []
    for r in range(args.repeats):
        for scenario in scoring:
            s = bench_scoring(rows, scenario, bf16=bf16_supported())
            scoring[scenario].append(s)
            print(
                f"round {r}, scoring ({scenario}): {s['total_fp32_s']:.1f} s fp32 ({s['total_fp32_s'] / TARGET_SECONDS:.2f}x of 60 s)"
                + (f", {s['total_bf16_s']:.1f} s bf16 ({s['total_bf16_s'] / TARGET_SECONDS:.2f}x)" if "total_bf16_s" in s else ""),
                flush=True,
            )
        if not args.skip_generation:
            g = bench_generation(rows, args.prompts, args.tokens)
            generation.append(g)
            print(
                f"round {r}, generation: batched {g['batched_tok_s']:.1f} tok/s vs one at a time {g['single_tok_s']:.1f} tok/s = {g['speedup']:.2f}x",
                flush=True,
            )
    parts = []
    if scoring:
        load_s = max(d["bertscore_load_s"] for done in scoring.values() for d in done)  # the first measurement loads it, the rest reuse it
        parts.append(
            "Scoring (not generation) of AlpacaEval's GPT-4 reference answers with BLEU, ROUGE-L and BERTScore "
            f"(the default offline encoder; loading it took {load_s:.1f} s, once per process, not counted below). "
            "Target: under 60 s in all; × is seconds / 60.\n\n" + scoring_table(scoring)
        )
    if generation:
        parts.append(generation_table(generation))
    print(results.write_section(args.results, TITLE, "\n\n".join(parts), idle))


if __name__ == "__main__":
    main()
