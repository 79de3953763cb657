"""The report's numbers and plain words, from synthetic per-example scores in a real store."""

from __future__ import annotations

import random

from tunelab.compare.report import build_report, sentence, verdict
from tunelab.compare.store import ResultsStore
from tunelab.compare.wording import change_phrase


def add_run(store, run_id, variant, scores, *, kind="variant", baseline=False, kinds=(), changes=None, seed=1, model="smollm2"):
    settings = {"baseline": baseline, "kinds": list(kinds), "changes": changes or {}}
    if kind == "reference":
        settings["model"] = model
    store.upsert_run(
        run_id,
        variant=variant,
        seed=seed if kind == "variant" else None,
        config_id=run_id.split("-s")[0],
        kind=kind,
        status="done",
        train_seconds=100.0,
        tokens_per_second=250.0,
        settings=settings,
        recipe={"model": model} if kind == "variant" else None,
    )
    rows = [(f"ex{i}", metric, v) for metric, values in scores.items() for i, v in enumerate(values)]
    metrics = {m: {"mean": sum(v) / len(v)} for m, v in scores.items()}
    store.save_results(run_id, metrics, rows)


def test_report_words_from_synthetic_scores(tmp_path):
    rng = random.Random(0)
    n = 60
    base_rouge = [rng.uniform(0.2, 0.6) for _ in range(n)]
    base_ppl = [rng.uniform(5, 9) for _ in range(n)]
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.set_meta("heldout_size", str(n))
        store.set_meta("heldout_hash", "ab" * 32)
        add_run(store, "base-x", "base model (smollm2)", {"rougeL": [v - 0.1 for v in base_rouge]}, kind="reference")
        add_run(store, "aaa-s1", "baseline", {"rougeL": base_rouge, "perplexity": base_ppl}, baseline=True)
        # Raising the rank helps every example by 0.04 ± 0.01: a real improvement (ROUGE-L), perplexity unchanged.
        add_run(
            store,
            "bbb-s1",
            "rank-32",
            {"rougeL": [v + 0.04 + rng.uniform(-0.01, 0.01) for v in base_rouge], "perplexity": [v + rng.gauss(0, 0.5) for v in base_ppl]},
            kinds=["model"],
            changes={"train.lora.r": [8, 32]},
        )
        # Dropping cleaning: pure noise around the baseline.
        add_run(
            store,
            "ccc-s1",
            "no-clean",
            {"rougeL": [v + rng.gauss(0, 0.05) for v in base_rouge], "perplexity": [v + rng.gauss(0, 0.5) for v in base_ppl]},
            kinds=["data"],
            changes={"data.clean": [True, False]},
        )
        # Mixing in more data raises perplexity (lower is better): a real degradation, two seeds averaged.
        for seed in (1, 2):
            add_run(
                store,
                f"ddd-s{seed}",
                "mix-more",
                {
                    "rougeL": [v + rng.gauss(0, 0.05) for v in base_rouge],
                    "perplexity": [v + 1.0 + rng.uniform(-0.2, 0.2) for v in base_ppl],
                },
                kinds=["data"],
                changes={"data.sources.1.weight": [0.5, 1.0]},
                seed=seed,
            )
        add_run(store, "eee-s1", "half-done", {"rougeL": base_rouge})
        store.set_status("eee-s1", "trained")  # not finished: left out and named
        result = build_report(store, tmp_path / "report", title="synthetic")

    rows = {r.name: r for r in result["rows"]}
    assert set(rows) == {"base model (smollm2)", "baseline", "rank-32", "no-clean", "mix-more"}
    assert rows["mix-more"].seeds == [1, 2] and rows["mix-more"].stats["perplexity"]["seed_sd"] is not None
    assert verdict("rougeL", rows["rank-32"].deltas["rougeL"]) == "better"
    assert verdict("perplexity", rows["rank-32"].deltas["perplexity"]) == "same"
    assert verdict("perplexity", rows["mix-more"].deltas["perplexity"]) == "worse"
    d = rows["rank-32"].deltas["rougeL"]
    assert 0.035 < d["diff"] < 0.045 and d["low"] > 0 and d["p_value"] < 0.05
    assert rows["base model (smollm2)"].deltas["rougeL"]["diff"] < -0.09  # the untuned model is a row too
    # fine-tuning itself: the baseline against its untuned base model (variants with other settings are not)
    tuned = rows["baseline"].vs_untuned["rougeL"]
    assert abs(tuned["diff"] - 0.1) < 1e-9 and verdict("rougeL", tuned) == "better" and not rows["rank-32"].vs_untuned

    md = (tmp_path / "report" / "report.md").read_text()
    assert "### Fine-tuning itself: tuned against the untuned base model" in md
    assert "The tuned `baseline` beat its untuned base model smollm2." in md
    assert "Fine-tuning smollm2 (`baseline`) changed ROUGE-L F1 by +10.00 points over the untuned model" in md
    assert "Raising LoRA rank 8→32 improved ROUGE-L F1 by +3.8" in md and "a real improvement." in md
    assert "Turning off data cleaning changed ROUGE-L F1 by" in md and "no measurable difference." in md
    assert "Raising the mixing weight of source 1 0.5→1 made perplexity worse by +1.00" in md and "a real degradation." in md
    model_section = md.split("### Model-centric changes")[1].split("###")[0]
    data_section = md.split("### Data-centric changes")[1].split("## Results")[0]
    assert "Improved the model: raising LoRA rank 8→32 (`rank-32`)" in model_section
    assert "Made it worse: raising the mixing weight of source 1 0.5→1 (`mix-more`)" in data_section
    assert "Did not measurably change it: turning off data cleaning (`no-clean`)" in data_section
    assert "half-done (seed 1: trained)" in md
    assert "95% CI" in md and "| rank-32 | train.lora.r: 8 → 32 |" in md
    for m in ("rougeL", "perplexity"):
        assert (tmp_path / "report" / "plots" / f"{m}.png").stat().st_size > 1000
    page = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "a real improvement" in page
    # sentences are styled from their verdict, not from their wording
    assert "<li class='better'>Raising LoRA rank 8→32 improved ROUGE-L" in page
    assert "<li class='worse'>Raising the mixing weight of source 1" in page
    assert "<li class=''>Turning off data cleaning changed ROUGE-L" in page
    csv_text = (tmp_path / "report" / "results.csv").read_text()
    assert csv_text.splitlines()[0].startswith("variant,changed setting,")


def test_sentence_wording_and_phrases():
    from tunelab.compare.report import Row

    row = Row(
        name="lr",
        kind="variant",
        is_baseline=False,
        kinds=["model"],
        changes={"train.learning_rate": [1e-3, 2e-4]},
        seeds=[1],
        per_example={},
        seed_means={},
        train_seconds=None,
        tokens_per_second=None,
    )
    row.deltas["bleu"] = {"diff": -0.3, "low": -1.2, "high": 0.6, "p_value": 0.48, "n": 20}
    assert (
        sentence(row, "bleu", 1.0)
        == "Lowering learning rate 0.001→0.0002 changed BLEU by -0.30 (95% CI -1.20..+0.60, p=0.48): no measurable difference."
    )
    assert change_phrase("data.augment.paraphrase", False, True) == "turning on paraphrase augmentation"
    assert change_phrase("train.method", "lora", "full") == "changing the fine-tuning method from lora to full"
