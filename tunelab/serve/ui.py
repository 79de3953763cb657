"""The Gradio chat UI: a streaming chat with a model picker, a system prompt and generation
settings, a side-by-side tab that sends one prompt to two models (base against tuned), and an
Evaluate tab for blind A/B votes (tunelab/serve/evaluate_tab.py).

API names (for `gradio_client`): `/respond` (the chat), `/compare` (side by side), and the
Evaluate tab's (see evaluate_tab.py). Each takes the settings column's values positionally; the
last one, stop sequences, has a default (empty), so callers written before it existed still work.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from tunelab.errors import TunelabError
from tunelab.serve import evaluate_tab
from tunelab.serve.generation import (
    ServeLimits,
    check_chars,
    check_tokens,
    clean_messages,
    cut_at_stops,
    make_settings,
    stop_sequences_from_lines,
)
from tunelab.serve.registry import ModelRegistry

EXAMPLES = [
    "What is the capital of France?",
    "Give me three tips for writing a clear email.",
    "Explain what fine-tuning a language model means, in two sentences.",
]


def pick_defaults(registry: ModelRegistry) -> tuple[str, str, str]:
    """(chat model, left model, right model). The chat gets the newest run's GGUF export if it
    has one (the fast CPU path), else its trained model; side by side puts the newest trained
    model (as PyTorch runs it, like its base) against its base."""
    entries = list(registry.entries.values())
    tuned = [e for e in entries if e.kind != "base"]
    right = (tuned or entries)[0]
    same_run = [e for e in tuned if right.run and e.run == right.run]
    chat = next((e for e in same_run if e.kind == "gguf"), right)
    base = registry.base_of(right) or next((e for e in entries if e.kind == "base"), None) or entries[0]
    if right is base and len(entries) > 1:
        right = next(e for e in entries if e is not base)
    return chat.label, base.label, right.label


def settings_column(limits: ServeLimits) -> list:
    """The generation settings every tab shares, in the order the handlers take them:
    system prompt, temperature, top-p, max new tokens, repetition penalty, stop sequences.
    New settings go last and need a default value: gradio_client callers pass these positionally."""
    gr.Markdown("### Generation settings")
    return [
        gr.Textbox(label="System prompt", placeholder="You are a helpful assistant.", lines=3),
        gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature (0 = greedy)"),
        gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p"),
        gr.Slider(1, limits.max_tokens, value=min(256, limits.max_tokens), step=16, label="Max new tokens"),
        gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty"),
        gr.Textbox(
            value="",
            label="Stop sequences",
            placeholder="One per line (at most 4); \\n for a line break",
            info="The answer ends before the first one; it is never shown.",
            lines=2,
        ),
    ]


class Answers:
    """What the tabs run: answers streamed within the serving limits, cut before the first stop
    sequence (text past it never reaches the page), with errors turned into messages the UI shows."""

    def __init__(self, registry: ModelRegistry, limits: ServeLimits):
        self.registry, self.limits = registry, limits

    def stream(self, label: str, messages: list[dict], settings, stop_lines: str | None = None):
        """Accumulated answer text, piece by piece."""
        try:
            stops = stop_sequences_from_lines(stop_lines)
            entry = self.registry.find(label)
            check_chars(messages, self.limits)
            check_tokens(self.registry.get(entry), messages, self.limits)
            text = ""
            for piece in cut_at_stops(self.registry.stream(entry, messages, settings), stops):
                text += piece
                yield text
        except TunelabError as exc:
            raise gr.Error(str(exc)) from None

    def settings(self, temperature, top_p, max_tokens, repetition_penalty):
        return make_settings(
            self.limits, max_tokens=max_tokens, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, seed=None
        )

    def respond(self, message, history, model_label, system_prompt, temperature, top_p, max_tokens, repetition_penalty, stop_lines=""):
        """The Chat tab: the conversation so far and the new message, answered by one model."""
        try:
            messages = clean_messages([*history, {"role": "user", "content": message}], system_prompt)
        except TunelabError as exc:
            raise gr.Error(str(exc)) from None
        settings = self.settings(temperature, top_p, max_tokens, repetition_penalty)
        yield from self.stream(model_label, messages, settings, stop_lines)

    def compare(self, left_label, right_label, prompt, system_prompt, temperature, top_p, max_tokens, repetition_penalty, stop_lines=""):
        """The Side by side tab: one prompt, the left model's answer streamed first, then the right's."""
        if not (prompt or "").strip():
            raise gr.Error("type a prompt first")
        messages = clean_messages([{"role": "user", "content": prompt}], system_prompt)
        settings = self.settings(temperature, top_p, max_tokens, repetition_penalty)
        left = ""
        for left in self.stream(left_label, messages, settings, stop_lines):
            yield left, ""
        for right in self.stream(right_label, messages, settings, stop_lines):
            yield left, right


def chat_tab(labels: list[str], default: str) -> SimpleNamespace:
    """The Chat tab's model picker, and the slot its chat goes in once the settings exist (`wire_chat`)."""
    with gr.Tab("Chat"):
        model = gr.Dropdown(choices=labels, value=default, label="Model", interactive=True)
        slot = gr.Column()
    return SimpleNamespace(model=model, slot=slot)


def wire_chat(tab: SimpleNamespace, answers: Answers, settings_inputs: list, examples: list[str]) -> None:
    # Built after the settings column, so the chat uses its inputs: given inputs not yet rendered,
    # a ChatInterface would render its own copy below the chat
    with tab.slot:
        gr.ChatInterface(
            answers.respond,
            additional_inputs=[tab.model, *settings_inputs],
            examples=[[e] for e in examples],
            cache_examples=False,
            fill_height=False,
            api_name="respond",
        )


def side_by_side_tab(labels: list[str], left: str, right: str, examples: list[str]) -> SimpleNamespace:
    """The Side by side tab: two model pickers, one prompt, two answers."""
    tab = SimpleNamespace()
    with gr.Tab("Side by side"):
        with gr.Row():
            tab.left_model = gr.Dropdown(choices=labels, value=left, label="Left model (base)", interactive=True)
            tab.right_model = gr.Dropdown(choices=labels, value=right, label="Right model (tuned)", interactive=True)
        tab.prompt = gr.Textbox(label="Prompt", placeholder="One prompt, sent to both models", lines=2)
        tab.go = gr.Button("Send to both", variant="primary")
        with gr.Row():
            tab.left_out = gr.Textbox(label="Left answer", lines=10, interactive=False)
            tab.right_out = gr.Textbox(label="Right answer", lines=10, interactive=False)
        gr.Examples([[e] for e in examples], inputs=[tab.prompt])
    return tab


def wire_side_by_side(tab: SimpleNamespace, answers: Answers, settings_inputs: list) -> None:
    inputs, outputs = [tab.left_model, tab.right_model, tab.prompt, *settings_inputs], [tab.left_out, tab.right_out]
    tab.go.click(answers.compare, inputs, outputs, api_name="compare")
    tab.prompt.submit(answers.compare, inputs, outputs, api_name=False)


def evaluate_tab_layout(labels: list[str], baseline: str, candidate: str) -> SimpleNamespace:
    """The Evaluate tab (tunelab/serve/evaluate_tab.py): blind A/B votes."""
    with gr.Tab("Evaluate"):
        tab = evaluate_tab.layout(labels, baseline, candidate)
    return tab


def wire_rescan(button, registry: ModelRegistry, pickers: list) -> None:
    """The button that picks up runs and exports that appeared since the start, in every model picker."""

    def rescan(*values):
        registry.refresh()
        labels = registry.labels()
        return [gr.update(choices=labels, value=v) for v in values]

    button.click(rescan, pickers, pickers, api_name=False)


def build_ui(
    registry: ModelRegistry,
    limits: ServeLimits | None = None,
    examples: list[str] | None = None,
    title: str = "tunelab chat",
    votes_file: Path | None = None,
) -> gr.Blocks:
    """The whole UI. Votes go to model 2's run (eval/human_votes.jsonl) unless `votes_file` is given."""
    limits = limits or ServeLimits()
    examples = examples or EXAMPLES
    answers = Answers(registry, limits)
    labels = registry.labels()
    chat_default, left_default, right_default = pick_defaults(registry)
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\nModels from this machine's runs and exports. Answers stream as they are generated.")
        with gr.Row():
            with gr.Column(scale=4):
                chat = chat_tab(labels, chat_default)
                side = side_by_side_tab(labels, left_default, right_default, examples)
                evaluate = evaluate_tab_layout(labels, left_default, right_default)
            with gr.Column(scale=1, min_width=220):
                settings_inputs = settings_column(limits)
                refresh = gr.Button("Rescan runs folder", size="sm")
        wire_chat(chat, answers, settings_inputs, examples)
        wire_side_by_side(side, answers, settings_inputs)
        evaluate_tab.EvaluateTab(registry, limits, answers.stream, votes_file).wire(evaluate, settings_inputs)
        wire_rescan(refresh, registry, [chat.model, side.left_model, side.right_model, evaluate.model1, evaluate.model2])
    demo.queue(default_concurrency_limit=limits.max_concurrent, max_size=limits.max_queue)
    return demo
