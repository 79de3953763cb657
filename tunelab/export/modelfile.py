"""An Ollama Modelfile next to the GGUF files (`ollama create NAME -f Modelfile`).

Ollama writes prompts with Go templates, not jinja. For the two template families tunelab
trains with (ChatML, as SmolLM2 and Qwen use, and tunelab's default instruction template)
the Modelfile carries the equivalent Go template; for any other template it leaves TEMPLATE
out, and Ollama takes the template stored in the GGUF (`tokenizer.chat_template`).
"""
from __future__ import annotations

import json
import re

CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)

TUNELAB_DEFAULT_TEMPLATE = (
    "{{- range .Messages }}"
    "{{- if eq .Role \"system\" }}{{ .Content }}\n\n"
    "{{- else if eq .Role \"user\" }}### Instruction:\n{{ .Content }}\n\n"
    "{{- else if eq .Role \"assistant\" }}### Response:\n{{ .Content }}{EOS}\n\n"
    "{{- end }}{{ end }}### Response:\n"
)


def _quote(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile_text(gguf_file: str, chat_template: str, eos_token: str, user_only_prompt: str, *, other_files: list[str] = ()) -> str:
    """The Modelfile. `user_only_prompt` is the template rendered for one user message "X" (it
    shows a default system prompt, if the template adds one)."""
    lines = [
        "# Ollama Modelfile written by `tunelab export`.",
        "#   ollama create my-model -f Modelfile && ollama run my-model",
    ]
    for f in other_files:
        lines.append(f"# Other quantization in this folder: FROM ./{f}")
    lines += [f"FROM ./{gguf_file}", ""]
    stops = [eos_token] if eos_token else []
    if "<|im_start|>" in chat_template:
        lines.append(f"TEMPLATE {_quote(CHATML_TEMPLATE)}")
        stops += ["<|im_start|>", "<|im_end|>"]
        system = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", user_only_prompt, re.S)
        if system:
            lines.append(f"SYSTEM {_quote(system.group(1))}")
    elif "### Instruction:" in chat_template and "### Response:" in chat_template:
        lines.append(f"TEMPLATE {_quote(TUNELAB_DEFAULT_TEMPLATE.replace('{EOS}', eos_token))}")
        stops += ["### Instruction:"]
    else:
        lines.append("# TEMPLATE left out: Ollama uses the chat template stored in the GGUF (tokenizer.chat_template).")
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"
