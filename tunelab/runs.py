"""The run directory: every stage reads and writes here. Layout in docs/run-directory.md.

This module is the one place that names the run's files. Stages that build a folder in a
staging location first (data, eval, export) use the folder layouts `DataDir`, `EvalDir` and
`ExportDir` on that location; `RunDir` gives the same layouts at their final place. It also
owns the trained model's provenance file (`tunelab_model.json`): read it with
`read_model_info`, write it with `write_model_info`, find the folder with `trained_model_dir`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.io import atomic_write_json, read_json

MODEL_INFO = "tunelab_model.json"  # beside the trained weights: base model, weights, objective, recipe
# where runs go and where serving looks for them, unless a recipe's output_dir or --runs says otherwise
DEFAULT_RUNS_DIR = Path("runs")


# ---------------------------------------------------------------- GGUF files: <name>-<quant>.gguf
def gguf_name(name: str, quant: str) -> str:
    """The file name of model `name`'s GGUF in quantization `quant` (f16, q8_0, q4_k_m)."""
    return f"{name}-{quant}.gguf"


def split_gguf_name(path: str | Path) -> tuple[str, str] | None:
    """(model name, quantization) of a GGUF file named by `gguf_name` (`demo-q8_0.gguf` -> ("demo", "q8_0")),
    None for another name. Quantization names hold no '-', so the part after the last one is the quantization."""
    path = Path(path)
    name, _, quant = path.stem.rpartition("-")
    return (name, quant.lower()) if path.suffix == ".gguf" and name and quant else None


def gguf_quant(path: str | Path) -> str | None:
    """The quantization a GGUF file's name ends with (`demo-q8_0.gguf` -> "q8_0"), None for another name."""
    parts = split_gguf_name(path)
    return parts[1] if parts else None


# a quantization made with an importance matrix is named `<llama.cpp type>_imat` (`q4_k_m_imat`): beside the
# plain file of the same type, and with no '-' (split_gguf_name)
IMATRIX_MARK = "_imat"


def imatrix_quant(quant: str) -> str:
    """The name of llama.cpp quantization `quant` made with an importance matrix: q4_k_m -> q4_k_m_imat."""
    return quant + IMATRIX_MARK


def split_imatrix_quant(quant: str) -> tuple[str, bool]:
    """(llama.cpp quantization, made with an importance matrix) of a quantization name: q4_k_m_imat ->
    ("q4_k_m", True), q8_0 -> ("q8_0", False)."""
    return (quant.removesuffix(IMATRIX_MARK), True) if quant.endswith(IMATRIX_MARK) else (quant, False)


# ---------------------------------------------------------------- the trained model's folder
def trained_model_dir(ref: str | Path) -> Path | None:
    """The `model/` folder of a run directory, or the folder itself if it holds tunelab_model.json; else None."""
    path = Path(ref)
    if (path / "model" / MODEL_INFO).is_file():
        return path / "model"
    if (path / MODEL_INFO).is_file():
        return path
    return None


def read_model_info(model_dir: str | Path) -> dict:
    """tunelab_model.json of a trained model folder ({} for a folder without one, e.g. a plain Hugging Face model)."""
    path = Path(model_dir) / MODEL_INFO
    if not path.is_file():
        return {}
    info = read_json(path)
    if not isinstance(info, dict):
        raise TunelabError(f"{path}: must hold a JSON object (base_model, weights, ...), not {type(info).__name__}")
    return info


def write_model_info(model_dir: str | Path, info: dict) -> Path:
    path = Path(model_dir) / MODEL_INFO
    atomic_write_json(path, info)
    return path


def require_base_model(model_dir: str | Path, info: dict) -> str:
    """The base model reference recorded for a trained model; a clear error when it is missing."""
    ref = info.get("base_model")
    if not ref or not isinstance(ref, str):
        raise TunelabError(f"{Path(model_dir) / MODEL_INFO}: field 'base_model' is missing, so the model's base is unknown")
    return ref


def model_weights(info: dict) -> str | None:
    """What a trained model's weights are, from its model info: lora, qlora or full (None: not a tunelab run).
    Folders trained before the key was `weights` wrote the same value as `method`."""
    return info.get("weights", info.get("method"))


def model_interpolation(model_dir: str | Path, info: dict) -> float:
    """α of the WiSE-FT interpolation a trained model loads with (base + α × (tuned − base)); 1 when none is recorded."""
    alpha = info.get("interpolation", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise TunelabError(f"{Path(model_dir) / MODEL_INFO}: field 'interpolation' is {alpha!r}; it must be a number from 0 to 1")
    return float(alpha)


def is_adapter(model_dir: str | Path) -> bool:
    """A LoRA/QLoRA adapter (peft's adapter_config.json) rather than full weights."""
    return (Path(model_dir) / "adapter_config.json").is_file()


# ---------------------------------------------------------------- folder layouts
@dataclass(frozen=True)
class DataDir:
    """data/: the prepared splits and the data card."""

    root: Path

    def split(self, name: str) -> Path:
        return self.root / f"{name}.jsonl"

    @property
    def card_json(self) -> Path:
        return self.root / "card.json"

    @property
    def card_md(self) -> Path:
        return self.root / "card.md"

    @property
    def lengths_plot(self) -> Path:
        return self.root / "lengths.png"


@dataclass(frozen=True)
class EvalDir:
    """eval/: scores with intervals, per-example predictions, the summary and plots."""

    root: Path

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.jsonl"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def samples_html(self) -> Path:
        return self.root / "samples.html"

    @property
    def metrics_plot(self) -> Path:
        return self.root / "metrics.png"

    # people's blind A/B votes (serve UI, Evaluate tab) and their statistics; the evaluate stage
    # carries these over when it rebuilds eval/ (tunelab.evaluate.human.keep_votes)
    @property
    def human_votes(self) -> Path:
        """Append-only, one JSON line per vote."""
        return self.root / "human_votes.jsonl"

    @property
    def human_json(self) -> Path:
        """`tunelab votes`' statistics of those votes."""
        return self.root / "human.json"

    @property
    def human_md(self) -> Path:
        return self.root / "human.md"


@dataclass(frozen=True)
class BenchmarkDir:
    """eval/benchmarks/<name>/ (or `tunelab benchmark --out`): a multiple-choice or code benchmark's scores."""

    root: Path

    @property
    def benchmark_json(self) -> Path:
        return self.root / "benchmark.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.jsonl"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def errors_md(self) -> Path:
        """A code benchmark's error analysis: each problem's outcome, first error line and completion."""
        return self.root / "errors.md"


@dataclass(frozen=True)
class PreferenceEvalDir:
    """eval/preference/: held-out preference accuracy of preference pairs, base against tuned."""

    root: Path

    @property
    def preference_json(self) -> Path:
        return self.root / "preference.json"

    @property
    def pairs(self) -> Path:
        return self.root / "pairs.jsonl"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"


@dataclass(frozen=True)
class ExportDir:
    """export/ (or `tunelab export --out`): merged folder, GGUF files, the faithfulness check, logs."""

    root: Path

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def gguf(self) -> Path:
        return self.root / "gguf"

    def gguf_files(self) -> list[Path]:
        return sorted(self.gguf.glob("*.gguf")) if self.gguf.is_dir() else []

    def gguf_file(self, name: str, quant: str) -> Path:
        """gguf/<name>-<quant>.gguf: where the export writes model `name` in quantization `quant`."""
        return self.gguf / gguf_name(name, quant)

    def ggufs_by_quant(self) -> dict[str, Path]:
        """The GGUF files by the quantization their names end with ({"q8_0": .../demo-q8_0.gguf})."""
        found: dict[str, Path] = {}
        for path in self.gguf_files():
            quant = gguf_quant(path)
            if quant:
                found.setdefault(quant, path)
        return found

    @property
    def modelfile(self) -> Path:
        return self.gguf / "Modelfile"

    # gguf-lora/: the LoRA adapter as a GGUF, its base model's GGUF and a Modelfile pairing them; a
    # folder of its own, so that nothing taking export/gguf/ for whole models finds the adapter there
    @property
    def lora(self) -> Path:
        return self.root / "gguf-lora"

    def lora_adapter(self, name: str) -> Path:
        """gguf-lora/<name>-lora-f16.gguf: model `name`'s LoRA adapter (f16), named as the model `<name>-lora`."""
        return self.lora / gguf_name(f"{name}-lora", "f16")

    def lora_base(self, base_name: str, quant: str) -> Path:
        """gguf-lora/<base_name>-<quant>.gguf: the base model's GGUF the adapter is applied to."""
        return self.lora / gguf_name(base_name, quant)

    @property
    def lora_modelfile(self) -> Path:
        return self.lora / "Modelfile"

    @property
    def lora_card(self) -> Path:
        """gguf-lora/README.md: the model card, which says what each file needs."""
        return self.lora / "README.md"

    # imatrix/: llama.cpp's importance matrix of the `_imat` quantizations and the text it was computed on
    @property
    def imatrix(self) -> Path:
        return self.root / "imatrix"

    @property
    def imatrix_file(self) -> Path:
        """imatrix/imatrix.gguf: llama-imatrix's output (per-tensor activation statistics; `llama-quantize
        --imatrix` reads it); not a model, so it is kept out of gguf/."""
        return self.imatrix / "imatrix.gguf"

    @property
    def calibration_text(self) -> Path:
        """imatrix/calibration.txt: the calibration text, training conversations rendered with the chat template."""
        return self.imatrix / "calibration.txt"

    @property
    def source_json(self) -> Path:
        """Only in tunelab's cache of base models' GGUFs (<cache>/base-exports/<model>/): which folder and
        weights they were converted from, so a changed model is converted again."""
        return self.root / "source.json"

    @property
    def faithfulness_json(self) -> Path:
        return self.root / "faithfulness.json"

    @property
    def faithfulness_md(self) -> Path:
        return self.root / "faithfulness.md"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def convert_log(self) -> Path:
        """llama.cpp's converter output (HF folder -> f16 GGUF)."""
        return self.logs / "convert.log"

    @property
    def quantize_log(self) -> Path:
        return self.logs / "quantize.log"

    @property
    def imatrix_log(self) -> Path:
        """llama-imatrix's and llama-quantize's output for the `_imat` quantizations."""
        return self.logs / "imatrix.log"

    @property
    def convert_lora_log(self) -> Path:
        """llama.cpp's LoRA converter output (adapter folder -> adapter GGUF)."""
        return self.logs / "convert_lora.log"

    @property
    def space(self) -> Path:
        """`tunelab export --format space`: a folder to push to a Hugging Face Space (tunelab/export/space.py)."""
        return self.root / "space"


# ---------------------------------------------------------------- the run directory
@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_model(cls, ref: str | Path) -> RunDir | None:
        """The run directory a trained model belongs to: `ref` itself or its `model/` folder's parent."""
        model_dir = trained_model_dir(ref)
        if model_dir is None or model_dir.name != "model":
            return None
        return cls(model_dir.parent)

    # top level
    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    # data/
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def data_dir(self) -> DataDir:
        return DataDir(self.data)

    def split(self, name: str) -> Path:
        return self.data_dir.split(name)

    @property
    def data_card(self) -> Path:
        return self.data_dir.card_json

    # train/
    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def checkpoints(self) -> Path:
        return self.train / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.train / "metrics.jsonl"

    @property
    def train_summary(self) -> Path:
        return self.train / "summary.json"

    @property
    def loss_plot(self) -> Path:
        return self.train / "loss.png"

    # model/ (final adapter or full weights, with tunelab_model.json)
    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def model_info_file(self) -> Path:
        return self.model / MODEL_INFO

    def has_model(self) -> bool:
        """Training finished and wrote model/ (with its tunelab_model.json)."""
        return self.model_info_file.is_file()

    def model_info(self) -> dict:
        return read_model_info(self.model)

    def base_model(self) -> str:
        """The base model this run was tuned from (as the recipe named it)."""
        return require_base_model(self.model, self.model_info())

    # eval/
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def eval_dir(self) -> EvalDir:
        return EvalDir(self.eval)

    @property
    def human_votes(self) -> Path:
        return self.eval_dir.human_votes

    @property
    def benchmarks(self) -> Path:
        """eval/benchmarks/: one folder per multiple-choice benchmark (ARC) scored base against tuned."""
        return self.eval / "benchmarks"

    def benchmark(self, name: str) -> Path:
        return self.benchmarks / name

    @property
    def preference_eval(self) -> Path:
        """eval/preference/: held-out preference accuracy, when the test split holds preference pairs."""
        return self.eval / "preference"

    @property
    def preference_eval_dir(self) -> PreferenceEvalDir:
        return PreferenceEvalDir(self.preference_eval)

    # export/
    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def export_dir(self) -> ExportDir:
        return ExportDir(self.export)

    # state.json: which stages finished
    def stage_done(self, stage: str) -> bool:
        return self.read_state().get(stage, {}).get("done", False)

    def read_state(self) -> dict:
        if not self.state.is_file():
            return {}
        try:
            return json.loads(self.state.read_text())
        except json.JSONDecodeError as err:
            raise TunelabError(f"{self.state}: not valid JSON ({err}); remove it (or pass --restart) to start the run over") from None

    def mark_done(self, stage: str, **info) -> None:
        state = self.read_state()
        state[stage] = {"done": True, "at": now(), **info}
        atomic_write_json(self.state, state)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    names = [
        "tunelab",
        "torch",
        "transformers",
        "peft",
        "trl",
        "datasets",
        "accelerate",
        "bitsandbytes",
        "sacrebleu",
        "rouge-score",
        "bert-score",
        "gguf",
        "llama_cpp_python",
        "gradio",
    ]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine_info() -> dict:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
    }
    try:
        # imported here, not at the top: runs.py sits below every stage, and most (compare, report) never need torch
        import torch

        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def write_environment(run: RunDir) -> None:
    atomic_write_json(run.environment, {"written": now(), "argv": sys.argv, "packages": package_versions(), "machine": machine_info()})
