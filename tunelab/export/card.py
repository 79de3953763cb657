"""The model card (README.md) of a merged export: what it is, what it was trained on, how it scores,
how faithful each export is, under which licence, and how to run it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunelab.models.catalog import lookup
from tunelab.models.resolve import MARKER
from tunelab.runs import RunDir


def base_licence(base_ref: str | None, base_dir: Path | None) -> str:
    """The base model's licence: from tunelab's catalog, else the base folder's model card front matter."""
    entry = lookup(base_ref) if base_ref else None
    source = Path(base_dir) / MARKER if base_dir else None
    if entry is None and source and source.is_file():  # a catalog model converted into tunelab's cache
        entry = lookup(json.loads(source.read_text()).get("catalog") or "")
    if entry:
        return entry.license
    readme = Path(base_dir) / "README.md" if base_dir else None
    if readme and readme.is_file():
        text = readme.read_text(errors="replace")
        if text.startswith("---"):
            try:
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
                if front.get("license"):
                    return str(front["license"])
            except yaml.YAMLError:
                pass
    return "unknown: check the base model's licence before sharing"


def model_card(*, name: str, info: dict, licence: str, run_root: Path | None, faithfulness_md: str | None, gguf_files: list[str]) -> str:
    base = info.get("base_model") or "(this model)"
    method = info.get("method", "unknown")
    front = {"license": licence, "base_model": base, "library_name": "transformers", "tags": ["tunelab", method, "text-generation"]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    lines += [
        f"Fine-tuned from **{base}** with **{method}** by tunelab "
        + (
            "(LoRA adapter merged into the base weights" + (", the 4-bit base dequantized first" if method == "qlora" else "") + ")."
            if method in ("lora", "qlora")
            else "."
        ),
        "",
        f"Licence: **{licence}** (inherited from the base model; the training data's licence may add terms, see below).",
        "",
    ]
    recipe = info.get("recipe")
    if isinstance(recipe, dict) and recipe.get("train"):
        lines += ["## Training", "", "```yaml", yaml.safe_dump({"train": recipe["train"]}, sort_keys=False).strip(), "```", ""]
    if run_root:
        data, evaluation = RunDir(run_root).data_dir, RunDir(run_root).eval_dir
        card_md, card_json = data.card_md, data.card_json
        if card_md.is_file():
            lines += ["## Training data", "", _demote(card_md.read_text()), ""]
        elif card_json.is_file():
            lines += ["## Training data", "", "```json", json.dumps(json.loads(card_json.read_text()), indent=2)[:4000], "```", ""]
        summary, eval_json = evaluation.summary_md, evaluation.eval_json
        if summary.is_file():
            lines += ["## Evaluation", "", _demote(summary.read_text()), ""]
        elif eval_json.is_file():
            lines += ["## Evaluation", "", "```json", eval_json.read_text()[:4000], "```", ""]
    if faithfulness_md:
        lines += ["## Export faithfulness", "", _demote(faithfulness_md), ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained('PATH/merged')",
        "model = AutoModelForCausalLM.from_pretrained('PATH/merged')",
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'Hello'}], add_generation_prompt=True, return_tensors='pt')",
        "print(tok.decode(model.generate(ids, max_new_tokens=64)[0, ids.shape[1]:], skip_special_tokens=True))",
        "```",
        "",
        'or `tunelab generate PATH/merged "Hello"`.',
    ]
    if gguf_files:
        lines += [
            "",
            "GGUF files (llama.cpp, Ollama): "
            + ", ".join(f"`gguf/{f}`" for f in gguf_files)
            + '; `ollama create NAME -f gguf/Modelfile`, or `tunelab generate gguf/FILE.gguf "Hello"`.',
        ]
    return "\n".join(lines) + "\n"


def _demote(markdown: str) -> str:
    """Nest a document's headings under the card's sections."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.strip().splitlines())
