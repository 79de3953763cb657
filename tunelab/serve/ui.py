"""The Gradio chat UI: a streaming chat with a model picker, a system prompt and generation
settings, a side-by-side tab that sends one prompt to two models (base against tuned), and an
Evaluate tab for blind A/B votes (tunelab/serve/evaluate_tab.py).

API names (for `gradio_client`): `/respond` (the chat), `/compare` (side by side), and the
Evaluate tab's (see evaluate_tab.py). Each takes the settings column's values positionally; the
last one, stop sequences, has a default (empty), so callers written before it existed still work.
"""

from __future__ import annotations

from pathlib import Path

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


def build_ui(
    registry: ModelRegistry,
    limits: ServeLimits | None = None,
    examples: list[str] | None = None,
    title: str = "tunelab chat",
    votes_file: Path | None = None,
) -> gr.Blocks:
    """The whole UI. Votes go to model 2's run (eval/human_votes.jsonl) unless `votes_file` is given."""
    limits = limits or ServeLimits()
    chat_default, left_default, right_default = pick_defaults(registry)

    def choices() -> list[str]:
        registry.refresh()
        return registry.labels()

    def stream_answer(label: str, messages: list[dict], settings, stop_lines: str | None = None):
        """Accumulated answer text, piece by piece, cut before the first stop sequence (text past
        it never reaches the page), with errors turned into messages the UI shows."""
        try:
            stops = stop_sequences_from_lines(stop_lines)
            entry = registry.find(label)
            check_chars(messages, limits)
            check_tokens(registry.get(entry), messages, limits)
            text = ""
            for piece in cut_at_stops(registry.stream(entry, messages, settings), stops):
                text += piece
                yield text
        except TunelabError as exc:
            raise gr.Error(str(exc)) from None

    def respond(message, history, model_label, system_prompt, temperature, top_p, max_tokens, repetition_penalty, stop_lines=""):
        try:
            messages = clean_messages([*history, {"role": "user", "content": message}], system_prompt)
        except TunelabError as exc:
            raise gr.Error(str(exc)) from None
        settings = make_settings(
            limits, max_tokens=max_tokens, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, seed=None
        )
        yield from stream_answer(model_label, messages, settings, stop_lines)

    def compare(left_label, right_label, prompt, system_prompt, temperature, top_p, max_tokens, repetition_penalty, stop_lines=""):
        if not (prompt or "").strip():
            raise gr.Error("type a prompt first")
        messages = clean_messages([{"role": "user", "content": prompt}], system_prompt)
        settings = make_settings(
            limits, max_tokens=max_tokens, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, seed=None
        )
        left = ""
        for left in stream_answer(left_label, messages, settings, stop_lines):
            yield left, ""
        for right in stream_answer(right_label, messages, settings, stop_lines):
            yield left, right

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\nModels from this machine's runs and exports. Answers stream as they are generated.")
        with gr.Row():
            with gr.Column(scale=4):
                with gr.Tab("Chat"):
                    model = gr.Dropdown(choices=registry.labels(), value=chat_default, label="Model", interactive=True)
                    chat_slot = gr.Column()
                with gr.Tab("Side by side"):
                    with gr.Row():
                        left_model = gr.Dropdown(choices=registry.labels(), value=left_default, label="Left model (base)", interactive=True)
                        right_model = gr.Dropdown(
                            choices=registry.labels(), value=right_default, label="Right model (tuned)", interactive=True
                        )
                    prompt = gr.Textbox(label="Prompt", placeholder="One prompt, sent to both models", lines=2)
                    go = gr.Button("Send to both", variant="primary")
                    with gr.Row():
                        left_out = gr.Textbox(label="Left answer", lines=10, interactive=False)
                        right_out = gr.Textbox(label="Right answer", lines=10, interactive=False)
                    gr.Examples([[e] for e in (examples or EXAMPLES)], inputs=[prompt])
                with gr.Tab("Evaluate"):
                    evaluate = evaluate_tab.layout(registry.labels(), left_default, right_default)
            with gr.Column(scale=1, min_width=220):
                settings_inputs = settings_column(limits)
                refresh = gr.Button("Rescan runs folder", size="sm")
        with chat_slot:
            gr.ChatInterface(
                respond,
                additional_inputs=[model, *settings_inputs],
                examples=[[e] for e in (examples or EXAMPLES)],
                cache_examples=False,
                fill_height=False,
                api_name="respond",
            )
        go.click(compare, [left_model, right_model, prompt, *settings_inputs], [left_out, right_out], api_name="compare")
        prompt.submit(compare, [left_model, right_model, prompt, *settings_inputs], [left_out, right_out], api_name=False)
        evaluate_tab.EvaluateTab(registry, limits, stream_answer, votes_file).wire(evaluate, settings_inputs)

        def rescan(*values):
            labels = choices()
            return [gr.update(choices=labels, value=v) for v in values]

        pickers = [model, left_model, right_model, evaluate.model1, evaluate.model2]
        refresh.click(rescan, pickers, pickers, api_name=False)
    demo.queue(default_concurrency_limit=limits.max_concurrent, max_size=limits.max_queue)
    return demo
