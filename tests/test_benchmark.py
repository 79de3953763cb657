"""Multiple-choice benchmarks (ARC): the loader on the shared and Hugging Face formats, its errors,
and agreement with lm-evaluation-harness itself on the same questions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tunelab.errors import DataError, TunelabError
from tunelab.evaluate.benchmark import (
    accuracies,
    benchmark_path,
    choice_logprobs,
    context_of,
    encode_pair,
    read_questions,
    run_benchmark,
    sample_questions,
)
from tunelab.models.load import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("name, count", [("arc-easy", 2376), ("arc-challenge", 1172)])
def test_shared_arc_files_load_with_the_harness_prompt(shared_data, name, count):
    questions = read_questions(benchmark_path(name))
    assert len(questions) == count
    first = questions[0]
    assert first.context.startswith("Question: ") and first.context.endswith("?\nAnswer:")
    assert len(first.choices) == 4 and 0 <= first.gold < 4
    raw = json.loads((shared_data / f"{name.replace('-', '_')}_test.jsonl").read_text().splitlines()[0])
    assert first.context == raw["query"] + "\nAnswer:" and list(first.choices) == raw["choices"] and first.gold == raw["gold"]


def test_hugging_face_arc_format_labels_letters_and_field_mapping(tmp_path):
    rows = [
        {
            "id": "Mercury_1",
            "question": "Which is a gas?",
            "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]},
            "answerKey": "B",
        },
        {
            "id": "NYSED_2",
            "question": "Pick one.",
            "choices": {"text": ["x", "y", "z", "w"], "label": ["1", "2", "3", "4"]},
            "answerKey": "4",
        },
    ]
    questions = read_questions(write_jsonl(tmp_path / "arc.jsonl", rows))
    assert [q.gold for q in questions] == [1, 3]
    assert questions[0].context == "Question: Which is a gas?\nAnswer:" and questions[0].id == "Mercury_1"
    mapped = [{"stem": "2 + 2?", "options": ["3", "4"], "right": "4"}]
    (q,) = read_questions(write_jsonl(tmp_path / "m.jsonl", mapped), {"question": "stem", "choices": "options", "gold": "right"})
    assert q.gold == 1 and q.choices == ("3", "4")
    csv = tmp_path / "mc.csv"
    csv.write_text('question,choices,answer\nSky colour?,"[""blue"", ""green""]",A\n')
    assert read_questions(csv)[0].gold == 0


@pytest.mark.parametrize(
    "row, fields, message",
    [
        ({"question": "Q?", "choices": ["a", "b"]}, None, r"record 0: no gold field \(tried gold, answer, answerKey, label\)"),
        ({"question": "Q?", "choices": ["a"], "answer": 0}, None, r"record 0, field 'choices': expected at least two"),
        (
            {"question": "Q?", "choices": ["a", "b"], "answer": 5},
            None,
            r"record 0, field 'answer': answer index 5 is outside the 2 choices",
        ),
        ({"question": "Q?", "choices": ["a", "b"], "answer": "maybe"}, None, r"record 0, field 'answer': answer 'maybe' is neither"),
        ({"question": " ", "choices": ["a", "b"], "answer": 0}, None, r"record 0, field 'question': the question is empty"),
        (
            {"q": "Q?", "choices": ["a", "b"], "answer": 0},
            {"question": "stem"},
            r"record 0, field 'stem': missing \(mapped as the question\)",
        ),
    ],
)
def test_bad_multiple_choice_records_name_file_record_and_field(tmp_path, row, fields, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(DataError, match=r"bad\.jsonl, " + message):
        read_questions(path, fields)


def test_unknown_benchmark_and_unknown_field_mapping(tmp_path):
    with pytest.raises(TunelabError, match="not one of arc-easy, arc-challenge and not a file"):
        benchmark_path("hellaswag")
    with pytest.raises(TunelabError, match="--field answers"):
        read_questions(write_jsonl(tmp_path / "x.jsonl", [{"question": "Q", "choices": ["a", "b"], "gold": 0}]), {"answers": "x"})


def test_prompt_and_seeded_sample():
    assert context_of("Why?") == "Question: Why?\nAnswer:"
    assert context_of("Question: Why?\nAnswer:") == "Question: Why?\nAnswer:"
    items = list(range(100))
    from tunelab.evaluate.benchmark import Question

    qs = [Question(str(i), "c", ("a", "b"), 0) for i in items]
    a, b = sample_questions(qs, 10, seed=3), sample_questions(qs, 10, seed=3)
    assert a == b and len(a) == 10 and [int(q.id) for q in a] == sorted(int(q.id) for q in a)
    assert sample_questions(qs, None) == qs


def test_accuracy_and_length_normalisation():
    from tunelab.evaluate.benchmark import Question

    q = Question("0", "Question: ?\nAnswer:", ("a", "a much longer answer"), 1)
    # -2 for 1 character against -6 for 20: acc picks the short one, acc_norm (per character) the long one
    scores = accuracies([q], [[-2.0, -6.0]])
    assert scores["acc"] == [0.0] and scores["acc_norm"] == [1.0] and scores["pick"] == [0] and scores["pick_norm"] == [1]


# ---------------------------------------------------------------- agreement with lm-evaluation-harness
def test_encoding_matches_the_harness(tiny_model_dir):
    from lm_eval.models.huggingface import HFLM

    harness = HFLM(pretrained=str(tiny_model_dir), device="cpu", dtype="float32")
    tokenizer = load_tokenizer(tiny_model_dir)
    for context, continuation in [("Question: Is it?\nAnswer:", " yes"), ("Trailing space: ", "x"), ("Q: é?\nA:", " naïve")]:
        assert encode_pair(tokenizer.encode, context, continuation) == harness._encode_pair(context, continuation)


def test_same_log_likelihoods_and_accuracies_as_lm_eval(tiny_model_dir, shared_data):
    from lm_eval_reference import lm_eval_multiple_choice

    from tunelab.models.chat import load_chat_model

    questions = sample_questions(read_questions(shared_data / "arc_challenge_test.jsonl"), 24, seed=1)
    reference = lm_eval_multiple_choice(tiny_model_dir, questions, batch_size=8)
    chat = load_chat_model(str(tiny_model_dir))
    ours = choice_logprobs(chat, questions, batch_size=8)
    worst = max(abs(a - b) for mine, theirs in zip(ours, reference["logprobs"]) for a, b in zip(mine, theirs))
    assert worst < 1e-4, f"log-likelihoods differ by {worst}"
    scores = accuracies(questions, ours)
    assert round(sum(scores["acc"]) / len(questions), 3) == round(reference["acc"], 3)
    assert round(sum(scores["acc_norm"]) / len(questions), 3) == round(reference["acc_norm"], 3)


@pytest.mark.slow
def test_real_smollm2_on_arc_easy_matches_lm_eval_to_three_decimals(smollm2_dir, shared_data, tmp_path):
    from lm_eval_reference import lm_eval_multiple_choice

    result = run_benchmark([str(smollm2_dir)], "arc-easy", tmp_path / "out", max_questions=200, seed=0, batch_size=16)
    questions = sample_questions(read_questions(shared_data / "arc_easy_test.jsonl"), 200, seed=0)
    reference = lm_eval_multiple_choice(smollm2_dir, questions, batch_size=16)
    (model,) = result["models"].values()
    assert round(model["acc"]["mean"], 3) == round(reference["acc"], 3)
    assert round(model["acc_norm"]["mean"], 3) == round(reference["acc_norm"], 3)


# ---------------------------------------------------------------- the command
def test_benchmark_command_base_against_run_with_paired_interval(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    arc = write_jsonl(
        tmp_path / "arc.jsonl",
        [{"query": f"Question: What is {i} plus one?", "choices": [str(i), str(i + 1), "blue"], "gold": 1} for i in range(12)],
    )
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["benchmark", str(tiny_model_dir), str(tiny_model_dir), "--benchmark", str(arc), "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "benchmark.json").read_text())
    a, b = result["models"].values()
    assert a["acc"] == b["acc"] and result["questions"] == 12
    d = result["differences"][list(result["models"])[1]]["acc"]
    assert d["diff"] == 0 and d["p_value"] == 1.0  # the same model twice: no difference
    assert "kept its general reasoning" in (out / "summary.md").read_text()
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len(rows[0][list(result["models"])[0]]["logprobs"]) == 3


def test_validation_sample_shares_no_question_with_the_reported_one(tiny_model_dir, tmp_path):
    """disjoint_from: the reported sample (seed 0) is taken out before the validation sample is drawn."""
    from tunelab.config import GeneralAbilityConfig, QuestionSample
    from tunelab.evaluate.benchmark import question_scores, run_general_ability, without_sample

    arc = write_jsonl(
        tmp_path / "arc.jsonl",
        [{"query": f"Question: What is {i} plus one?", "choices": [str(i), str(i + 1), "blue"], "gold": 1} for i in range(30)],
    )
    every = read_questions(arc)
    reported = {q.id for q in sample_questions(every, 10, seed=0)}
    pool = without_sample(every, 10, 0)
    assert len(pool) == 20 and not reported & {q.id for q in pool}
    # a plain sample of another seed overlaps the reported one; the disjoint one cannot
    assert reported & {q.id for q in sample_questions(every, 10, seed=1)}

    cfg = GeneralAbilityConfig(benchmark=str(arc), max_questions=10, seed=1, disjoint_from=QuestionSample(max_questions=10, seed=0))
    result = run_general_ability([str(tiny_model_dir)], ["tiny"], cfg, tmp_path / "out")
    scores = question_scores(tmp_path / "out", "tiny")
    assert result["questions"] == 10 and result["disjoint_from"] == {"max_questions": 10, "seed": 0}
    assert len(scores["acc"]) == 10 and not reported & set(scores["acc"])
    assert sum(scores["acc"].values()) / 10 == pytest.approx(result["models"]["tiny"]["acc"]["mean"])
    assert "none of the 10 questions of seed 0" in (tmp_path / "out" / "summary.md").read_text()
