"""`tunelab export`: merged Hugging Face folder, GGUF f16 / Q8_0 / Q4_K_M (and 4- and 3-bit ones quantized with
an importance matrix computed on the run's training split, tunelab/export/imatrix.py), the LoRA adapter as a GGUF
beside its base's (tunelab/export/lora.py), Ollama Modelfiles, and a faithfulness check of every
export against the PyTorch model.

Everything is built in a hidden staging folder beside `<run>/export/` and moved into place only
when the whole export succeeded, so a failure (unsupported architecture, missing llama.cpp, full
disk, converter error, Ctrl-C) leaves no half-written export behind.

`export_run` reads top to bottom as its steps: plan, check before any heavy work, answer with the
PyTorch model, write the merged folder, convert and quantize, write the adapter pair, check each
format, score, write the check files, Modelfiles and model cards, publish.
"""

from __future__ import annotations

import difflib
import gc
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from tunelab.config import EXPORT_FORMATS, GGUF_LORA, IMATRIX_FORMATS, MERGED_GGUF_FORMATS, EvalConfig, ExportConfig, load_recipe
from tunelab.errors import ConfigError, TunelabError
from tunelab.export import faithfulness as fc
from tunelab.export.card import base_licence, model_card
from tunelab.export.imatrix import calibration_file, make_imatrix
from tunelab.export.llama_cpp import (
    check_gguf_architecture,
    convert_hf_to_gguf,
    converter_dir,
    llama_tools,
    quantize_gguf,
    quantize_with_imatrix,
)
from tunelab.export.lora import check_adapter, write_lora_pair
from tunelab.export.merge import base_model_path, count_parameters, load_pytorch_model, merged_model, save_merged, weights_config_dir
from tunelab.export.modelfile import modelfile_text
from tunelab.io import atomic_write_json, atomic_write_text
from tunelab.models.llama_cpp import LlamaCppChatModel, gguf_metadata, require_llama_cpp
from tunelab.models.load import load_causal_lm, load_tokenizer, set_threads
from tunelab.models.resolve import resolve_model
from tunelab.models.templates import DEFAULT_CHAT_TEMPLATE
from tunelab.progress import console, print_table, progress_bar
from tunelab.runs import ExportDir, RunDir, model_weights, split_imatrix_quant, trained_model_dir

# bytes per parameter of each artefact, for the free-space check (Q8_0: 34 bytes per 32 weights; the k- and
# i-quants: llama.cpp's bits per weight of each type, with the higher-precision tensors it keeps; gguf-lora:
# its Q8_0 base where it is copied, not linked, from tunelab's cache, the adapter being a small fraction)
BYTES_PER_PARAM = {
    "merged": 4.0,
    "gguf-f16": 2.0,
    "gguf-q8_0": 1.07,
    "gguf-q4_k_m": 0.62,
    "gguf-q4_k_m_imat": 0.62,
    "gguf-q4_k_s_imat": 0.59,
    "gguf-iq4_xs_imat": 0.56,
    "gguf-q3_k_m_imat": 0.51,
    "gguf-lora": 1.07,
}
# preference order of the GGUF the Modelfile points at (an importance matrix before none, at the same size)
MODELFILE_PREFERENCE = (
    "gguf-q8_0",
    "gguf-q4_k_m_imat",
    "gguf-q4_k_m",
    "gguf-q4_k_s_imat",
    "gguf-iq4_xs_imat",
    "gguf-q3_k_m_imat",
    "gguf-f16",
)


@dataclass
class ExportPlan:
    """What to export, from where, to where, and with which settings."""

    model_dir: Path
    run: RunDir | None  # None when exporting a plain model or a model folder outside a run
    name: str
    formats: list[str]
    out: Path
    config: ExportConfig
    eval_config: EvalConfig
    check: bool

    @property
    def ggufs(self) -> list[str]:
        """The merged model's GGUF formats asked for."""
        return [f for f in self.formats if f in MERGED_GGUF_FORMATS]

    @property
    def imatrix_formats(self) -> list[str]:
        """The formats quantized with an importance matrix."""
        return [f for f in self.formats if f in IMATRIX_FORMATS]

    @property
    def lora(self) -> bool:
        return GGUF_LORA in self.formats

    @property
    def writes_merged(self) -> bool:
        """The merged folder is written when asked for or when the GGUF converter needs it."""
        return "merged" in self.formats or bool(self.ggufs)


def locate(run: str | Path) -> tuple[Path, Path | None, str]:
    """(model folder, run root or None, export name) for a run directory, a trained model folder or any model."""
    model_dir = trained_model_dir(run)
    if model_dir is not None:
        run_dir = RunDir.of_model(run)
        root = run_dir.root if run_dir else None
        name = (root or model_dir).resolve().name
        return model_dir, root, name
    resolved = resolve_model(str(run))
    return resolved.path, None, resolved.name


def _configs(run: RunDir | None) -> tuple[ExportConfig, EvalConfig]:
    if run is not None and run.recipe.is_file():
        try:
            recipe = load_recipe(run.recipe)
            return recipe.export, recipe.eval
        except ConfigError as err:
            console.print(f"[yellow]warning:[/] {err}; using default export settings")
    return ExportConfig(), EvalConfig()


def _check_formats(formats) -> list[str]:
    formats = list(dict.fromkeys(f.strip().lower() for f in formats))
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad or not formats:
        # e.g. an i-quant without a matrix (gguf-iq4_xs), or the matrix spelt with a dash (gguf-q4_k_m-imat)
        hints = [f"did you mean {close[0]}?" for f in bad if (close := difflib.get_close_matches(f, EXPORT_FORMATS, n=1, cutoff=0.8))]
        raise TunelabError(
            f"unknown export format(s) {', '.join(bad) or '(none given)'}: choose from {', '.join(EXPORT_FORMATS)}"
            + "".join(f" ({h})" for h in hints)
        )
    return formats


def plan_export(run, formats, out, check, config, eval_config) -> ExportPlan:
    model_dir, run_root, name = locate(run)
    run_dir = RunDir(run_root) if run_root else None
    recipe_export, recipe_eval = _configs(run_dir)
    config = config or recipe_export
    formats = _check_formats(formats or config.formats)
    out = Path(out) if out else (run_dir.export if run_dir else Path("exports") / name)
    return ExportPlan(model_dir, run_dir, name, formats, out, config, eval_config or recipe_eval, check)


def disk_free(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_can_export(plan: ExportPlan) -> None:
    """Fail fast, before any heavy work, on what would fail later: llama.cpp, the architecture, disk space."""
    ggufs = plan.ggufs
    if plan.lora:
        check_adapter(plan.model_dir)
    if ggufs or plan.lora:
        require_llama_cpp()
        converter_dir()
        check_gguf_architecture(weights_config_dir(plan.model_dir))
    if plan.imatrix_formats:
        calibration_file(plan.run, plan.config.imatrix_settings())
        llama_tools()  # built here on first use: before the heavy work, not after it
    params = count_parameters(weights_config_dir(plan.model_dir))
    # an f16 GGUF is an intermediate of any quantization (the pair's base is quantized from one too, unless cached)
    per_param = (
        (BYTES_PER_PARAM["merged"] if plan.writes_merged else 0)
        + sum(BYTES_PER_PARAM[f] for f in ggufs + ([GGUF_LORA] if plan.lora else []))
        + (2.0 if (ggufs and "gguf-f16" not in ggufs) or plan.lora else 0)
    )
    need = int(per_param * params * 1.1) + 50 * 2**20
    free = disk_free(plan.out.parent)
    if free < need:
        raise TunelabError(
            f"not enough disk space for the export in {plan.out.parent}: it needs about {need / 2**30:.2f} GiB "
            f"({params / 1e6:.0f}M parameters, formats {', '.join(plan.formats)}), {free / 2**30:.2f} GiB are free"
        )


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
    t0 = time.time()
    plan = plan_export(run, formats, out, check, config, eval_config)
    check_can_export(plan)
    n_threads = set_threads(threads)
    conversations, references, prompt_source = fc.check_prompts(plan.run.root if plan.run else None, plan.config.check_prompts)
    score = check and plan.config.evaluate and references is not None
    answer_tokens = max(plan.config.check_tokens, plan.eval_config.max_new_tokens) if score else plan.config.check_tokens

    plan.out.parent.mkdir(parents=True, exist_ok=True)
    stage = ExportDir(Path(tempfile.mkdtemp(prefix=f".{plan.out.name}.staging-", dir=plan.out.parent)))
    try:
        n_prompts = len(conversations) if check else 0
        total = 2 + n_prompts + len(plan.ggufs) + (1 if plan.ggufs else 0) + bool(plan.imatrix_formats) + plan.lora
        total += n_prompts * len(plan.formats)
        with progress_bar() as bar:
            task = bar.add_task(f"Export {plan.name}", total=total, info="loading the PyTorch model")

            def step(info: str | None = None, advance: int = 1) -> None:
                bar.update(task, advance=advance, **({"info": info} if info else {}))

            model, tokenizer, info = load_pytorch_model(plan.model_dir)
            step("PyTorch model: greedy answers" if check else "merging")
            reference, t_ref = _pytorch_answers(model, tokenizer, conversations, answer_tokens, step) if check else (None, 0.0)
            if plan.writes_merged:
                _write_merged(model, tokenizer, stage)
            del model
            gc.collect()
            step(("merged" if plan.writes_merged else "answered") + ("; converting to GGUF" if plan.ggufs or plan.lora else ""))
            files, imatrix = _write_ggufs(plan, stage, tokenizer, n_threads, step)
            pair = write_lora_pair(plan.model_dir, plan.name, stage, threads=n_threads) if plan.lora else None
            if pair:
                step(f"{GGUF_LORA} written")

            report = _new_report(plan, info, prompt_source, len(conversations), answer_tokens, reference, t_ref)
            if imatrix:
                report["imatrix"] = imatrix
            for fmt in plan.formats:
                entry = _artefact_entry(fmt, plan.out, stage, files, pair, tokenizer)
                if check:
                    step(f"checking {fmt}", advance=0)
                    entry.update(
                        _check_format(fmt, stage, files, pair, conversations, reference, answer_tokens, plan.config, n_threads, step)
                    )
                    _require_template_and_eos(entry)
                    report["passed"] = report["passed"] and entry["passed"]
                report["formats"][fmt] = entry
            if score:
                step("scoring answers", advance=0)
                _score_formats(report, references, plan.eval_config)

            report["seconds"] = round(time.time() - t0, 1)
            faith_md = fc.markdown_table(report) if check else None
            if check:
                atomic_write_json(stage.faithfulness_json, report)
                atomic_write_text(stage.faithfulness_md, faith_md)
            if plan.ggufs:
                chosen = next(files[f] for f in MODELFILE_PREFERENCE if f in files)
                _write_modelfile(stage.modelfile, tokenizer, chosen, other_files=[p.name for p in files.values() if p != chosen])
            if pair:
                _write_modelfile(stage.lora_modelfile, tokenizer, pair[0], adapter=pair[1].name)
            _write_cards(plan, stage, info, faith_md, files, pair, imatrix)
            bar.update(task, completed=total, info=f"done in {time.time() - t0:.0f} s")
        _publish(stage, ExportDir(plan.out))
    finally:
        shutil.rmtree(stage.root, ignore_errors=True)
    return report


# ---------------------------------------------------------------- the steps
def _pytorch_answers(model, tokenizer, conversations, answer_tokens: int, step: Callable) -> tuple[list[fc.Generation], float]:
    """The reference: greedy answers of the unmerged PyTorch model, and the seconds they took."""
    start = time.time()
    reference = fc.hf_greedy(model, tokenizer, conversations, answer_tokens, on_done=step)
    return reference, time.time() - start


def _write_merged(model, tokenizer, stage: ExportDir) -> None:
    """The merged folder is always written: the GGUF converter reads it (removed at the end if not asked for)."""
    stage.merged.mkdir()
    save_merged(merged_model(model), tokenizer, stage.merged)


def _write_ggufs(plan: ExportPlan, stage: ExportDir, tokenizer, n_threads: int, step: Callable) -> tuple[dict[str, Path], dict | None]:
    """f16 by llama.cpp's converter, then each quantization from it (the `_imat` ones with the importance matrix
    computed on f16); the f16 file stays only if asked for. Returns the files by format and how the importance
    matrix was made (None without one)."""
    files: dict[str, Path] = {}
    if not plan.ggufs:
        return files, None
    f16 = stage.gguf_file(plan.name, "f16")
    convert_hf_to_gguf(stage.merged, f16, "f16", log_file=stage.convert_log)
    step("converted to f16")
    imatrix = None
    if plan.imatrix_formats:
        settings = plan.config.imatrix_settings()
        imatrix = make_imatrix(f16, calibration_file(plan.run, settings), settings, tokenizer, stage, n_threads)
        step(f"importance matrix from {imatrix['tokens']} tokens")
    for fmt in plan.ggufs:
        quant = fmt.removeprefix("gguf-")
        qtype, with_imatrix = split_imatrix_quant(quant)
        out = stage.gguf_file(plan.name, quant)
        if fmt == "gguf-f16":
            files[fmt] = f16
        elif with_imatrix:
            files[fmt] = quantize_with_imatrix(f16, out, qtype, stage.imatrix_file, threads=n_threads, log_file=stage.imatrix_log)
        else:
            files[fmt] = quantize_gguf(f16, out, qtype, threads=n_threads, log_file=stage.quantize_log)
        step(f"{fmt} written")
    if "gguf-f16" not in plan.ggufs:
        f16.unlink()
    return files, imatrix


def _new_report(plan: ExportPlan, info: dict, prompt_source: str, n_prompts: int, answer_tokens: int, reference, t_ref: float) -> dict:
    report = {
        "model": plan.name,
        "model_dir": str(plan.model_dir.resolve()),
        "weights": model_weights(info) or "pretrained",
        "objective": info.get("objective"),
        "base_model": info.get("base_model"),
        "out": str(plan.out),
        "formats": {},
        "checked": plan.check,
        "passed": True,
        "prompts": n_prompts,
        "prompt_source": prompt_source,
        "check_tokens": plan.config.check_tokens,
        "answer_tokens": answer_tokens,
    }
    if reference is not None:
        # greedy generation speed of the PyTorch fp32 model in this check (it also records
        # logit margins per step), next to each GGUF's own speed on the same prompts
        report["pytorch_tokens_per_second"] = round(sum(len(g.ids) for g in reference) / max(t_ref, 1e-9), 1)
        report["pytorch"] = {
            "answers": [g.text for g in reference],
            "prompt_ids": [g.prompt_ids for g in reference],
            "ids": [g.ids for g in reference],
        }
    return report


def _artefact_entry(fmt: str, out: Path, stage: ExportDir, files: dict[str, Path], pair, tokenizer) -> dict:
    """Where the artefact will live, its size and, for a GGUF, whether it carries the chat template and EOS
    (for gguf-lora: the adapter's size and its base's, whose GGUF carries the tokenizer)."""
    if fmt == "merged":
        return {"path": str(ExportDir(out).merged), "bytes": sum(p.stat().st_size for p in stage.merged.rglob("*") if p.is_file())}
    if fmt == GGUF_LORA:
        base, adapter = pair
        where = {"path": str(ExportDir(out).lora), "bytes": adapter.stat().st_size, "adapter": adapter.name}
        where.update(base=base.name, base_bytes=base.stat().st_size, lora_alpha=gguf_metadata(adapter).get("adapter.lora.alpha"))
    else:
        base = files[fmt]
        where = {"path": str(ExportDir(out).gguf / base.name), "bytes": base.stat().st_size}
    meta = gguf_metadata(base)
    # the template tunelab serves with: the GGUF's, else tunelab's default (a base model without one)
    template = meta.get("tokenizer.chat_template") or DEFAULT_CHAT_TEMPLATE
    return where | {
        "gguf": {
            "architecture": meta.get("general.architecture"),
            "file_type": meta.get("general.file_type"),
            "chat_template_equal": template == tokenizer.chat_template,
            "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
            "eos_token_id_equal": meta.get("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id,
        },
    }


def _check_format(
    fmt, stage: ExportDir, files, pair, conversations, reference, answer_tokens, config: ExportConfig, n_threads, step
) -> dict:
    """Greedy answers of one export on the check prompts, compared token by token with the PyTorch model's
    (`files`: the merged model's GGUFs by format; `pair`: gguf-lora's (base, adapter), applied as llama.cpp does)."""
    result: dict = {}
    if fmt == "merged":
        merged = load_causal_lm(stage.merged).eval()
        gens = fc.hf_greedy(merged, load_tokenizer(stage.merged), conversations, answer_tokens, on_done=step)
        del merged
    else:
        base, adapter = pair if fmt == GGUF_LORA else (files[fmt], None)
        chat = LlamaCppChatModel(base, n_threads=n_threads, n_ctx=4096, lora=adapter)
        start = time.time()
        gens = fc.gguf_greedy(chat, conversations, answer_tokens, on_done=step)
        result["tokens_per_second"] = round(sum(len(g.ids) for g in gens) / max(time.time() - start, 1e-9), 1)
        del chat
    gc.collect()
    result.update(fc.compare_tokens(fmt, reference, gens, config.check_tokens))
    result["answers"] = [g.text for g in gens]
    result["prompt_ids"] = [g.prompt_ids for g in gens]
    result["ids"] = [g.ids for g in gens]
    return result


def _require_template_and_eos(entry: dict) -> None:
    """A GGUF that lost the chat template or the EOS token fails, whatever its tokens."""
    if "gguf" in entry and not (entry["gguf"]["chat_template_equal"] and entry["gguf"]["eos_token_id_equal"]):
        entry["passed"] = False
        entry["rule"] += "; the GGUF must carry the chat template and EOS token"


def _score_formats(report: dict, references: list[str], eval_config: EvalConfig) -> None:
    """Metric deltas of each export's full answers against the PyTorch model's, by the evaluation stage's scorer."""
    try:
        metrics, bert = eval_config.metrics, eval_config.bertscore_model
        report["pytorch_metrics"] = fc.score_answers(report["pytorch"]["answers"], references, metrics, bert)
        for entry in report["formats"].values():
            entry["metrics"] = fc.metric_deltas(report["pytorch_metrics"], fc.score_answers(entry["answers"], references, metrics, bert))
    except ImportError as err:
        report["metrics_note"] = f"metric deltas skipped: the evaluation stage is not available ({err})"


def _write_modelfile(path: Path, tokenizer, gguf_file: Path, **files) -> None:
    """An Ollama Modelfile at `path` for `gguf_file` (`files`: the other quantizations, or the LoRA adapter on it)."""
    user_only = tokenizer.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False, add_generation_prompt=True)
    atomic_write_text(path, modelfile_text(gguf_file.name, tokenizer.chat_template, tokenizer.eos_token or "", user_only, **files))


def _write_cards(plan: ExportPlan, stage: ExportDir, info: dict, faith_md: str | None, files: dict[str, Path], pair, imatrix) -> None:
    """The model card in each folder one shares: merged/ and gguf-lora/; the merged folder goes when only the converter needed it."""
    if plan.writes_merged and "merged" not in plan.formats:
        shutil.rmtree(stage.merged)
    common = dict(
        name=plan.name,
        info=info,
        licence=base_licence(info.get("base_model"), base_model_path(plan.model_dir) or plan.model_dir),
        run_root=plan.run.root if plan.run else None,
        faithfulness_md=faith_md,
        merged="merged" in plan.formats,
        gguf_files=[p.name for p in files.values()],
        lora_files=tuple(p.name for p in pair) if pair else None,
        imatrix=imatrix,
    )
    if "merged" in plan.formats:
        atomic_write_text(stage.merged / "README.md", model_card(**common, folder="merged"))
    if pair:
        atomic_write_text(stage.lora_card, model_card(**common, folder=GGUF_LORA))


def _publish(stage: ExportDir, out: ExportDir) -> None:
    """Move the finished artefacts from the staging folder into `out` (each move is a rename)."""
    for p in stage.root.rglob("*"):  # temporary files and folders are private (0600/0700); artefacts are for sharing
        p.chmod(0o755 if p.is_dir() else 0o644)
    out.root.mkdir(parents=True, exist_ok=True)
    for staged, final in ((stage.merged, out.merged), (stage.lora, out.lora), (stage.imatrix, out.imatrix)):  # folders replaced whole
        if staged.is_dir():
            old = out.root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            staged.rename(final)
            shutil.rmtree(old, ignore_errors=True)
    if stage.gguf.is_dir():
        out.gguf.mkdir(exist_ok=True)
        for f in sorted(stage.gguf.iterdir()):
            f.replace(out.gguf / f.name)
    for staged, final in ((stage.faithfulness_json, out.faithfulness_json), (stage.faithfulness_md, out.faithfulness_md)):
        if staged.is_file():
            staged.replace(final)
    if stage.logs.is_dir():
        out.logs.mkdir(exist_ok=True)
        for f in stage.logs.iterdir():
            f.replace(out.logs / f.name)


def export_cli(run: str | Path, formats: list[str] | None = None, out: Path | None = None, check: bool = True) -> dict:
    """The `tunelab export` command: export, print the faithfulness table, fail if a check failed."""
    report = export_run(run, formats, out=out, check=check)
    table = Table(title=f"export of {report['model']}")
    cols = ["format", "artefact", "size"] + (["prompts equal", "agreement", "passed"] if check else [])
    metric_names = sorted({m for e in report["formats"].values() for m in e.get("metrics", {})})
    for c in cols + [f"Δ {m}" for m in metric_names]:
        table.add_column(c, overflow="fold")
    for fmt, e in report["formats"].items():
        row = [fmt, e["path"], fc.size_text(e)]
        if check:
            row += [f"{e['prompts_equal']}/{e['prompts']}", f"{e['agreement']:.1%}", "[green]yes[/]" if e["passed"] else "[red]no[/]"]
        row += [f"{e['metrics'][m]['delta']:+.4f}" if m in e.get("metrics", {}) else "-" for m in metric_names]
        table.add_row(*row)
    print_table(table)
    if report.get("metrics_note"):
        console.print(report["metrics_note"])
    if check and not report["passed"]:
        failed = [f for f, e in report["formats"].items() if not e["passed"]]
        raise TunelabError(
            f"faithfulness check failed for {', '.join(failed)}: see {ExportDir(Path(report['out'])).faithfulness_md} "
            f"(the artefacts were written; rules in faithfulness.json)"
        )
    return report
