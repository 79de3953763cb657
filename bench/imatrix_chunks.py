"""Which importance-matrix chunk size brings Q4_K_M closest to fp32? Chosen on dev prompts, checked on the bench's.

    python bench/imatrix_chunks.py [--sizes 1024 512 256 128] [--tokens 65536] [--workdir /tmp/imatrix-chunks] [--results FILE]

How `export.imatrix.chunk_tokens`'s default was chosen (issue 28). SmolLM2-135M-Instruct is converted
to an f16 GGUF, and for each chunk size an importance matrix is computed by llama.cpp's llama-imatrix
on the same `--tokens` tokens of ../shared/data/alpaca_en_demo.json (training data, chat template
applied; `--tokens / size` chunks), then applied by llama-quantize to make a Q4_K_M. Each file scores
the reference answers of two disjoint sets of 64 AlpacaEval prompts, teacher-forced on PyTorch's
token ids exactly as bench/export_quality.py scores them (Δ perplexity against the fp32 PyTorch
model, geometric mean over prompts, 95% paired bootstrap interval):

- dev: records 6, 18, 31, ... (every 805/64th, offset by 6): the size is chosen on these;
- test: records 0, 12, 25, ...: bench/export_quality.py's held-out prompts, reported, not chosen on.

Perplexities are deterministic, so one pass; the table is this CPU's section of bench/RESULTS.md (the
figures are quoted in docs/export.md). Plain Q4_K_M (no matrix) is the first row.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for `python bench/imatrix_chunks.py`
from bench import harness, results  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROMPTS = 64
OFFSETS = {"dev": 6, "test": 0}  # where each set's evenly spaced records start; test is export_quality.py's set
TITLE = "Importance-matrix chunk sizes (bench/imatrix_chunks.py)"
BENCH = harness.Bench(__file__, threads=None, repeats=None)  # llama.cpp's tools on 2 threads; deterministic: one pass


def prompt_sets() -> dict[str, tuple[list[list[dict]], list[str]]]:
    """The dev and test prompts with their reference answers, picked as bench/export_quality.py picks its own."""
    from bench.export_quality import alpaca_eval_prompts

    sets = {name: alpaca_eval_prompts(PROMPTS, offset)[:2] for name, offset in OFFSETS.items()}
    dev, test = ({c[0]["content"] for c in sets[name][0]} for name in ("dev", "test"))
    assert not dev & test, "the dev and test prompts overlap"
    return sets


def delta(reference: list[float], quantized: list[float]) -> str:
    """Δ perplexity with its interval, as bench/export_quality.py computes and prints it."""
    from bench.export_quality import interval, perplexity_delta

    return interval(perplexity_delta(reference, quantized), 2, "%")


def parse_args(argv=None):
    parser = BENCH.parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 512, 256, 128], help="tokens per chunk to compare")
    parser.add_argument("--tokens", type=int, default=65_536, help="calibration tokens for every size")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imatrix-chunks"))
    return BENCH.parse(parser, argv)


def section(args, rows: list[list[str]]) -> str:
    header = ["file", "chunks × tokens", "Δ perplexity, dev prompts [95% CI]", "Δ perplexity, test prompts [95% CI]"]
    lines = [
        f"- model: {MODEL}, f16 GGUF quantized to Q4_K_M by llama-quantize, with each matrix from llama-imatrix on the same "
        f"{args.tokens:,} tokens of alpaca_en_demo.json (chat template applied) cut into chunks of each size",
        f"- scored: Δ perplexity of {PROMPTS} AlpacaEval reference answers against the fp32 PyTorch model (geometric mean over "
        "prompts, 95% paired bootstrap interval), teacher-forced as bench/export_quality.py scores them; dev prompts choose, "
        "test prompts (export_quality.py's) check",
        "",
        results.table(header, rows),
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    idle = harness.check_idle(args)

    from tunelab.config import ImatrixConfig
    from tunelab.evaluate.likelihood import answer_pair, perplexities
    from tunelab.export.imatrix import write_calibration
    from tunelab.export.llama_cpp import compute_imatrix, convert_hf_to_gguf, quantize_gguf, quantize_with_imatrix
    from tunelab.export.merge import load_pytorch_model
    from tunelab.models.hf_chat import HFChatModel
    from tunelab.models.llama_cpp import LlamaCppChatModel
    from tunelab.models.load import set_threads
    from tunelab.models.resolve import resolve_model
    from tunelab.paths import shared_data_dir
    from tunelab.runs import ExportDir

    set_threads(2)
    data, work = shared_data_dir(), args.workdir
    work.mkdir(parents=True, exist_ok=True)
    sets = prompt_sets()
    model_dir = resolve_model(MODEL).path
    model, tokenizer, _ = load_pytorch_model(model_dir)
    chat = HFChatModel(model, tokenizer, "pytorch")
    reference = {name: perplexities(chat, convs, refs)[0] for name, (convs, refs) in sets.items()}
    pairs = {name: [answer_pair(tokenizer, c, r) for c, r in zip(*sets[name])] for name in sets}

    def score(gguf: Path) -> dict[str, str]:
        llm = LlamaCppChatModel(gguf, n_threads=2)
        return {name: delta(reference[name], [math.exp(-lp / n) for lp, n in llm.loglikelihood(pairs[name], 8)]) for name in sets}

    base = ExportDir(work / "no-matrix")  # one export folder per matrix, named as tunelab's exports name them
    f16 = base.gguf_file(MODEL, "f16")
    if not f16.exists():
        base.gguf.mkdir(parents=True, exist_ok=True)
        convert_hf_to_gguf(model_dir, f16)
    plain = quantize_gguf(f16, base.gguf_file(MODEL, "q4_k_m"), "q4_k_m")
    rows = [["Q4_K_M, no matrix", "-", *score(plain).values()]]
    print(rows[-1], flush=True)
    source = data / "alpaca_en_demo.json"
    for size in args.sizes:
        config = ImatrixConfig(calibration=str(source), chunks=args.tokens // size, chunk_tokens=size)
        stage = ExportDir(work / f"chunks-{size}")
        stage.imatrix.mkdir(parents=True, exist_ok=True)
        text = stage.calibration_text
        write_calibration(source, config, tokenizer, text)
        body = text.read_text(encoding="utf-8")
        assert not any(c[0]["content"].strip() in body for convs, _ in sets.values() for c in convs), (
            "a scored prompt is in the calibration text"
        )
        matrix = compute_imatrix(f16, text, stage.imatrix_file, chunks=config.chunks, chunk_tokens=size, threads=2)
        quantized = quantize_with_imatrix(f16, stage.gguf_file(MODEL, "q4_k_m_imat"), "q4_k_m", stage.imatrix_file, threads=2)
        rows.append([f"Q4_K_M, matrix from chunks of {size}", f"{matrix['chunks']} × {size}", *score(quantized).values()])
        print(rows[-1], flush=True)
    harness.write_section(args, TITLE, section(args, rows), idle)


if __name__ == "__main__":
    main()
