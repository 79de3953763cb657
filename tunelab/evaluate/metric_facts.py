"""What each metric is: its label, which direction is better, its scale, and the one rule for a
real change. Every table, plot, verdict and report reads these facts from here.

Scores are stored on each library's own scale: BLEU and chrF 0-100 (sacrebleu), ROUGE-L,
BERTScore and accuracies 0-1, perplexity in its own unit. Reports that put several metrics
side by side show the 0-1 ones as points out of 100 (`display_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass

# A difference is real when its paired 95% interval excludes zero and its two-sided
# p-value is below ALPHA: the same rule in `tunelab eval`, `tunelab compare` and the report.
ALPHA = 0.05
CONFIDENCE = 0.95  # of every interval tunelab reports: bootstrap (stats.py) and Wilson (human.py)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool = True
    fraction: bool = True  # a 0-1 score (shown as points out of 100 beside BLEU/chrF)
    description: str = ""
    for_choosing: bool = False  # scored on a dev split that settings are chosen on: shown, never a report's finding


METRICS: dict[str, Metric] = {
    m.key: m
    for m in [
        Metric("bleu", "BLEU", fraction=False, description="sacrebleu BLEU, 0-100 (sentence BLEU per example, corpus BLEU overall)"),
        Metric("chrf", "chrF", fraction=False, description="sacrebleu chrF (character n-gram F-score), 0-100"),
        Metric("rougeL", "ROUGE-L F1", description="rouge-score ROUGE-L F1 with stemming, 0-1"),
        Metric("bertscore_precision", "BERTScore P"),
        Metric("bertscore_recall", "BERTScore R"),
        Metric("bertscore_f1", "BERTScore F1", description="bert-score F1 without baseline rescaling, 0-1"),
        Metric("perplexity", "perplexity", higher_is_better=False, fraction=False, description="of the reference answers"),
        Metric("exact_match", "exact match"),
        Metric("contains", "contains answer"),
        Metric("keywords", "keywords kept"),
        Metric("gsm8k", "GSM8K accuracy"),
        Metric("multiple_choice", "MC accuracy"),
        Metric("acc", "accuracy", description="lm-evaluation-harness acc: the choice with the highest log-likelihood"),
        Metric("acc_norm", "accuracy (length-normalised)", description="lm-evaluation-harness acc_norm: log-likelihood per character"),
        Metric(
            "preference_accuracy",
            "preference accuracy",
            description="share of held-out pairs whose chosen answer is more likely than the rejected one (summed log-likelihood), 0-1",
        ),
        Metric(
            "preference_accuracy_per_token",
            "preference accuracy (per token)",
            description="the same on the mean log-probability per answer token, 0-1",
        ),
        Metric(
            "logp_margin",
            "log-likelihood margin",
            fraction=False,
            description="log p(chosen) − log p(rejected) of a held-out pair, in nats",
        ),
        Metric(
            "reward_margin",
            "reward margin",
            fraction=False,
            description="implicit DPO reward of the chosen minus the rejected answer against a reference model (β × the change in log-likelihood margin)",
        ),
        Metric("reward_accuracy", "reward accuracy", description="share of held-out pairs with a positive implicit DPO reward margin, 0-1"),
        Metric("pass@1", "pass@1", description="share of code problems whose program passes its unit tests (greedy), 0-1"),
        Metric(
            "pass@1_dev",
            "pass@1 (dev half)",
            description="pass@1 on the dev half of the problem file: where settings are chosen",
            for_choosing=True,
        ),
        Metric("pass@1_test", "pass@1 (test half)", description="pass@1 on the test half of the problem file: what is reported"),
        Metric("eval_loss", "validation loss", higher_is_better=False, fraction=False),
        Metric("loss", "training loss", higher_is_better=False, fraction=False),
    ]
}


def benchmark_metric(benchmark: str, key: str) -> str:
    """The key of a benchmark's metric beside a sweep's held-out metrics: `arc-easy.acc`."""
    return f"{benchmark}.{key}"


def split_benchmark_metric(key: str) -> tuple[str, str] | None:
    """(benchmark, metric) of a key `benchmark_metric` made; None for any other key."""
    benchmark, dot, inner = key.rpartition(".")
    return (benchmark, inner) if dot and benchmark and inner in METRICS else None


def metric(key: str) -> Metric:
    """The facts of a metric (a benchmark's, `arc-easy.acc`, are its metric's, labelled with the benchmark);
    an unknown key is a 0-1, higher-is-better score labelled by its key."""
    if key in METRICS:
        return METRICS[key]
    parts = split_benchmark_metric(key)
    if parts:
        inner = METRICS[parts[1]]
        return Metric(key, f"{parts[0]} {inner.label}", inner.higher_is_better, inner.fraction, inner.description)
    return Metric(key, key)


def reported(key: str) -> bool:
    """A metric a report's verdicts rest on; a dev-split metric settings are chosen on is not one
    (a change significant on dev alone is what a held-out test exists to check)."""
    return not metric(key).for_choosing


def label(key: str) -> str:
    return metric(key).label


def higher_is_better(key: str) -> bool:
    return metric(key).higher_is_better


def display_scale(key: str) -> float:
    """100 for 0-1 scores shown as points beside BLEU/chrF; 1 for scores already on their own scale."""
    return 100.0 if metric(key).fraction else 1.0


def is_real(difference: dict) -> bool:
    """The one rule for a difference this evaluation set can see: interval excludes 0 and p < ALPHA."""
    excludes_zero = difference["low"] > 0 or difference["high"] < 0
    return excludes_zero and difference["p_value"] < ALPHA


def verdict(key: str, difference: dict) -> str:
    """'better', 'worse' or 'same' for a paired difference (other − baseline) on metric `key`."""
    if not is_real(difference):
        return "same"
    return "better" if (difference["diff"] > 0) == higher_is_better(key) else "worse"
