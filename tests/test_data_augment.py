"""Augmentation: template variation and model paraphrases, on the training split only."""

from __future__ import annotations

import json

from tunelab.config import AugmentConfig, DataConfig, DataSource
from tunelab.data import prepare_data
from tunelab.data.augment import TEMPLATES, clean_paraphrase, paraphrase, paraphrase_problem, template_variation
from tunelab.io import read_jsonl


def examples(n: int) -> list[dict]:
    return [
        {
            "id": f"e-{i}",
            "source": f"f.json:{i}",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Tell me one thing about the number {i}."},
                {"role": "assistant", "content": f"The number {i} comes after {i - 1}."},
            ],
        }
        for i in range(n)
    ]


def test_template_variation_counts_and_keeps_answers():
    data = examples(20)
    copies = template_variation(data, fraction=0.3, seed=0)
    assert len(copies) == 6 and len({c["id"] for c in copies}) == 6
    by_id = {e["id"]: e for e in data}
    for c in copies:
        original = by_id[c["id"].removesuffix("~template")]
        assert c["id"].endswith("~template") and c["source"] == original["source"]
        assert c["messages"][-1] == original["messages"][-1] and c["messages"][0] == original["messages"][0]
        user = c["messages"][1]["content"]
        assert original["messages"][1]["content"] in user and user != original["messages"][1]["content"]
        assert any(user == t.format(text=original["messages"][1]["content"]) for t in TEMPLATES)
    assert data == examples(20)  # the originals are untouched
    assert template_variation(data, 0.3, seed=0) == copies
    assert [c["id"] for c in template_variation(data, 0.3, seed=1)] != [c["id"] for c in copies]


def test_paraphrase_problems_and_cleanup():
    original = "Describe the water cycle in three sentences."
    assert paraphrase_problem(original, "") == "empty"
    assert paraphrase_problem(original, "describe the water  cycle in three sentences.") == "unchanged"
    assert paraphrase_problem(original, "Describe the water cycle, in three sentences") == "unchanged"
    assert paraphrase_problem(original, "Hi") == "length"
    assert paraphrase_problem(original, "water " * 12) == "repetitive"
    assert paraphrase_problem(original, "As an AI language model I cannot rewrite this request.") == "degenerate"
    assert paraphrase_problem(original, "In three sentences, explain how the water cycle works.") is None
    assert clean_paraphrase('Rewritten instruction: "Explain the water cycle."') == "Explain the water cycle."


def test_paraphrase_with_a_real_model_keeps_originals(tiny_model_dir):
    data = examples(10)
    copies, drops = paraphrase(data, str(tiny_model_dir), fraction=0.5, seed=0, batch_size=4, max_new_tokens=24)
    assert len(copies) + sum(drops.values()) == 5  # every chosen example gave a copy or a counted drop
    assert data == examples(10)
    by_id = {e["id"]: e for e in data}
    for c in copies:
        original = by_id[c["id"].removesuffix("~paraphrase")]
        assert c["messages"][-1] == original["messages"][-1]  # the answer is kept
        assert c["messages"][1]["content"].strip() and c["messages"][1]["content"] != original["messages"][1]["content"]


def test_prepare_augments_only_training_split(tmp_path, tiny_model_dir):
    rows = [
        {"instruction": f"Give a fact about item {i} in the {w} collection.", "output": f"Item {i} of {w} is blue and weighs {i} grams."}
        for i in range(15)
        for w in ("red", "green")
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    base = dict(sources=[DataSource(path=str(tmp_path / "d.json"))], dedup="exact", test_size=5, validation_size=3)
    plain = prepare_data(DataConfig(**base), tmp_path / "plain", str(tiny_model_dir), 512)
    aug = AugmentConfig(
        template_variation=True, template_fraction=0.5, paraphrase=True, paraphrase_fraction=0.2, paraphrase_model=str(tiny_model_dir)
    )
    card = prepare_data(DataConfig(**base, augment=aug), tmp_path / "aug", str(tiny_model_dir), 512)
    assert card["augmentation"]["template_variation"] == 11  # half of 22 training examples
    made = card["augmentation"]["paraphrase"]
    assert made + sum(card["augmentation"].get("paraphrase_dropped", {}).values()) == 4
    assert card["counts"]["train"] == plain["counts"]["train"] + 11 + made
    assert card["hashes"]["test"] == plain["hashes"]["test"] and card["hashes"]["validation"] == plain["hashes"]["validation"]
    assert read_jsonl(tmp_path / "aug" / "test.jsonl") == read_jsonl(tmp_path / "plain" / "test.jsonl")
    train_ids = [e["id"] for e in read_jsonl(tmp_path / "aug" / "train.jsonl")]
    assert sum(i.endswith("~template") for i in train_ids) == 11
    assert card["tokens"]["train"]["count"] == card["counts"]["train"]
