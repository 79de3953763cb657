"""Chat templates tunelab supplies itself. Plain text, no torch: serving a GGUF needs them too."""

from __future__ import annotations

# The template a model without one (a base model) gets, at train and at serve time alike.
# Plain-text markers any tokenizer can represent; each assistant turn ends with EOS so the
# tuned model learns to stop; the text starts with BOS for models trained with one (Gemma
# answers garbage without it). Documented in docs/data.md.
DEFAULT_CHAT_TEMPLATE = (
    "{{- bos_token if bos_token else '' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\\n' }}{%- endif -%}"
)
