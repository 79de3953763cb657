"""Export quality: does a GGUF answer and score like the PyTorch model it came from, with intervals?

    python bench/export_quality.py [--run runs/NAME] [--prompts 64] [--tokens 64] [--threads 2] [--workdir DIR] [--formats ...]
    python bench/export_quality.py --smoke --results /tmp/export-quality-smoke.md   # 4 prompts, 8 tokens: checks the bench runs

The model is SmolLM2-135M-Instruct (`smollm2-135m-instruct`) or `--run` (a run directory or any
model tunelab resolves). It is exported once with `tunelab export` (every GGUF of the merged model:
f16, Q8_0, Q4_K_M and the importance-matrix formats Q4_K_M, Q4_K_S, IQ4_XS, Q3_K_M `_imat`, or
`--formats`; no faithfulness check) into `--workdir`, and reused from there on later invocations. f16
is the control: it separates llama.cpp's conversion from quantization error.

Calibration of the importance matrix (llama.cpp's llama-imatrix, `--imatrix-chunks` chunks of
tunelab's default `export.imatrix.chunk_tokens`): training data, never the held-out prompts. With a
`--run` that has a training split, that split (`export.imatrix.calibration: train`, as `tunelab
export` does); otherwise
../shared/data/alpaca_en_demo.json, the Alpaca instruction data the demo trains on, rendered with the
model's chat template. The held-out prompts (AlpacaEval's, or the run's test split) are another
dataset; before scoring, the bench checks that none of them appears in the calibration text and
stops if one does.

Held-out prompts with reference answers: the run's data/test.jsonl with --run, else `--prompts`
evenly spaced questions of ../shared/data/alpaca_eval_gpt4_reference.json. On every prompt, the
PyTorch model (fp32, an adapter merged as `tunelab eval` scores it) and each GGUF (its own chat
template and tokenizer) answer greedily with `--tokens` new tokens (tunelab.export.faithfulness),
and score the reference answer teacher-forced: answer tokens only, chat template applied
(tunelab.evaluate.likelihood.perplexities, through llama.cpp's logits for a GGUF). Then per format:

- token agreement over all generated tokens, prompts equal, prompt and scoring token ids equal;
- BLEU (sentence), ROUGE-L, BERTScore P/R/F1 of both answer sets against the references
  (tunelab.evaluate.metrics.score_predictions, fp32 encoder), and the GGUF − PyTorch delta with a
  95% paired bootstrap interval and p-value (tunelab.evaluate.run.differences, as `tunelab eval`);
- Δperplexity: the geometric mean over prompts of GGUF / PyTorch per-answer perplexity − 1, its
  interval from a paired bootstrap of the per-prompt log perplexities; corpus perplexities beside.

Goals (issue 12): Q8_0 |ΔBERTScore-F1| <= 0.005 and Δperplexity <= 1%; Q4_K_M <= 0.02 and <= 5%;
(issue 28) Q4_K_M with an importance matrix <= 0.02 and <= 3%.
The figures are deterministic (greedy decoding, fixed threads), so one pass is recorded. The
section replaces its own in bench/RESULTS.md (bench/results.py); per-prompt figures go to
WORKDIR/NAME/export_quality.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/export_quality.py`
from bench import harness, results  # noqa: E402

# tunelab after the path above; importing it (torch, transformers, bert-score) raises the load average little, so check_idle still reads it
from tunelab.config import IMATRIX_FORMATS, MERGED_GGUF_FORMATS, TRAINING_SPLIT, EvalConfig, ExportConfig, ImatrixConfig  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.evaluate.likelihood import answer_pair, perplexities  # noqa: E402
from tunelab.evaluate.metric_facts import label  # noqa: E402
from tunelab.evaluate.metrics import score_predictions  # noqa: E402
from tunelab.evaluate.run import SEED, differences  # noqa: E402
from tunelab.evaluate.stats import paired_bootstrap  # noqa: E402
from tunelab.export.faithfulness import check_prompts, compare_tokens, gguf_greedy, hf_greedy  # noqa: E402
from tunelab.export.merge import load_pytorch_model, merged_model  # noqa: E402
from tunelab.export.run import export_run, locate  # noqa: E402
from tunelab.io import atomic_write_json  # noqa: E402
from tunelab.models.hf_chat import HFChatModel  # noqa: E402
from tunelab.models.llama_cpp import LlamaCppChatModel, gguf_metadata, require_llama_cpp  # noqa: E402
from tunelab.models.load import set_threads  # noqa: E402
from tunelab.paths import cache_dir, shared_data_dir  # noqa: E402
from tunelab.runs import ExportDir, RunDir  # noqa: E402

TITLE = "Export quality (bench/export_quality.py)"
BENCH = harness.Bench(__file__, smoke={"prompts": 4, "tokens": 8, "imatrix_chunks": 4}, repeats=None)  # deterministic: one pass
DEFAULT_MODEL = "smollm2-135m-instruct"
FORMATS = MERGED_GGUF_FORMATS  # every GGUF of the merged model tunelab exports
ALPACA_EVAL = "alpaca_eval_gpt4_reference.json"
CALIBRATION = "alpaca_en_demo.json"  # training data for a model that is not a run (see the docstring)
TEXT_METRICS = ["bleu", "rougeL", "bertscore"]
# format: (largest |Δ BERTScore F1|, largest Δ perplexity in %); f16 is the control, without a goal
GOALS = {"gguf-q8_0": (0.005, 1.0), "gguf-q4_k_m": (0.02, 5.0), "gguf-q4_k_m_imat": (0.02, 3.0)}


# ---------------------------------------------------------------- model, export, prompts
def exported(model_ref: str, out: Path, formats: list[str], imatrix: ImatrixConfig | None, threads: int, redo: bool) -> dict[str, Path]:
    """The GGUF file of each format, exported once into `out` (no faithfulness check: this bench is the check);
    exported again when the importance matrix's settings differ from those recorded beside it."""
    settings = out.parent / "imatrix-settings.json"
    wanted = imatrix.model_dump() if imatrix else None

    def found() -> dict[str, Path]:
        by_quant = ExportDir(out).ggufs_by_quant()
        return {f: by_quant[q] for f in formats if (q := f.removeprefix("gguf-")) in by_quant}

    recorded = json.loads(settings.read_text()) if settings.is_file() else None
    if redo or len(found()) < len(formats) or (imatrix and recorded != wanted):
        print(f"== exporting {model_ref} to {out} ({', '.join(formats)})", flush=True)
        config = ExportConfig(formats=formats, **({"imatrix": imatrix} if imatrix else {}))
        export_run(model_ref, formats, out=out, check=False, config=config, threads=threads)
        atomic_write_json(settings, wanted)
    else:
        print(f"== reusing the export in {out} (--reexport to redo it)", flush=True)
    return found()


def calibration(run_root: Path | None, chunks: int) -> ImatrixConfig:
    """The importance matrix's training text: the run's training split, else the demo's Alpaca data."""
    if run_root is not None and RunDir(run_root).split("train").is_file():
        return ImatrixConfig(chunks=chunks)
    data = shared_data_dir()
    if data is None or not (data / CALIBRATION).is_file():
        raise TunelabError(f"no calibration text for the importance matrix: {CALIBRATION} is not in the shared data folder")
    return ImatrixConfig(calibration=str(data / CALIBRATION), chunks=chunks)


def check_disjoint(calibration_text: Path, convs: list[list[dict]]) -> None:
    """Stop if a held-out prompt appears in the text the importance matrix was computed on."""
    if not calibration_text.is_file():
        return  # no importance-matrix format in this export
    text = calibration_text.read_text(encoding="utf-8")
    leaked = [i for i, conv in enumerate(convs) if any(m["content"].strip() in text for m in conv if m["role"] == "user")]
    if leaked:
        raise TunelabError(f"{calibration_text}: held-out prompts {leaked} appear in the calibration text; it must be training data only")


def alpaca_eval_prompts(n: int, offset: int = 0) -> tuple[list[list[dict]], list[str], str]:
    """`n` evenly spaced AlpacaEval questions (every subset, not just the first) and their GPT-4 answers; `offset`
    shifts every pick by that many records (bench/imatrix_chunks.py's dev prompts, disjoint from these)."""

    data = shared_data_dir()
    path = data / ALPACA_EVAL if data else None
    if path is None or not path.is_file():
        raise TunelabError(
            f"no held-out prompts: {ALPACA_EVAL} is not in the shared data folder, and no --run with data/test.jsonl was given"
        )
    rows = json.loads(path.read_text(encoding="utf-8"))
    spaced = {i * len(rows) // n for i in range(min(n, len(rows)))}
    picked = sorted(j + offset for j in spaced if j + offset < len(rows))
    convs, refs = [], []
    for i in picked:
        for field in ("instruction", "output"):
            if not isinstance(rows[i].get(field), str) or not rows[i][field].strip():
                raise TunelabError(f"{path}: record {i}: field '{field}' is missing or empty")
        convs.append([{"role": "user", "content": rows[i]["instruction"]}])
        refs.append(rows[i]["output"])
    return convs, refs, f"{path.name} (records {picked[0]}…{picked[-1]}, every {len(rows) // max(len(picked), 1)}th)"


def held_out(run_root: Path | None, n: int) -> tuple[list[list[dict]], list[str], str]:
    """(conversations, reference answers, source): the run's test split when it has one, else AlpacaEval."""

    if run_root is not None and RunDir(run_root).split("test").is_file():
        convs, refs, source = check_prompts(run_root, n)
        if refs:
            return convs, refs, source
    return alpaca_eval_prompts(n)


# ---------------------------------------------------------------- one model's answers and perplexities
def answer_and_score(chat, generate, convs: list[list[dict]], refs: list[str]) -> dict:
    """Greedy generations (by `generate`), per-answer perplexity of the references, the scoring pairs, seconds."""

    start = time.perf_counter()
    gens = generate(convs)
    gen_s = time.perf_counter() - start
    ppl, corpus = perplexities(chat, convs, refs)
    return {
        "generations": gens,
        "perplexity": ppl,
        "corpus_perplexity": corpus,
        "pairs": [answer_pair(chat.tokenizer, c, r) for c, r in zip(convs, refs)],
        "tokens_per_second": sum(len(g.ids) for g in gens) / max(gen_s, 1e-9),
        "seconds": time.perf_counter() - start,
    }


def pytorch_side(model_dir: Path, convs, refs, tokens: int) -> dict:
    """The reference: the fp32 PyTorch model (adapter merged), greedy answers and reference perplexities."""

    model, tokenizer, _ = load_pytorch_model(model_dir)
    chat = HFChatModel(merged_model(model), tokenizer, "pytorch")
    return answer_and_score(chat, lambda c: hf_greedy(chat.model, tokenizer, c, tokens), convs, refs)


def gguf_side(path: Path, convs, refs, tokens: int, threads: int, reference_pairs: list) -> dict:
    """One GGUF through llama.cpp: greedy answers and reference perplexities from its own template and tokenizer,
    and the perplexities of PyTorch's own token ids (`reference_pairs`): the same tokens, so only the weights differ."""

    chat = LlamaCppChatModel(path, n_threads=threads)
    out = answer_and_score(chat, lambda c: gguf_greedy(chat, c, tokens), convs, refs)
    out["perplexity_same_ids"] = [math.exp(-lp / n) for lp, n in chat.loglikelihood(reference_pairs, 8)]
    out["bytes"] = path.stat().st_size
    return out


# ---------------------------------------------------------------- comparing
def text_scores(answers: list[str], refs: list[str]) -> dict[str, list[float]]:

    return score_predictions(answers, refs, TEXT_METRICS, bertscore_bf16=False)["per_example"]


def perplexity_delta(pytorch: list[float], gguf: list[float]) -> dict:
    """Δ% of the geometric-mean perplexity ratio, from a paired bootstrap of per-prompt log perplexities."""

    logs = [[math.log(p) for p in side] for side in (pytorch, gguf)]
    d = paired_bootstrap(*logs, n=EvalConfig().bootstrap_samples, seed=SEED)  # the resamples `tunelab eval` uses
    pct = {k: 100 * math.expm1(d[k]) for k in ("diff", "low", "high")}
    return {**pct, "p_value": d["p_value"]}


def compare(fmt: str, ref: dict, gguf: dict, ref_scores: dict, refs: list[str], tokens: int) -> dict:
    """Everything the tables need about one format against the PyTorch model."""

    scores = text_scores([g.text for g in gguf["generations"]], refs)
    return {
        "bytes": gguf["bytes"],
        "tokens": compare_tokens(fmt, ref["generations"], gguf["generations"], tokens),
        "pairs_equal": sum(a == b for a, b in zip(ref["pairs"], gguf["pairs"])),
        "scores": scores,
        "deltas": differences(ref_scores, scores, EvalConfig()),
        "perplexity": gguf["perplexity"],
        "corpus_perplexity": gguf["corpus_perplexity"],
        "perplexity_delta": perplexity_delta(ref["perplexity"], gguf["perplexity"]),
        "perplexity_delta_same_ids": perplexity_delta(ref["perplexity"], gguf["perplexity_same_ids"]),
        "tokens_per_second": gguf["tokens_per_second"],
        "seconds": gguf["seconds"],
    }


# ---------------------------------------------------------------- the section
def interval(d: dict, digits: int = 4, unit: str = "") -> str:
    return f"{d['diff']:+.{digits}f}{unit} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def goal_line(fmt: str, what: str, met: bool, goal: str, inside: bool) -> str:
    verdict = "met" if met else "NOT met"
    return f"- {fmt.upper()}: {what}; goal {goal}: **{verdict}** (95% interval inside the goal: {'yes' if inside else 'no'})"


def goal_lines(by_format: dict) -> list[str]:
    """Met / not met for each goal, on the point estimate, and whether the whole interval lies inside it."""
    lines = []
    for fmt, (max_bert, max_ppl) in GOALS.items():
        if fmt not in by_format:
            continue
        bert, ppl = by_format[fmt]["deltas"]["bertscore_f1"], by_format[fmt]["perplexity_delta_same_ids"]
        bert_inside = max(abs(bert["low"]), abs(bert["high"])) <= max_bert
        lines.append(goal_line(fmt, f"Δ BERTScore F1 {interval(bert)}", abs(bert["diff"]) <= max_bert, f"|Δ| <= {max_bert}", bert_inside))
        lines.append(
            goal_line(
                fmt,
                f"Δ perplexity on PyTorch's token ids {interval(ppl, 2, '%')}",
                ppl["diff"] <= max_ppl,
                f"<= {max_ppl:g}%",
                ppl["high"] <= max_ppl,
            )
        )
    return lines


SUMMARY_HEADER = ["format", "file", "prompts equal", "token agreement", "prompt ids equal", "scoring ids equal", "perplexity (corpus)"]


def summary_table(ref: dict, by_format: dict, n: int) -> str:
    header = [*SUMMARY_HEADER, "Δ perplexity, PyTorch's token ids [95% CI]", "Δ perplexity, its own tokenizer [95% CI]", "tokens/s"]
    rows = [["PyTorch fp32", "-", "-", "-", "-", "-", f"{ref['corpus_perplexity']:.3f}", "-", "-", f"{ref['tokens_per_second']:.1f}"]]
    for fmt, r in by_format.items():
        t, same, own = r["tokens"], r["perplexity_delta_same_ids"], r["perplexity_delta"]
        ids_equal = "yes" if t["prompt_tokens_equal"] else "**no**"
        row = [fmt, f"{r['bytes'] / 2**20:.0f} MiB", f"{t['prompts_equal']}/{n}", f"{t['agreement']:.1%}", ids_equal]
        row += [f"{r['pairs_equal']}/{n}", f"{r['corpus_perplexity']:.3f}", interval(same, 2, "%"), interval(own, 2, "%")]
        rows.append([*row, f"{r['tokens_per_second']:.1f}"])
    return results.table(header, rows)


def metrics_table(ref_scores: dict, by_format: dict) -> str:

    rows = []
    for fmt, r in by_format.items():
        for key, d in r["deltas"].items():
            mean = sum(r["scores"][key]) / len(r["scores"][key])
            base = sum(ref_scores[key]) / len(ref_scores[key])
            rows.append([fmt, label(key), f"{base:.4f}", f"{mean:.4f}", interval(d), f"{d['p_value']:.3f}"])
    return results.table(["format", "metric", "PyTorch", "GGUF", "Δ GGUF − PyTorch [95% CI]", "p"], rows)


def imatrix_note(export: ExportDir, imatrix: ImatrixConfig | None) -> str:
    """What the `_imat` formats' importance matrix was computed on, as llama-imatrix recorded it."""
    if imatrix is None:
        return ""
    meta = gguf_metadata(export.imatrix_file)
    count, size = meta["imatrix.chunk_count"], meta["imatrix.chunk_size"]
    source = "the run's training split" if imatrix.calibration == TRAINING_SPLIT else f"{Path(imatrix.calibration).name} (training data)"
    return (
        f"Importance matrix of the `_imat` formats: llama.cpp's llama-imatrix on {count * size:,} tokens ({count} chunks of {size}) "
        f"of {source}, rendered with the chat template; none of the held-out prompts is in that text (checked).\n\n"
    )


def report(model_desc: str, source: str, args, ref: dict, by_format: dict, ref_scores: dict, seconds: dict, note: str = "") -> str:
    n = len(ref["perplexity"])
    intro = (
        f"Model: {model_desc}, exported with `tunelab export` to {', '.join(by_format)}. {n} held-out prompts from {source}; "
        f"greedy, up to {args.tokens} new tokens, {args.threads} threads. PyTorch: fp32 (an adapter merged). Perplexity: of the "
        f"reference answers, teacher-forced, answer tokens only, chat template applied (llama.cpp logits for the GGUFs), once on "
        f"the token ids PyTorch's tokenizer gives (only the weights differ: the goal) and once as each GGUF tokenizes the text itself "
        f"(what `tunelab eval` of a GGUF sees; 'scoring ids equal' counts where the two agree); Δ is the "
        f"geometric mean over prompts of the GGUF / PyTorch ratio − 1. Token agreement: the mean share of each PyTorch "
        f"answer's tokens (an end of turn counts) that the GGUF reproduces before it diverges. Intervals: 95% paired "
        f"bootstrap over prompts (as `tunelab eval`). One pass: greedy decoding and teacher-forced scoring are deterministic, so there are no "
        f"repeats to take a median over. Time: export {seconds['export']:.0f} s (0 when reused), PyTorch {seconds['pytorch']:.0f} s, "
        f"GGUFs {seconds['gguf']:.0f} s, scoring {seconds['scoring']:.0f} s.\n\n"
    )
    intro += note
    if n < 64:
        intro += f"**{n} prompts: fewer than the 64 the goals are stated for.**\n\n"
    parts = [summary_table(ref, by_format, n), metrics_table(ref_scores, by_format), "\n".join(goal_lines(by_format))]
    return intro + "\n\n".join(parts)


# ---------------------------------------------------------------- running it
def parse_args(argv=None) -> argparse.Namespace:
    ap = BENCH.parser(__doc__)
    ap.add_argument("--run", help=f"a run directory or any model tunelab resolves (default: {DEFAULT_MODEL})")
    ap.add_argument("--prompts", type=int, default=64, help="held-out prompts with reference answers")
    ap.add_argument("--tokens", type=int, default=64, help="greedy new tokens per answer")
    ap.add_argument("--workdir", type=Path, help="where the export is kept between invocations (default: tunelab's cache)")
    ap.add_argument("--reexport", action="store_true", help="redo the export even if one is there")
    ap.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="the GGUF formats to export and score")
    ap.add_argument(
        "--imatrix-chunks",
        type=int,
        default=ImatrixConfig().chunks,
        help=f"chunks of {ImatrixConfig().chunk_tokens} calibration tokens for the importance matrix (tunelab's default)",
    )
    return BENCH.parse(ap, argv)


def write_details(path: Path, source: str, convs, refs, ref: dict, ref_scores: dict, sides: dict, by_format: dict) -> None:
    """Per-prompt answers and figures, for reading a divergence or an outlier behind the table."""

    pytorch = {"answers": [g.text for g in ref["generations"]], "perplexity": ref["perplexity"], "scores": ref_scores}
    formats = {f: {**r, "answers": [g.text for g in sides[f]["generations"]]} for f, r in by_format.items()}
    atomic_write_json(path, {"prompt_source": source, "prompts": convs, "references": refs, "pytorch": pytorch, "formats": formats})


def main(argv=None) -> None:
    args = parse_args(argv)
    idle = harness.check_idle(args)

    require_llama_cpp()
    set_threads(args.threads)
    model_ref = args.run or DEFAULT_MODEL
    model_dir, run_root, name = locate(model_ref)
    work = (args.workdir or cache_dir() / "bench" / "export-quality") / name
    convs, refs, source = held_out(run_root, args.prompts)
    seconds = {}

    start = time.perf_counter()
    formats = list(dict.fromkeys(args.formats))
    imatrix = calibration(run_root, args.imatrix_chunks) if set(formats) & set(IMATRIX_FORMATS) else None
    files = exported(model_ref, work / "export", formats, imatrix, args.threads, args.reexport)
    seconds["export"] = time.perf_counter() - start
    check_disjoint(ExportDir(work / "export").calibration_text, convs)
    print(f"== PyTorch: {len(convs)} prompts, {args.tokens} tokens", flush=True)
    ref = pytorch_side(model_dir, convs, refs, args.tokens)
    gc.collect()  # the PyTorch model goes before llama.cpp loads
    seconds["pytorch"] = ref["seconds"]
    sides = {}
    for fmt, path in files.items():
        print(f"== {fmt}: {path.name}", flush=True)
        sides[fmt] = gguf_side(path, convs, refs, args.tokens, args.threads, ref["pairs"])
        gc.collect()  # one llama.cpp model (and its scoring context) at a time
    seconds["gguf"] = sum(s["seconds"] for s in sides.values())

    start = time.perf_counter()
    ref_scores = text_scores([g.text for g in ref["generations"]], refs)
    by_format = {fmt: compare(fmt, ref, side, ref_scores, refs, args.tokens) for fmt, side in sides.items()}
    seconds["scoring"] = time.perf_counter() - start

    desc = f"`{model_ref}`" if args.run else "SmolLM2-135M-Instruct (`smollm2-135m-instruct`)"
    body = report(desc, source, args, ref, by_format, ref_scores, seconds, imatrix_note(ExportDir(work / "export"), imatrix))
    write_details(work / "export_quality.json", source, convs, refs, ref, ref_scores, sides, by_format)
    harness.write_section(args, TITLE, body, idle)
    print(f"per-prompt figures: {work / 'export_quality.json'}")


if __name__ == "__main__":
    main()
