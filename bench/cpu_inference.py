"""CPU generation speed: tunelab's GGUF path against the raw llama.cpp loop and transformers fp32, bf16 and int8.

    python bench/cpu_inference.py [--run runs/NAME] [--threads 2] [--tokens 128] [--repeats 3]
    python bench/cpu_inference.py --smoke --results /tmp/inference-smoke.md   # 16 tokens, one round: checks the bench runs

Without --run it builds a stand-in "fine-tuned" model: SmolLM2-135M-Instruct with a random LoRA
adapter (all linear layers, r=16, B scaled to perturb the model slightly) and exports it once
with `tunelab export` (merged, Q8_0, Q4_K_M; no faithfulness check: bench/export_quality.py
measures that). Every path then generates exactly `--tokens` greedy new tokens at batch 1 after
the same prompt token ids (the chat template applied to one prompt), with `--threads` threads:

- transformers fp32: `model.generate` on the merged model (min_new_tokens = max_new_tokens, so
  EOS cannot end it early);
- transformers bf16: the faster of real bf16 weights and fp32 weights under bf16 autocast, chosen
  by one timed generation each before the rounds (the section says which, with both figures);
- transformers int8: `torch.ao.quantization.quantize_dynamic` of every nn.Linear (int8 weights,
  fp32 activations quantized on the fly);
- GGUF tunelab: `LlamaCppChatModel` as `tunelab generate` and `serve` use it (chat template,
  tokenize, `generate_ids`, decode), its end-of-generation test still run on every token but
  told not to stop, so it reaches the same count;
- GGUF raw loop (the reference): `llama_cpp.Llama.generate` over the same prompt ids on a second
  Llama with the same file, context, threads and batch, greedy (temp 0, repeat penalty 1), counting
  tokens to N. Both llama.cpp paths reset the context first, so both evaluate the whole prompt.

Asserted every round: every path got the same prompt token ids and produced exactly N new
tokens; the two llama.cpp paths produced the same token ids. Rounds are interleaved (every path
once per round after one warm-up each, the order reversed every other round); figures are median
(min–max) over the rounds, ratios per round. Goal: tunelab's GGUF path >= 0.97x the raw loop.
The section replaces its own in bench/RESULTS.md (bench/results.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/cpu_inference.py`
from bench import harness, results  # noqa: E402

TITLE = "CPU inference (bench/cpu_inference.py)"
BENCH = harness.Bench(__file__, smoke={"tokens": 16})
PROMPT = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."}]
QUANTS = ("q8_0", "q4_k_m")
GOAL_VS_RAW = 0.97
FP32, BF16, INT8 = "transformers fp32", "transformers bf16", "transformers int8 dynamic"


def tunelab_row(q: str) -> str:
    return f"GGUF {q.upper()} tunelab"


def raw_row(q: str) -> str:
    return f"GGUF {q.upper()} raw Llama.generate loop"


def random_lora_run(root: Path, base_dir: Path) -> Path:
    """A run directory like `tunelab train` leaves: model/ (a random LoRA adapter + tunelab_model.json)."""
    import torch
    from peft import LoraConfig, get_peft_model

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
    info = {
        "base_model": "smollm2-135m-instruct",
        "base_model_path": str(base_dir),
        "weights": "lora",
        "objective": "sft",
        "note": "random LoRA stand-in",
    }
    (root / "model" / "tunelab_model.json").write_text(json.dumps(info))
    return root


def exported(run: Path, export_dir: Path, threads: int, redo: bool) -> tuple[Path, dict[str, Path]]:
    """The merged folder and the Q8_0 / Q4_K_M files of `run`, exported once (no faithfulness check)."""
    from tunelab.export.run import export_run
    from tunelab.runs import ExportDir

    def found() -> dict[str, Path]:
        by_quant = ExportDir(export_dir).ggufs_by_quant()
        return {q: by_quant[q] for q in QUANTS if q in by_quant}

    ggufs = found()
    if redo or not (export_dir / "merged").is_dir() or len(ggufs) < len(QUANTS):
        print(f"== exporting {run} to {export_dir} (merged, Q8_0, Q4_K_M)", flush=True)
        export_run(run, ["merged", *(f"gguf-{q}" for q in QUANTS)], out=export_dir, check=False, threads=threads)
        ggufs = found()
    else:
        print(f"== reusing the export in {export_dir} (--reexport to redo it)", flush=True)
    return export_dir / "merged", ggufs


# ---------------------------------------------------------------- the paths: each returns (prompt ids, new ids)
def transformers_path(model, input_ids, n_tokens: int, pad_id: int, autocast: bool = False):
    """Greedy `model.generate` forced to exactly n_tokens new tokens."""
    import torch

    def generate() -> tuple[list[int], list[int]]:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=n_tokens,
                min_new_tokens=n_tokens,  # EOS is masked until n_tokens: every path generates the same count
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
            )
        prompt_len = input_ids.shape[1]
        return input_ids[0].tolist(), out[0, prompt_len:].tolist()

    return generate


def tunelab_gguf_path(chat, n_tokens: int):
    """tunelab's GGUF path as `tunelab generate` runs it: LlamaCppChatModel.generate's steps, with the ids kept."""
    from tunelab.models.interface import GenerationSettings

    settings = GenerationSettings(max_new_tokens=n_tokens, temperature=0.0)
    is_end = chat.is_end

    def never_end(token: int) -> bool:
        is_end(token)  # still paid per token, as in real use; the count must reach n_tokens on every path
        return False

    chat.is_end = never_end

    def generate() -> tuple[list[int], list[int]]:
        prompt_ids = chat.prompt_tokens(PROMPT)
        ids = list(chat.generate_ids(prompt_ids, settings))
        chat.decode(ids)
        return prompt_ids, ids

    return generate


def raw_llama_path(llm, prompt_ids: list[int], n_tokens: int):
    """The reference: llama-cpp-python's own token loop, greedy, counting tokens to n_tokens."""

    def generate() -> tuple[list[int], list[int]]:
        llm.reset()  # evaluate the whole prompt each time, as tunelab's path does (no KV prefix reuse)
        ids: list[int] = []
        tokens = llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0, reset=True)  # temp 0: the greedy sampler alone
        for token in tokens:
            ids.append(token)
            if len(ids) == n_tokens:
                break
        tokens.close()
        return list(prompt_ids), ids

    return generate


def build_paths(merged: Path, ggufs: dict[str, Path], n_tokens: int, threads: int) -> tuple[dict, list[int], str]:
    """Every path to time, the prompt ids they must all use, and which bf16 variant was chosen (and why)."""
    import torch

    from tunelab.models.llama_cpp import LlamaCppChatModel, open_llama
    from tunelab.models.load import load_causal_lm, load_tokenizer

    tok = load_tokenizer(merged)
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    input_ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    fp32 = load_causal_lm(merged).eval()
    bf16_weights = copy.deepcopy(fp32).to(torch.bfloat16)
    int8 = torch.ao.quantization.quantize_dynamic(fp32, {torch.nn.Linear}, dtype=torch.qint8)  # a quantized copy
    bf16, bf16_choice = pick_bf16(
        {
            "real bf16 weights": transformers_path(bf16_weights, input_ids, n_tokens, pad_id),
            "fp32 weights under bf16 autocast": transformers_path(fp32, input_ids, n_tokens, pad_id, autocast=True),
        }
    )
    paths = {
        FP32: transformers_path(fp32, input_ids, n_tokens, pad_id),
        BF16: bf16,
        INT8: transformers_path(int8, input_ids, n_tokens, pad_id),
    }
    for q, path in ggufs.items():
        chat = LlamaCppChatModel(path, n_threads=threads)  # as load_chat_model makes it for `tunelab generate`/`serve`
        llm = open_llama(path, n_ctx=chat.n_ctx, n_threads=threads, n_batch=chat.llm.n_batch)
        paths[tunelab_row(q)] = tunelab_gguf_path(chat, n_tokens)
        paths[raw_row(q)] = raw_llama_path(llm, input_ids[0].tolist(), n_tokens)
    return paths, input_ids[0].tolist(), bf16_choice


def pick_bf16(candidates: dict) -> tuple[object, str]:
    """The faster bf16 variant: one warm-up, then one timed generation each."""
    speed = {}
    for name, generate in candidates.items():
        generate()
        t = time.perf_counter()
        _, ids = generate()
        speed[name] = len(ids) / (time.perf_counter() - t)
    best = max(speed, key=speed.get)
    others = ", ".join(f"{name} {tps:.1f} tok/s" for name, tps in speed.items() if name != best)
    return candidates[best], f"{best} ({speed[best]:.1f} tok/s in one timed generation before the rounds; {others})"


# ---------------------------------------------------------------- measuring
def check_same_work(name: str, prompt_ids: list[int], new_ids: list[int], expected_prompt: list[int], n_tokens: int) -> None:
    if prompt_ids != expected_prompt:
        raise AssertionError(f"{name}: its prompt token ids differ from the others ({len(prompt_ids)} vs {len(expected_prompt)} ids)")
    if len(new_ids) != n_tokens:
        raise AssertionError(f"{name}: generated {len(new_ids)} new tokens, not {n_tokens}")


def measure(paths: dict, expected_prompt: list[int], n_tokens: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per path per round: one warm-up each, then interleaved rounds."""
    outputs = {}
    for name, generate in paths.items():
        print(f"== warm-up: {name}", flush=True)
        prompt_ids, outputs[name] = generate()
        check_same_work(name, prompt_ids, outputs[name], expected_prompt, n_tokens)
    for q in QUANTS:
        if outputs[tunelab_row(q)] != outputs[raw_row(q)]:
            raise AssertionError(f"GGUF {q}: tunelab's path and the raw loop generated different token ids from the same file")

    def timed(name: str, r: int) -> float:
        t = time.perf_counter()
        prompt_ids, new_ids = paths[name]()
        seconds = time.perf_counter() - t
        check_same_work(name, prompt_ids, new_ids, expected_prompt, n_tokens)
        return seconds

    return harness.rounds(paths, repeats, timed, say=lambda seconds: f"{n_tokens / seconds:.1f} tok/s")


def report(seconds: dict[str, list[float]], n_tokens: int) -> str:
    tps = {name: [n_tokens / s for s in times] for name, times in seconds.items()}

    def vs(name: str, base: str) -> str:
        return results.median_range([a / b for a, b in zip(tps[name], tps[base])], 2, "x")

    rows = [[k, n_tokens, results.median_range(seconds[k], 2), results.median_range(tps[k]), vs(k, FP32), vs(k, BF16)] for k in tps]
    header = ["path", "new tokens", "seconds", "tokens/s", "vs transformers fp32", "vs transformers bf16"]
    lines = [results.table(header, rows), ""]
    for q in QUANTS:
        ratio = statistics.median(a / b for a, b in zip(tps[tunelab_row(q)], tps[raw_row(q)]))
        verdict = "met" if ratio >= GOAL_VS_RAW else "NOT met"
        lines.append(
            f"- GGUF {q.upper()}: tunelab / raw loop = {vs(tunelab_row(q), raw_row(q))} (goal >= {GOAL_VS_RAW}x: {verdict}); "
            f"tunelab / transformers bf16 = {vs(tunelab_row(q), BF16)}; tunelab / transformers fp32 = {vs(tunelab_row(q), FP32)}"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = BENCH.parser(__doc__)
    ap.add_argument(
        "--run", type=Path, help="a trained run directory or model folder (default: a random-LoRA stand-in of the default model)"
    )
    ap.add_argument("--export-dir", type=Path, help="where the export is (or goes); default: RUN/export")
    ap.add_argument("--tokens", type=int, default=128, help="greedy new tokens per generation, on every path")
    ap.add_argument("--reexport", action="store_true", help="redo the export even if one is there")
    return BENCH.parse(ap, argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    idle = harness.check_idle(args)

    import torch

    from tunelab.models.llama_cpp import require_llama_cpp
    from tunelab.models.resolve import resolve_model
    from tunelab.paths import cache_dir

    require_llama_cpp()
    torch.set_num_threads(args.threads)
    if args.run:
        run, model_desc = args.run, f"`{args.run}`"
    else:
        run = random_lora_run(cache_dir() / "bench" / "smollm2-random-lora", resolve_model("smollm2-135m-instruct").path)
        model_desc = "SmolLM2-135M-Instruct + random LoRA (r=16, all linear, B×0.05; a stand-in for a fine-tuned model), merged"
    merged, ggufs = exported(run, args.export_dir or run / "export", args.threads, args.reexport)
    paths, prompt_ids, bf16_choice = build_paths(merged, ggufs, args.tokens, args.threads)
    seconds = measure(paths, prompt_ids, args.tokens, args.repeats)
    intro = (
        f"Model: {model_desc}. {args.threads} threads, batch 1, greedy, exactly {args.tokens} new tokens after the same "
        f"{len(prompt_ids)} prompt token ids on every path (asserted each round, as is the count; the two llama.cpp paths "
        f"also produced the same ids), {args.repeats} interleaved round(s) after a warm-up each; median (min–max) over the "
        f"rounds, ratios per round. Transformers bf16: {bf16_choice}. Transformers int8: quantize_dynamic of every nn.Linear "
        f"(int8 weights, fp32 activations). Raw loop: llama_cpp.Llama.generate on the same file, context, threads and batch."
    )
    harness.write_section(args, TITLE, intro + "\n\n" + report(seconds, args.tokens), idle)


if __name__ == "__main__":
    main()
