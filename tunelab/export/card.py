"""The model card (README.md) of a merged export and of a gguf-lora export: what it is, what it was trained on,
how it scores, how faithful each export is, under which licence, what each file needs, and how to run it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunelab.models.catalog import lookup
from tunelab.models.resolve import MARKER
from tunelab.runs import ExportDir, RunDir, gguf_quant, model_weights, split_imatrix_quant


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


def model_card(
    *,
    name: str,
    info: dict,
    licence: str,
    run_root: Path | None,
    faithfulness_md: str | None,
    merged: bool,
    gguf_files: list[str],
    lora_files: tuple[str, str] | None,
    folder: str,
    imatrix: dict | None = None,
) -> str:
    """The card of the export folder `folder` (merged/ or gguf-lora/); its Files section lists every
    artefact of the export and what each needs (`lora_files`: the gguf-lora pair's base and adapter;
    `imatrix`: how the importance matrix of the `_imat` files was made, tunelab/export/imatrix.py)."""
    base = info.get("base_model") or "(this model)"
    weights, objective = model_weights(info) or "unknown", info.get("objective", "sft")
    front = {"license": licence, "base_model": base}
    if folder == "merged":
        front |= {"library_name": "transformers", "tags": list(dict.fromkeys(["tunelab", weights, objective, "text-generation"]))}
        how = "LoRA adapter merged into the base weights" + (", the 4-bit base dequantized first" if weights == "qlora" else "")
    else:
        front |= {"tags": list(dict.fromkeys(["tunelab", weights, objective, "gguf", "lora", "text-generation"]))}
        how = "the LoRA adapter as a GGUF file, applied to its base model's GGUF when it runs"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    lines += [
        f"Fine-tuned from **{base}** by tunelab: **{weights}** weights, objective **{objective}**"
        + (f" ({how})." if weights in ("lora", "qlora") else "."),
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
    lines += files_section(base, weights, merged, gguf_files, lora_files, imatrix)
    if merged:
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
    return "\n".join(lines) + "\n"


def imatrix_words(imatrix: dict) -> str:
    """How an importance matrix was made, in words: 'from 65,536 tokens (256 chunks of 256) of the training split'."""
    source = "the training split" if imatrix.get("training_split") else f"`{Path(imatrix['source']).name}`"
    return f"from {imatrix['tokens']:,} tokens ({imatrix['chunks']} chunks of {imatrix['chunk_tokens']}) of {source}"


def files_section(
    base: str, weights: str, merged: bool, gguf_files: list[str], lora_files: tuple[str, str] | None, imatrix: dict | None = None
) -> list[str]:
    """What each file of the export is and what it needs to run (paths within the export folder)."""
    rows = []
    if merged:
        rows.append(
            ("merged/", "the fine-tuned model, adapter merged in: fp32 safetensors, tokenizer, chat template", "transformers, nothing else")
        )
    for f in gguf_files:
        what = "the whole fine-tuned model in one GGUF file"
        qtype, with_imatrix = split_imatrix_quant(gguf_quant(f) or "")
        if with_imatrix and imatrix:
            what += f", {qtype.upper()} quantized with llama.cpp's importance matrix {imatrix_words(imatrix)}"
        rows.append((f"gguf/{f}", what, "llama.cpp, llama-cpp-python or Ollama (`gguf/Modelfile`); no other file"))
    if imatrix:
        within = ExportDir(Path())  # paths within the export folder
        rows.append(
            (
                f"{within.imatrix_file.as_posix()}, {within.calibration_text.as_posix()}",
                f"llama.cpp's importance matrix {imatrix_words(imatrix)}, and that text, conversations rendered with the chat template",
                "nothing to run the model; `llama-quantize --imatrix` reads the matrix to quantize again",
            )
        )
    if lora_files:
        base_file, adapter = lora_files
        rows.append(
            (
                f"gguf-lora/{adapter}",
                "the LoRA adapter alone (f16)",
                f"its base, `gguf-lora/{base_file}`: llama.cpp (`--lora`), llama-cpp-python (`lora_path`) or Ollama "
                "(`ADAPTER` in `gguf-lora/Modelfile`) apply it at load time. On another base model it is refused (another "
                "architecture or tensor shapes) or answers wrongly (same shapes, other weights)",
            )
        )
        what = f"{base} without the adapter, Q8_0; it answers as the base model alone, and serves every adapter of this base"
        if weights == "qlora":
            what = (
                f"{base} as the QLoRA adapter was trained against it: quantized to 4 bit (NF4), dequantized, then Q8_0. "
                "The original base's weights differ by the NF4 rounding, which the adapter learned to correct"
            )
        rows.append((f"gguf-lora/{base_file}", what, "llama.cpp, llama-cpp-python or Ollama; no other file"))
    lines = [
        "## Files",
        "",
        "Paths are within the export folder (a run's `export/`).",
        "",
        "| file | what it is | what it needs |",
        "|---|---|---|",
    ]
    lines += [f"| `{f}` | {what} | {needs} |" for f, what, needs in rows]
    commands = [f'`tunelab generate gguf/{gguf_files[0]} "Hello"`'] if gguf_files else []
    if lora_files:
        commands += ['`tunelab generate gguf-lora "Hello"` (the base with the adapter)', "`ollama create NAME -f gguf-lora/Modelfile`"]
    if gguf_files:
        commands.append("`ollama create NAME -f gguf/Modelfile`")
    return lines + ([""] + ["Run it: " + "; ".join(commands) + "."] if commands else []) + [""]


def _demote(markdown: str) -> str:
    """Nest a document's headings under the card's sections."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.strip().splitlines())
