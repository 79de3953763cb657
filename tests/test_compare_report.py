"""The report's numbers and plain words, from synthetic per-example scores in a real store."""

from __future__ import annotations

import random

from tunelab.compare.report import build_report, on_task_metric, sentence, verdict
from tunelab.compare.store import ResultsStore
from tunelab.compare.wording import change_phrase, changes_phrase


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
    # fine-tuning itself: the baseline against its untuned base model; every variant has that difference (gain
    # against cost), but only those with the baseline's recipe are "fine-tuning itself"
    tuned = rows["baseline"].vs_untuned["rougeL"]
    assert abs(tuned["diff"] - 0.1) < 1e-9 and verdict("rougeL", tuned) == "better"
    assert 0.135 < rows["rank-32"].vs_untuned["rougeL"]["diff"] < 0.145

    md = (tmp_path / "report" / "report.md").read_text()
    assert "### Fine-tuning itself: tuned against the untuned base model" in md
    assert "The tuned `baseline` beat its untuned base model smollm2." in md and "The tuned `rank-32`" not in md
    # no general-ability scores in this store: the section says so instead of weighing anything
    assert "General ability was not measured in this sweep" in md and not (tmp_path / "report" / "plots" / "gain_vs_cost.png").exists()
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
    assert change_phrase("data.sources.1.share", 0, 0.2) == "raising the replay share of source 1 0→0.2"
    assert change_phrase("train.interpolation", 1.0, 0.5) == "lowering the interpolation toward the tuned weights (α) 1→0.5"
    assert change_phrase("train.weights", "lora", "full") == "changing what training updates from lora to full"
    # a source whose file changed is named once, by its file and its settings that are not defaults
    replaced = {
        "data.sources.0.answers": ["any", "python"],
        "data.sources.0.format": ["python_functions", "auto"],
        "data.sources.0.path": ["stdlib", "/data/code_alpaca_2k.json"],
        "train.learning_rate": [1e-4, 2e-5],
    }
    assert changes_phrase(replaced) == (
        "replacing source 0, stdlib (format python_functions), with code_alpaca_2k.json (answers python)"
        " and lowering learning rate 0.0001→2e-05"
    )


def flip(values: list[float], right_to_wrong: int, wrong_to_right: int) -> list[float]:
    """A copy of 0/1 answers with the first `right_to_wrong` correct ones and `wrong_to_right` wrong ones flipped."""
    out, lose, win = list(values), right_to_wrong, wrong_to_right
    for i, v in enumerate(values):
        if v == 1.0 and lose:
            out[i], lose = 0.0, lose - 1
        elif v == 0.0 and win:
            out[i], win = 1.0, win - 1
    return out


def test_gain_against_cost_names_the_best_variant_that_keeps_general_ability(tmp_path):
    """chrF against ARC accuracy, each variant against the untuned base: the table, the Pareto front, the sentence, the plot."""
    from tunelab.compare import tradeoff

    rng = random.Random(1)
    base_chrf = [rng.uniform(10, 20) for _ in range(80)]
    base_arc = [1.0 if i % 10 < 6 else 0.0 for i in range(300)]  # 60% right
    arc = "arc-easy.acc"
    variants = {  # name: (chrF gain per example, ARC answers, changes)
        "baseline": (20.0, flip(base_arc, 45, 0), {}),  # the task gain, and 15 points of ARC lost
        "replay-20": (
            18.0,
            flip(base_arc, 6, 3),
            {"data.sources": ["tatoeba_en_de.csv", "tatoeba_en_de.csv + alpaca_en_demo.json (share 0.2)"]},
        ),
        "interp-0.5": (12.0, list(base_arc), {"train.interpolation": [1.0, 0.5]}),
        "rank-4": (5.0, flip(base_arc, 30, 0), {"train.lora.r": [16, 4]}),  # less gain and a loss: beaten by replay-20
    }
    with ResultsStore(tmp_path / "results.sqlite") as store:
        store.set_meta("task_metric", "chrf")
        store.set_meta("general_metric", arc)
        add_run(store, "base-x", "base model (gemma)", {"chrf": base_chrf, arc: base_arc}, kind="reference", model="gemma")
        for i, (name, (lift, answers, changes)) in enumerate(variants.items()):
            chrf = [v + lift + rng.uniform(-0.5, 0.5) for v in base_chrf]
            add_run(store, f"v{i}-s1", name, {"chrf": chrf, arc: answers}, baseline=name == "baseline", changes=changes, model="gemma")
        result = build_report(store, tmp_path / "report", title="forgetting")

    cost = result["gain_against_cost"]
    rows = {cells[0]: cells for cells in cost["body"]}
    assert set(rows) == set(variants)
    assert rows["baseline"][3] == "lost" and rows["replay-20"][3] == rows["interp-0.5"][3] == "kept (no measurable change)"
    assert rows["rank-4"][3] == "lost" and rows["baseline"][2].startswith("-15.00 [")
    assert {name for name, cells in rows.items() if cells[4] == "yes"} == {"baseline", "replay-20", "interp-0.5"}
    assert cost["sentence"].startswith("The best task gain that keeps general ability: `replay-20`")
    assert "chrF +18." in cost["sentence"] and "arc-easy accuracy changed by -1.00 points" in cost["sentence"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Gain against cost" in md and "![Gain against cost](plots/gain_vs_cost.png)" in md
    assert (tmp_path / "report" / "plots" / "gain_vs_cost.png").stat().st_size > 1000
    assert (tmp_path / "report" / "tradeoff.csv").read_text().splitlines()[0].startswith("variant,Δ chrF vs untuned")
    # ARC is a metric of the sweep like any other: its own plot and sentences against the baseline
    assert (tmp_path / "report" / "plots" / f"{arc}.png").is_file() and "improved arc-easy accuracy by +14.00 points" in md

    # when every variant loses, the sentence names the smallest loss instead
    losers = [
        tradeoff.Point(
            "a", {}, {"diff": 5.0, "low": 4.0, "high": 6.0, "p_value": 0.0}, {"diff": -0.10, "low": -0.15, "high": -0.05, "p_value": 0.0}
        ),
        tradeoff.Point(
            "b", {}, {"diff": 2.0, "low": 1.0, "high": 3.0, "p_value": 0.0}, {"diff": -0.04, "low": -0.07, "high": -0.01, "p_value": 0.01}
        ),
    ]
    words = tradeoff.verdict_sentence(losers, "chrf", arc)
    assert words.startswith("No variant keeps general ability") and "The smallest loss is `b`" in words
    assert tradeoff.pareto_front(losers, "chrf") == {"a", "b"}
    # lower-is-better task metrics: a fall in perplexity is the gain
    ppl = [
        tradeoff.Point(
            "down", {}, {"diff": -2.0, "low": -3, "high": -1, "p_value": 0}, {"diff": 0.0, "low": -0.02, "high": 0.02, "p_value": 1}
        ),
        tradeoff.Point("up", {}, {"diff": 2.0, "low": 1, "high": 3, "p_value": 0}, {"diff": 0.0, "low": -0.02, "high": 0.02, "p_value": 1}),
    ]
    assert tradeoff.pareto_front(ppl, "perplexity") == {"down"}


def test_a_summary_says_where_the_task_metric_disagrees():
    # a change that improved ROUGE-L while pass@1 on the test half did not move must not read as a plain improvement
    real = {"diff": 0.03, "low": 0.01, "high": 0.05, "p_value": 0.008}
    none = {"diff": 0.0, "low": -0.07, "high": 0.06, "p_value": 1.0}
    worse = {"diff": -0.2, "low": -0.3, "high": -0.1, "p_value": 0.0005}
    assert on_task_metric({"rougeL": real, "pass@1_test": none}, "pass@1_test", "improved") == (
        ", though on pass@1 (test half), the sweep's task metric: no measurable difference"
    )
    assert on_task_metric({"rougeL": real, "pass@1_test": real}, "pass@1_test", "improved") == ""  # agrees: nothing added
    assert on_task_metric({"rougeL": none, "pass@1_test": worse}, "pass@1_test", "did not beat") == ""
    assert (
        on_task_metric({"rougeL": real, "pass@1_test": worse}, "pass@1_test", "mixed")
        == "; on pass@1 (test half), the sweep's task metric: worse"
    )
    assert on_task_metric({"rougeL": real}, "pass@1_test", "improved") == ""  # a row without the task metric
