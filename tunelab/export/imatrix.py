"""The calibration text of the importance-matrix formats (`gguf-<type>_imat`), and the matrix itself.

llama.cpp's importance matrix weighs each weight by how strongly the model's activations use it on some
text, so that quantization spends its precision where it matters. tunelab calibrates on the text the
model was fine-tuned for: the run's training split (`export.imatrix.calibration: train`, the default),
each conversation rendered with the model's chat template exactly as training saw it (the data stage's
renderer), special tokens included. Never the test split: the faithfulness check and `tunelab eval`
score on it, and a matrix tuned to the scored prompts would flatter them.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import TRAINING_SPLIT, ImatrixConfig
from tunelab.data.loaders import load_examples
from tunelab.data.render import conversation_text
from tunelab.errors import TunelabError
from tunelab.export.llama_cpp import compute_imatrix
from tunelab.io import atomic_write_text
from tunelab.runs import ExportDir, RunDir


def calibration_file(run: RunDir | None, config: ImatrixConfig) -> Path:
    """The data file the calibration text comes from: the run's training split, or the file
    `export.imatrix.calibration` names. Checked before any heavy work."""
    if config.calibration == TRAINING_SPLIT:
        split = run.split(TRAINING_SPLIT) if run is not None else None
        if split is None or not split.is_file():
            where = f"{split} does not exist" if split is not None else "this export is not of a run (it has no training split)"
            raise TunelabError(
                f"the importance-matrix formats calibrate on the run's training split by default, and {where}: "
                f"set export.imatrix.calibration to a data file of training conversations"
            )
        return split
    path = Path(config.calibration)
    if not path.exists():
        raise TunelabError(f"export.imatrix.calibration: {path} does not exist")
    return path


def write_calibration(source: Path, config: ImatrixConfig, tokenizer, out: Path) -> dict:
    """Render the conversations of `source` in order with the chat template into the text file `out`, until
    there are enough tokens for `config.chunks` chunks and one more (llama.cpp's tokenizer may count a few
    fewer than the model's own); returns the source, conversations and tokens used."""
    wanted = (config.chunks + 1) * config.chunk_tokens
    texts, tokens = [], 0
    for example in load_examples(source, strict=True):
        text = conversation_text(tokenizer, example["messages"])
        texts.append(text)
        tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens >= wanted:
            break
    if tokens < 2 * config.chunk_tokens:  # llama-imatrix's own minimum
        raise TunelabError(
            f"{source}: {len(texts)} conversations render to {tokens} tokens, and llama-imatrix needs at least two chunks of "
            f"export.imatrix.chunk_tokens ({config.chunk_tokens}), {2 * config.chunk_tokens} tokens: lower export.imatrix.chunk_tokens "
            f"or calibrate on more text (export.imatrix.calibration)"
        )
    atomic_write_text(out, "".join(texts))
    return {"source": str(source), "conversations": len(texts), "text_tokens": tokens}


def make_imatrix(f16: Path, source: Path, config: ImatrixConfig, tokenizer, stage: ExportDir, threads: int) -> dict:
    """Write the calibration text and llama.cpp's importance matrix of `f16` into `stage`'s imatrix/ folder;
    returns how it was made (source, conversations, chunks, tokens), for the report and the model card."""
    stage.imatrix.mkdir(parents=True, exist_ok=True)
    made = write_calibration(source, config, tokenizer, stage.calibration_text)
    made |= compute_imatrix(
        f16,
        stage.calibration_text,
        stage.imatrix_file,
        chunks=config.chunks,
        chunk_tokens=config.chunk_tokens,
        threads=threads,
        log_file=stage.imatrix_log,
    )
    made["training_split"] = config.calibration == TRAINING_SPLIT
    return made
