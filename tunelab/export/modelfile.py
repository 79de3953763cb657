"""An Ollama Modelfile next to the GGUF files (`ollama create NAME -f Modelfile`): FROM the model's GGUF,
or, for a LoRA adapter (gguf-lora), FROM its base model's GGUF with the adapter on an ADAPTER line.

Ollama writes prompts with Go templates, not jinja, so the Modelfile carries a Go template that
renders what the model's jinja chat template renders, and the stop sequences that end a turn:

- ChatML (SmolLM2, Qwen2.5): `<|im_start|>role\\n...<|im_end|>\\n`; a default system prompt the
  jinja template adds (SmolLM2's, Qwen's) becomes the Modelfile's SYSTEM, which Ollama puts
  first when a conversation has none;
- Gemma turns (Gemma-3 instruction-tuned): `<start_of_turn>user\\n...<end_of_turn>\\n`, the
  system prompt written at the start of the first user turn, as Gemma's template does;
- tunelab's default template (base models such as Gemma-3 270m): `### Instruction:` /
  `### Response:` blocks, each answer closed by EOS.

BOS is not written by the Go templates: Ollama's tokenizer adds it where the GGUF says so
(`tokenizer.ggml.add_bos_token`, set from the model's tokenizer, as for Gemma). For any other
template TEMPLATE is left out, and Ollama uses the template stored in the GGUF.
tests/test_reliability.py renders each Go template with Go's text/template (where Go is
installed) against the jinja template it replaces.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

CHATML_TEMPLATE = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"

# Text between actions is written as is: a `{{-` would also eat the blank line before it.
TUNELAB_DEFAULT_TEMPLATE = (
    "{{- range .Messages }}"
    '{{- if eq .Role "system" }}{{ .Content }}\n\n'
    '{{ else if eq .Role "user" }}### Instruction:\n{{ .Content }}\n\n'
    '{{ else if eq .Role "assistant" }}### Response:\n{{ .Content }}{EOS}\n\n'
    "{{ end }}"
    "{{- end }}### Response:\n"
)

GEMMA_TEMPLATE = (
    '{{- $system := "" }}'
    "{{- range .Messages }}"
    '{{- if eq .Role "system" }}{{ $system = .Content }}'
    '{{- else if eq .Role "user" }}<start_of_turn>user\n'
    '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>\n'
    '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
    "{{ end }}"
    "{{- end }}<start_of_turn>model\n"
)


@dataclass(frozen=True)
class OllamaFormat:
    name: str
    markers: tuple[str, ...]  # all in the jinja chat template: this format applies
    template: str  # Go template; {EOS} stands for the model's end-of-sequence token
    stops: tuple[str, ...]


OLLAMA_FORMATS = (
    OllamaFormat("chatml", ("<|im_start|>",), CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>")),
    OllamaFormat("gemma", ("<start_of_turn>", "<end_of_turn>"), GEMMA_TEMPLATE, ("<start_of_turn>", "<end_of_turn>")),
    OllamaFormat("tunelab-default", ("### Instruction:", "### Response:"), TUNELAB_DEFAULT_TEMPLATE, ("### Instruction:",)),
)


def ollama_format(chat_template: str) -> OllamaFormat | None:
    """The Go template family for a jinja chat template, or None for one tunelab does not translate."""
    return next((f for f in OLLAMA_FORMATS if all(m in (chat_template or "") for m in f.markers)), None)


def _quote(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def default_system_prompt(fmt: OllamaFormat, user_only_prompt: str) -> str | None:
    """A system prompt the jinja template adds on its own (SmolLM2's, Qwen's), seen in a one-message rendering."""
    if fmt.name != "chatml":
        return None
    found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", user_only_prompt, re.S)
    return found.group(1) if found else None


def modelfile_text(
    gguf_file: str, chat_template: str, eos_token: str, user_only_prompt: str, *, other_files: list[str] = (), adapter: str | None = None
) -> str:
    """The Modelfile. `user_only_prompt` is the template rendered for one user message "X" (it
    shows a default system prompt, if the template adds one). With `adapter` (a LoRA adapter GGUF),
    `gguf_file` is its base model's GGUF."""
    lines = [
        "# Ollama Modelfile written by `tunelab export`.",
        "#   ollama create my-model -f Modelfile && ollama run my-model",
    ]
    for f in other_files:
        lines.append(f"# Other quantization in this folder: FROM ./{f}")
    if adapter:
        lines.append("# FROM is the base model; ADAPTER is the fine-tuned LoRA adapter that Ollama applies to it.")
    lines += [f"FROM ./{gguf_file}", *([f"ADAPTER ./{adapter}"] if adapter else []), ""]
    stops = [eos_token] if eos_token else []
    fmt = ollama_format(chat_template)
    if fmt is None:
        lines.append("# TEMPLATE left out: Ollama uses the chat template stored in the GGUF (tokenizer.chat_template).")
    else:
        lines.append(f"TEMPLATE {_quote(fmt.template.replace('{EOS}', eos_token or ''))}")
        stops += fmt.stops
        system = default_system_prompt(fmt, user_only_prompt)
        if system:
            lines.append(f"SYSTEM {_quote(system)}")
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"
