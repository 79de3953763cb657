"""`tunelab export`: merged Hugging Face folder, GGUF f16 / Q8_0 / Q4_K_M, an Ollama Modelfile, and
a faithfulness check of every export against the PyTorch model.

Everything is built in a hidden staging folder beside `<run>/export/` and moved into place only
when the whole export succeeded, so a failure (unsupported architecture, missing llama.cpp, full
disk, converter error, Ctrl-C) leaves no half-written export behind.
"""
from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path

from tunelab.config import EvalConfig, ExportConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.io import atomic_write_json, atomic_write_text
from tunelab.progress import console, progress_bar

FORMATS = ("merged", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m")
# bytes per parameter of each artefact, for the free-space check (Q8_0: 34 bytes per 32 weights)
BYTES_PER_PARAM = {"merged": 4.0, "gguf-f16": 2.0, "gguf-q8_0": 1.07, "gguf-q4_k_m": 0.62}


def locate(run: str | Path) -> tuple[Path, Path | None, str]:
    """(model folder, run root or None, export name) for a run directory, a trained model folder or any model."""
    from tunelab.models.chat import trained_model_dir
    from tunelab.models.resolve import resolve_model

    run = Path(run)
    model_dir = trained_model_dir(run)
    if model_dir is not None:
        root = model_dir.parent if model_dir.name == "model" else None
        name = (root or model_dir).resolve().name
        return model_dir, root, name
    resolved = resolve_model(str(run))
    return resolved.path, None, resolved.name


def _configs(run_root: Path | None) -> tuple[ExportConfig, EvalConfig]:
    recipe_file = run_root / "recipe.yaml" if run_root else None
    if recipe_file and recipe_file.is_file():
        from tunelab.config import load_recipe

        try:
            recipe = load_recipe(recipe_file)
            return recipe.export, recipe.eval
        except ConfigError as err:
            console.print(f"[yellow]warning:[/] {err}; using default export settings")
    return ExportConfig(), EvalConfig()


def _check_formats(formats) -> list[str]:
    formats = list(dict.fromkeys(f.strip().lower() for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise TunelabError(f"unknown export format(s) {', '.join(bad) or '(none given)'}: choose from {', '.join(FORMATS)}")
    return formats


def export_run(
    run: str | Path,
    formats: list[str] | None = None,
    *,
    out: Path | None = None,
    check: bool = True,
    config: ExportConfig | None = None,
    eval_config: EvalConfig | None = None,
    threads: int | None = None,
) -> dict:
    """Export a trained run (or any model) to `formats`; returns the faithfulness report (also in
    `<out>/faithfulness.json`). Formats default to the recipe's `export.formats`."""
    from tunelab.export import faithfulness as fc
    from tunelab.export.card import base_licence, model_card
    from tunelab.export.llama_cpp import (LlamaCppChatModel, check_gguf_architecture, convert_hf_to_gguf, converter_dir,
                                         disk_free, gguf_metadata, quantize_gguf, require_llama_cpp)
    from tunelab.export.merge import base_model_path, count_parameters, load_pytorch_model, merged_model, save_merged, weights_config_dir
    from tunelab.export.modelfile import modelfile_text
    from tunelab.models.load import load_causal_lm, load_tokenizer, set_threads

    t0 = time.time()
    model_dir, run_root, name = locate(run)
    recipe_export, recipe_eval = _configs(run_root)
    config = config or recipe_export
    eval_config = eval_config or recipe_eval
    formats = _check_formats(formats or config.formats)
    ggufs = [f for f in formats if f.startswith("gguf-")]
    out = Path(out) if out else (run_root / "export" if run_root else Path("exports") / name)

    # Fail fast, before any heavy work, on what would fail later.
    if ggufs:
        require_llama_cpp()
        converter_dir()
        check_gguf_architecture(weights_config_dir(model_dir))
    params = count_parameters(weights_config_dir(model_dir))
    need = int((BYTES_PER_PARAM["merged"] + sum(BYTES_PER_PARAM[f] for f in ggufs) + (2.0 if ggufs and "gguf-f16" not in ggufs else 0)) * params * 1.1) + 50 * 2**20
    free = disk_free(out.parent)
    if free < need:
        raise TunelabError(f"not enough disk space for the export in {out.parent}: it needs about {need / 2**30:.2f} GiB "
                           f"({params / 1e6:.0f}M parameters, formats {', '.join(formats)}), {free / 2**30:.2f} GiB are free")

    n_threads = set_threads(threads)
    conversations, references, prompt_source = fc.check_prompts(run_root, config.check_prompts)
    score = check and config.evaluate and references is not None
    answer_tokens = max(config.check_tokens, eval_config.max_new_tokens) if score else config.check_tokens

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        n_prompts = len(conversations)
        total = 2 + (n_prompts if check else 0) + len(ggufs) + (1 if ggufs else 0) + (n_prompts * len(formats) if check else 0)
        with progress_bar() as bar:
            task = bar.add_task(f"Export {name}", total=total, info="loading the PyTorch model")
            step = lambda info=None: bar.update(task, advance=1, **({"info": info} if info else {}))  # noqa: E731

            model, tokenizer, info = load_pytorch_model(model_dir)
            step("PyTorch model: greedy answers" if check else "merging")
            t_ref = time.time()
            reference = fc.hf_greedy(model, tokenizer, conversations, answer_tokens, on_done=step) if check else None
            t_ref = time.time() - t_ref

            merged_dir = stage / "merged"
            merged_dir.mkdir()
            save_merged(merged_model(model), tokenizer, merged_dir)
            del model
            gc.collect()
            step("merged" + ("; converting to GGUF" if ggufs else ""))

            gguf_dir = stage / "gguf"
            files: dict[str, Path] = {}
            if ggufs:
                f16 = gguf_dir / f"{name}-f16.gguf"
                convert_hf_to_gguf(merged_dir, f16, "f16", log_file=stage / "logs" / "convert.log")
                step("converted to f16")
                for fmt in ggufs:
                    if fmt == "gguf-f16":
                        files[fmt] = f16
                    else:
                        q = fmt.removeprefix("gguf-")
                        files[fmt] = quantize_gguf(f16, gguf_dir / f"{name}-{q}.gguf", q, threads=n_threads, log_file=stage / "logs" / "quantize.log")
                    step(f"{fmt} written")
                if "gguf-f16" not in ggufs:
                    f16.unlink()

            report = {
                "model": name, "model_dir": str(model_dir.resolve()), "method": info.get("method", "pretrained"),
                "base_model": info.get("base_model"), "out": str(out), "formats": {}, "checked": check, "passed": True,
                "prompts": len(conversations), "prompt_source": prompt_source, "check_tokens": config.check_tokens, "answer_tokens": answer_tokens,
            }
            if check:
                # greedy generation speed of the PyTorch fp32 model in this check (it also records
                # logit margins per step), next to each GGUF's own speed on the same prompts
                report["pytorch_tokens_per_second"] = round(sum(len(g.ids) for g in reference) / max(t_ref, 1e-9), 1)
                report["pytorch"] = {"answers": [g.text for g in reference], "prompt_ids": [g.prompt_ids for g in reference], "ids": [g.ids for g in reference]}
            for fmt in formats:
                entry: dict = {}
                if fmt == "merged":
                    entry["path"] = str(out / "merged")
                    entry["bytes"] = sum(p.stat().st_size for p in merged_dir.rglob("*") if p.is_file())
                else:
                    entry["path"] = str(out / "gguf" / files[fmt].name)
                    entry["bytes"] = files[fmt].stat().st_size
                    meta = gguf_metadata(files[fmt])
                    entry["gguf"] = {
                        "architecture": meta.get("general.architecture"),
                        "file_type": meta.get("general.file_type"),
                        "chat_template_equal": meta.get("tokenizer.chat_template") == tokenizer.chat_template,
                        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
                        "eos_token_id_equal": meta.get("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id,
                    }
                if check:
                    bar.update(task, info=f"checking {fmt}")
                    if fmt == "merged":
                        merged = load_causal_lm(merged_dir).eval()
                        gens = fc.hf_greedy(merged, load_tokenizer(merged_dir), conversations, answer_tokens, on_done=step)
                        del merged
                    else:
                        chat = LlamaCppChatModel(files[fmt], n_threads=n_threads, n_ctx=4096)
                        t_gen = time.time()
                        gens = fc.gguf_greedy(chat, conversations, answer_tokens, on_done=step)
                        entry["tokens_per_second"] = round(sum(len(g.ids) for g in gens) / max(time.time() - t_gen, 1e-9), 1)
                        del chat
                    gc.collect()
                    entry.update(fc.compare_tokens(fmt, reference, gens, config.check_tokens))
                    if "gguf" in entry and not (entry["gguf"]["chat_template_equal"] and entry["gguf"]["eos_token_id_equal"]):
                        entry["passed"] = False
                        entry["rule"] += "; the GGUF must carry the chat template and EOS token"
                    entry["answers"] = [g.text for g in gens]
                    entry["prompt_ids"] = [g.prompt_ids for g in gens]
                    entry["ids"] = [g.ids for g in gens]
                    report["passed"] = report["passed"] and entry["passed"]
                report["formats"][fmt] = entry

            if score:
                bar.update(task, info="scoring answers")
                try:
                    metrics, bert = eval_config.metrics, eval_config.bertscore_model
                    report["pytorch_metrics"] = fc.score_answers(report["pytorch"]["answers"], references, metrics, bert)
                    for fmt, entry in report["formats"].items():
                        entry["metrics"] = fc.metric_deltas(report["pytorch_metrics"], fc.score_answers(entry["answers"], references, metrics, bert))
                except ImportError as err:
                    report["metrics_note"] = f"metric deltas skipped: the evaluation stage is not available ({err})"

            report["seconds"] = round(time.time() - t0, 1)
            faith_md = fc.markdown_table(report) if check else None
            if check:
                atomic_write_json(stage / "faithfulness.json", report)
                atomic_write_text(stage / "faithfulness.md", faith_md)
            if ggufs:
                chosen = next(files[f] for f in ("gguf-q8_0", "gguf-q4_k_m", "gguf-f16") if f in files)
                others = [p.name for p in files.values() if p != chosen]
                user_only = tokenizer.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False, add_generation_prompt=True)
                atomic_write_text(gguf_dir / "Modelfile", modelfile_text(chosen.name, tokenizer.chat_template, tokenizer.eos_token or "", user_only, other_files=others))
            if "merged" in formats:
                base_dir = base_model_path(model_dir)
                card = model_card(name=name, info=info, licence=base_licence(info.get("base_model"), base_dir or model_dir), run_root=run_root,
                                  faithfulness_md=faith_md, gguf_files=[p.name for p in files.values()])
                atomic_write_text(merged_dir / "README.md", card)
            else:
                shutil.rmtree(merged_dir)
            bar.update(task, completed=total, info=f"done in {time.time() - t0:.0f} s")
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _publish(stage: Path, out: Path) -> None:
    """Move the finished artefacts from the staging folder into `out` (each move is a rename)."""
    for p in stage.rglob("*"):  # temporary files and folders are private (0600/0700); artefacts are for sharing
        p.chmod(0o755 if p.is_dir() else 0o644)
    out.mkdir(parents=True, exist_ok=True)
    merged = stage / "merged"
    if merged.is_dir():
        target = out / "merged"
        old = out / ".merged.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        merged.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    gguf = stage / "gguf"
    if gguf.is_dir():
        (out / "gguf").mkdir(exist_ok=True)
        for f in sorted(gguf.iterdir()):
            f.replace(out / "gguf" / f.name)
    for name in ("faithfulness.json", "faithfulness.md"):
        if (stage / name).is_file():
            (stage / name).replace(out / name)
    if (stage / "logs").is_dir():
        (out / "logs").mkdir(exist_ok=True)
        for f in (stage / "logs").iterdir():
            f.replace(out / "logs" / f.name)


def export_cli(run: str | Path, formats: list[str] | None = None, out: Path | None = None, check: bool = True) -> dict:
    """The `tunelab export` command: export, print the faithfulness table, fail if a check failed."""
    from rich.table import Table

    report = export_run(run, formats, out=out, check=check)
    table = Table(title=f"export of {report['model']}")
    cols = ["format", "artefact", "size"] + (["prompts equal", "agreement", "passed"] if check else [])
    metric_names = sorted({m for e in report["formats"].values() for m in e.get("metrics", {})})
    for c in cols + [f"Δ {m}" for m in metric_names]:
        table.add_column(c, overflow="fold")
    for fmt, e in report["formats"].items():
        row = [fmt, e["path"], f"{e['bytes'] / 2**20:.0f} MiB"]
        if check:
            row += [f"{e['prompts_equal']}/{e['prompts']}", f"{e['agreement']:.1%}", "[green]yes[/]" if e["passed"] else "[red]no[/]"]
        row += [f"{e['metrics'][m]['delta']:+.4f}" if m in e.get("metrics", {}) else "-" for m in metric_names]
        table.add_row(*row)
    console.print(table)
    if report.get("metrics_note"):
        console.print(report["metrics_note"])
    if check and not report["passed"]:
        failed = [f for f, e in report["formats"].items() if not e["passed"]]
        raise TunelabError(f"faithfulness check failed for {', '.join(failed)}: see {report['out']}/faithfulness.md "
                           f"(the artefacts were written; rules in faithfulness.json)")
    return report
