"""CPU generation speed of the default model fine-tuned: transformers fp32 vs GGUF through tunelab
vs the same GGUF through llama-cpp-python called directly, all measured in one run.

    .venv/bin/python bench/cpu_inference.py [--run runs/NAME] [--threads 2] [--tokens 128]

Without --run it builds a stand-in "fine-tuned" model: SmolLM2-135M-Instruct with a random LoRA
adapter (all linear layers, r=16, B scaled to perturb the model slightly), exports it with
`tunelab export` (Q8_0, Q4_K_M, faithfulness check with metric deltas on AlpacaEval prompts),
then times 128 greedy new tokens at batch 1 with 2 threads:

- transformers fp32 `model.generate` on the merged model (the usual notebook path; the merged
  model is the faster of merged/unmerged, so the ratio is conservative);
- `LlamaCppChatModel.generate` (tunelab's GGUF path, also behind `tunelab generate`/`serve`);
- `llama_cpp.Llama.create_chat_completion` on the same file (llama-cpp-python called directly).

Targets: tunelab's GGUF path >= 6x transformers fp32, and within 10% of llama.cpp directly.
Rounds are interleaved (every path once per round, after one warm-up each); figures are median
(min–max) over the rounds, ratios per round. The section replaces its own in bench/RESULTS.md
(bench/results.py) unless --no-results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import results  # noqa: E402

TITLE = "CPU inference (bench/cpu_inference.py)"
PROMPT = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."}]


def random_lora_run(root: Path, base_dir: Path, shared_data: Path | None) -> Path:
    """A run directory like `tunelab train` leaves: model/ (LoRA adapter + tunelab_model.json), data/test.jsonl."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunelab.io import atomic_write_jsonl
    from tunelab.models.load import load_causal_lm, load_tokenizer

    if (root / "model" / "tunelab_model.json").is_file():
        return root
    torch.manual_seed(0)
    model = get_peft_model(load_causal_lm(base_dir), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    (root / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root / "model")
    load_tokenizer(base_dir).save_pretrained(root / "model")
    (root / "model" / "tunelab_model.json").write_text(
        json.dumps(
            {
                "base_model": "smollm2-135m-instruct",
                "base_model_path": str(base_dir),
                "method": "lora",
                "note": "random LoRA stand-in for bench/cpu_inference.py",
            }
        )
    )
    rows = []
    ref_file = shared_data / "alpaca_eval_gpt4_reference.json" if shared_data else None
    if ref_file and ref_file.is_file():
        for i, r in enumerate(json.loads(ref_file.read_text())[:8]):
            rows.append(
                {
                    "id": f"alpacaeval-{i}",
                    "messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}],
                    "source": ref_file.name,
                }
            )
        atomic_write_jsonl(root / "data" / "test.jsonl", rows)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a trained run directory (default: a random-LoRA stand-in of the default model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--answer-tokens", type=int, default=64, help="answer length for the quality delta")
    ap.add_argument("--no-results", action="store_true", help="do not write to bench/RESULTS.md")
    ap.add_argument("--reexport", action="store_true", help="redo the export even if the run has one")
    results.add_arguments(ap)
    args = ap.parse_args()
    idle = results.check_idle(args.max_load, args.allow_busy or args.no_results)

    import torch

    from tunelab.config import EvalConfig, ExportConfig
    from tunelab.export.run import export_run
    from tunelab.models.chat import GenerationSettings
    from tunelab.models.llama_cpp import LlamaCppChatModel, require_llama_cpp
    from tunelab.models.load import load_causal_lm, load_tokenizer
    from tunelab.models.resolve import resolve_model
    from tunelab.paths import cache_dir, shared_data_dir

    llama_cpp = require_llama_cpp()
    torch.set_num_threads(args.threads)
    if args.run:
        run, model_desc = args.run, f"trained run {args.run}"
    else:
        run = random_lora_run(cache_dir() / "bench" / "smollm2-random-lora", resolve_model("smollm2-135m-instruct").path, shared_data_dir())
        model_desc = "SmolLM2-135M-Instruct + random LoRA (r=16, all linear, B×0.05; no trained run used)"

    export = run / "export"
    faith = export / "faithfulness.json"
    if args.reexport or not faith.is_file() or not list((export / "gguf").glob("*-q4_k_m.gguf")) or not (export / "merged").is_dir():
        print(f"== exporting {run} (merged, Q8_0, Q4_K_M) with the faithfulness check")
        report = export_run(
            run,
            ["merged", "gguf-q8_0", "gguf-q4_k_m"],
            config=ExportConfig(check_prompts=8, check_tokens=16, evaluate=True),
            eval_config=EvalConfig(max_new_tokens=args.answer_tokens, metrics=["bleu", "rougeL", "bertscore"]),
            threads=args.threads,
        )
    else:
        print(f"== reusing the export in {export} (--reexport to redo it)")
        report = json.loads(faith.read_text())
    # transformers fp32, the notebook path
    tok = load_tokenizer(export / "merged")
    model = load_causal_lm(export / "merged").eval()
    enc = tok(tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True), return_tensors="pt", add_special_tokens=False)

    def hf() -> int:
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        return out.shape[1] - enc["input_ids"].shape[1]

    paths = {"transformers fp32": hf}
    settings = GenerationSettings(max_new_tokens=args.tokens, temperature=0.0)
    for q in ("q8_0", "q4_k_m"):
        path = next((export / "gguf").glob(f"*-{q}.gguf"))
        chat = LlamaCppChatModel(path, n_threads=args.threads, n_ctx=2048)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)

        n_new = len(list(chat.generate_ids(chat.prompt_tokens(PROMPT), settings)))  # greedy: the same every time

        def via_tunelab(chat=chat, n_new=n_new) -> int:
            chat.generate([PROMPT], settings)  # tunelab's public path, as `tunelab generate` and `serve` use it
            return n_new

        def direct(llm=llm) -> int:
            llm.reset()
            return llm.create_chat_completion(PROMPT, max_tokens=args.tokens, temperature=0.0)["usage"]["completion_tokens"]

        paths[f"GGUF {q} tunelab"] = via_tunelab
        paths[f"GGUF {q} direct"] = direct

    # Interleaved rounds, so every path sees the same background load; one warm-up each.
    times: dict[str, list[float]] = {k: [] for k in paths}
    tokens: dict[str, int] = {}
    for k, fn in paths.items():
        print(f"== warm-up: {k}")
        tokens[k] = fn()
    for r in range(args.repeats):
        for k, fn in paths.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        print(f"== round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {tokens[k] / times[k][-1]:.1f} tok/s" for k in paths))
    base = "transformers fp32"
    tps = {k: [tokens[k] / t for t in v] for k, v in times.items()}
    rows = [
        [
            k,
            tokens[k],
            results.median_range(times[k], 2),
            results.median_range(tps[k]),
            results.median_range([a / b for a, b in zip(tps[k], tps[base])], 2, "x"),
        ]
        for k in paths
    ]
    lines = [results.table(["path", "new tokens", "seconds", "tokens/s", "vs transformers fp32"], rows)]
    ratios = []
    for q in ("q8_0", "q4_k_m"):
        t, d = tps[f"GGUF {q} tunelab"], tps[f"GGUF {q} direct"]
        vs_hf = statistics.median(a / b for a, b in zip(t, tps[base]))
        vs_direct = statistics.median(a / b for a, b in zip(t, d))
        ratios.append(
            f"- GGUF {q}: tunelab / transformers fp32 = {vs_hf:.2f}x, median of the rounds (target >= 6x: {'met' if vs_hf >= 6 else 'NOT met'}); "
            f"tunelab / llama.cpp direct = {vs_direct:.3f} (target >= 0.90: {'met' if vs_direct >= 0.9 else 'NOT met'})"
        )
    quality = [
        "| format | token agreement (first 16) | prompts equal | "
        + " | ".join(f"Δ {m}" for m in sorted(report.get("pytorch_metrics", {})))
        + " |",
        "|---|---|---|" + "---|" * len(report.get("pytorch_metrics", {})),
    ]
    for fmt, e in report["formats"].items():
        quality.append(
            f"| {fmt} | {e['agreement']:.1%} | {e['prompts_equal']}/{e['prompts']} | "
            + " | ".join(
                f"{e['metrics'][m]['delta']:+.4f}" if m in e.get("metrics", {}) else "-" for m in sorted(report.get("pytorch_metrics", {}))
            )
            + " |"
        )
    pyt = ", ".join(f"{m} {v:.4f}" for m, v in report.get("pytorch_metrics", {}).items())

    text = (
        "\n".join(lines)
        + "\n\n"
        + "\n".join(ratios)
        + "\n\nQuality of each export vs the PyTorch model ("
        + f"{report['prompts']} prompts from {Path(report['prompt_source']).name}; PyTorch: {pyt or 'not scored'}):\n\n"
        + "\n".join(quality)
    )
    print()
    print(text)
    if not args.no_results:
        intro = (
            f"Model: {model_desc}. {args.threads} threads, batch 1, greedy, {args.tokens} new tokens, "
            f"{args.repeats} interleaved round(s) after a warm-up each; median (min–max) over the rounds, ratios per round.\n\n"
        )
        results.write_section(args.results, TITLE, intro + text, idle)


if __name__ == "__main__":
    main()
