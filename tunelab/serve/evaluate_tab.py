"""The chat UI's Evaluate tab: blind A/B votes between two models, in Chatbot Arena's form.

The rater picks two models (default: a run's base and its tuned model), takes the next prompt of
the run's held-out split (data/test.jsonl, in file order, skipping those this rater already
judged with these two models) or types one, and gets both answers in a random order, labelled
only A and B. The models' names appear only after the vote, which is appended to the run's
eval/human_votes.jsonl (fsynced first). The order (which model is A) lives in the server-side
session state, never in the page. Statistics: `tunelab votes RUN` (tunelab.evaluate.human).

API names (for `gradio_client`): `/evaluate_next`, `/evaluate_answers` (streamed), and one per
vote: `/vote_a`, `/vote_b`, `/vote_tie`, `/vote_both_bad`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from tunelab.errors import TunelabError
from tunelab.evaluate.examples import split_example
from tunelab.evaluate.human import VOTES, append_vote, new_vote, next_example, read_votes
from tunelab.io import read_jsonl
from tunelab.runs import RunDir
from tunelab.serve.generation import ServeLimits, clean_messages, make_settings, stop_sequences_from_lines
from tunelab.serve.registry import ModelRegistry


def vote_buttons(open_: bool) -> list[dict]:
    """Updates for the vote buttons (fresh each time: Gradio may change an update it is given)."""
    return [gr.update(interactive=open_) for _ in VOTES]


@dataclass
class Round:
    """One prompt put to both models: what the vote record needs, kept on the server."""

    prompt: list[dict]
    example_id: str | None
    reference: str | None
    model_a: str
    model_b: str
    baseline: str
    candidate: str
    settings: dict
    votes_file: str
    answers: dict = field(default_factory=lambda: {"A": "", "B": ""})
    complete: bool = False
    voted: bool = False


def layout(labels: list[str], baseline: str, candidate: str) -> SimpleNamespace:
    """The tab's components (call inside `with gr.Tab(...)`); `EvaluateTab.wire` connects them afterwards."""
    ui = SimpleNamespace()
    gr.Markdown(
        "Blind comparison: both models answer the same prompt, shown in a random order as **A** and **B**. "
        "Vote for the better answer; the names appear after your vote. Held-out prompts come from the run's test split."
    )
    with gr.Row():
        ui.rater = gr.Textbox(label="Your name (rater)", placeholder="e.g. alice", max_lines=1, scale=1, elem_id="evaluate-rater")
        ui.model1 = gr.Dropdown(
            choices=labels, value=baseline, label="Model 1 (baseline; default: the base model)", interactive=True, scale=2
        )
        ui.model2 = gr.Dropdown(
            choices=labels,
            value=candidate,
            label="Model 2 (candidate; default: the tuned model; its run keeps the votes)",
            interactive=True,
            scale=2,
        )
    ui.prompt = gr.Textbox(
        label="Prompt", placeholder="Take the next held-out prompt, or type your own", lines=3, elem_id="evaluate-prompt"
    )
    with gr.Row():
        ui.next = gr.Button("Next held-out prompt")
        ui.go = gr.Button("Get both answers", variant="primary")
    ui.status = gr.Markdown("", elem_id="evaluate-status")
    with gr.Row():
        ui.answer_a = gr.Textbox(label="Answer A", lines=10, interactive=False, elem_id="evaluate-answer-a")
        ui.answer_b = gr.Textbox(label="Answer B", lines=10, interactive=False, elem_id="evaluate-answer-b")
    with gr.Row():
        ui.buttons = [gr.Button(text, interactive=False, variant="secondary") for text in VOTES.values()]
    ui.reveal = gr.Markdown("", elem_id="evaluate-reveal")
    ui.state = gr.State({"example": None, "round": None})
    return ui


def held_out(run_dir: str | Path) -> list[dict]:
    """The run's test split as {"id", "prompt", "reference"} rows, split as `tunelab eval` splits them ([] without one)."""
    path = RunDir(Path(run_dir)).split("test")
    if not path.is_file():
        return []
    return [split_example(example, i, str(path)) for i, example in enumerate(read_jsonl(path))]


def _check_inputs(rater: str, model1: str, model2: str) -> None:
    if not (rater or "").strip():
        raise gr.Error("type your name (rater) first")
    if model1 == model2:
        raise gr.Error("pick two different models")


class EvaluateTab:
    """The tab's three actions. `stream_answer(label, messages, settings, stop_lines)` yields an
    answer's text so far (the chat's own, with its limits, stop sequences and error messages);
    votes go to model 2's run, or to `votes_file` when given (a Space with persistent storage)."""

    def __init__(self, registry: ModelRegistry, limits: ServeLimits, stream_answer, votes_file: Path | None = None):
        self.registry, self.limits, self.stream_answer, self.votes_file = registry, limits, stream_answer, votes_file

    def wire(self, ui: SimpleNamespace, settings_inputs: list) -> None:
        outputs = [ui.prompt, ui.state, ui.status, ui.answer_a, ui.answer_b, ui.reveal, *ui.buttons]
        ui.next.click(self.next_prompt, [ui.rater, ui.model1, ui.model2, ui.state], outputs, api_name="evaluate_next")
        inputs = [ui.rater, ui.model1, ui.model2, ui.prompt, *settings_inputs, ui.state]
        outputs = [ui.answer_a, ui.answer_b, ui.state, ui.status, ui.reveal, *ui.buttons]
        ui.go.click(self.answers, inputs, outputs, api_name="evaluate_answers")
        for key, button in zip(VOTES, ui.buttons):
            outputs = [ui.reveal, ui.state, ui.status, *ui.buttons]
            button.click(partial(self.cast, key), [ui.rater, ui.state], outputs, api_name=f"vote_{key.lower()}")

    def where(self, candidate: str) -> tuple[Path, str | None]:
        """(where the votes go, the run folder whose test split gives the prompts)."""
        try:
            run_dir = self.registry.find(candidate).run_dir
        except TunelabError as exc:
            raise gr.Error(str(exc)) from None
        if self.votes_file:
            return Path(self.votes_file), run_dir
        if not run_dir:
            raise gr.Error(f"Model 2 ({candidate}) does not come from a run: pick a run's model, whose folder keeps the votes")
        return RunDir(Path(run_dir)).human_votes, run_dir

    def next_prompt(self, rater, model1, model2, state):
        _check_inputs(rater, model1, model2)
        path, run_dir = self.where(model2)
        try:
            rows = held_out(run_dir) if run_dir else []
            example = next_example(rows, read_votes(path, quiet=True), rater, model1, model2)
        except TunelabError as exc:
            raise gr.Error(str(exc)) from None
        if not rows:
            raise gr.Error("this run has no held-out split (data/test.jsonl): type a prompt instead")
        if example is None:
            raise gr.Error(f"you have judged all {len(rows)} held-out prompts with these two models: type a prompt instead")
        position = next(i for i, r in enumerate(rows) if r is example) + 1
        turns = len(example["prompt"]) - 1
        status = f"Held-out prompt {position} of {len(rows)} (id `{example['id']}`" + (
            f", after {turns} earlier message(s))" if turns else ")"
        )
        return example["prompt"][-1]["content"], {"example": example, "round": None}, status, "", "", "", *vote_buttons(False)

    def answers(self, rater, model1, model2, prompt, system, temperature, top_p, max_tokens, repetition_penalty, stop_lines, state):
        """Both answers, streamed, A first; which model is A is drawn here and kept in the session."""
        _check_inputs(rater, model1, model2)
        if not (prompt or "").strip():
            raise gr.Error("take the next held-out prompt or type one first")
        path, _ = self.where(model2)
        example = state.get("example")
        if example and prompt.strip() == example["prompt"][-1]["content"].strip():
            messages, example_id, reference, system_used = example["prompt"], example["id"], example["reference"], None
        else:  # typed, or a held-out prompt the rater edited: no reference
            messages, example_id, reference = clean_messages([{"role": "user", "content": prompt}], system), None, None
            system_used = system or None
        settings = make_settings(
            self.limits, max_tokens=max_tokens, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, seed=None
        )
        model_a, model_b = random.sample([model1, model2], 2)
        try:
            stops = stop_sequences_from_lines(stop_lines)
        except TunelabError as exc:
            raise gr.Error(str(exc)) from None
        recorded = {**asdict(settings), "system_prompt": system_used, "stop": stops}
        round_ = Round(messages, example_id, reference, model_a, model_b, model1, model2, recorded, str(path))
        state = {"example": example, "round": round_}
        waiting = "Both answers stream one after the other (A first); the vote buttons open when both are done."
        for side, label in (("A", model_a), ("B", model_b)):
            for text in self.stream_answer(label, messages, settings, stop_lines):
                round_.answers[side] = text
                yield round_.answers["A"], round_.answers["B"], state, waiting, "", *vote_buttons(False)
        round_.complete = True
        yield round_.answers["A"], round_.answers["B"], state, "Which answer is better?", "", *vote_buttons(True)

    def cast(self, vote, rater, state):
        """Append the vote (fsynced), then reveal the names."""
        round_: Round | None = state.get("round")
        if round_ is None or not round_.complete:
            raise gr.Error("get both answers first")
        if round_.voted:
            raise gr.Error("this round has its vote: take the next prompt")
        if not (rater or "").strip():
            raise gr.Error("type your name (rater) first")
        record = new_vote(
            rater=rater,
            prompt=round_.prompt,
            example_id=round_.example_id,
            reference=round_.reference,
            model_a=round_.model_a,
            model_b=round_.model_b,
            baseline=round_.baseline,
            candidate=round_.candidate,
            answer_a=round_.answers["A"],
            answer_b=round_.answers["B"],
            vote=vote,
            settings=round_.settings,
        )
        try:
            append_vote(round_.votes_file, record)
        except (TunelabError, OSError) as exc:
            raise gr.Error(f"the vote was not saved: {exc}") from None
        round_.voted = True
        mine = sum(v["rater"] == record["rater"] for v in read_votes(round_.votes_file, quiet=True))
        reveal = (
            f"**A** was `{round_.model_a}`, **B** was `{round_.model_b}`. Your vote: *{VOTES[vote]}*. "
            f"Saved to `{round_.votes_file}` ({mine} vote(s) by {record['rater']} there)."
        )
        return reveal, state, "Vote saved. Take the next prompt.", *vote_buttons(False)
