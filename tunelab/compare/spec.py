"""The sweep file: a base recipe, the axes to vary, and how the variants are scored.

```yaml
name: identity-sweep            # default: the file name
base: identity-demo.yaml        # a recipe file (relative to this file), or `recipe:` inline
set: {train.max_steps: 30}      # settings applied to every variant (small CPU settings)
grid:                           # every combination of these values ...
  lr: [1.0e-4, 3.0e-4]
variants:                       # ... and/or a listed set of variants
  - name: baseline
  - name: rank-32
    set: {train.lora.r: 32}
baseline: baseline              # default: the first variant
seeds: [1, 2, 3]                # repeat every variant over these training seeds
heldout: {from_source: 0, size: 24}   # or {path: FILE, max_examples: 40}
task_metric: rougeL             # the task gain weighed against general ability (default below)
```

Axes are dotted recipe paths (`train.lora.r`, `data.sources.1.weight`) or friendly
aliases (`rank`, `lr`, `mix.1`, `share.1`). Every axis is checked against the recipe's pydantic model
and every variant is validated as a full recipe before anything runs.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, Field, ValidationError

from tunelab.config import (
    HOW_NOT_WHAT_TRAIN_FIELDS,
    OLD_SPELLING_GOES,
    OLD_TRAIN_FIELDS,
    Recipe,
    RowTemplate,
    Strict,
    format_validation_error,
    read_yaml_mapping,
    recipe_from_dict,
    set_old_train_field,
    upgrade_old_train_fields,
)
from tunelab.data.code_problems import REPORTED_HALF, half_metric
from tunelab.errors import ConfigError
from tunelab.evaluate.metric_facts import METRICS
from tunelab.progress import console

# Friendly names for common axes. `mix.N` / `weight.N` mean data.sources.N.weight.
AXIS_ALIASES: dict[str, str] = {
    "base_model": "model",
    "model": "model",
    "weights": "train.weights",
    "objective": "train.objective",
    "method": "train.method",  # the old spelling of the two above, for one release
    "lr": "train.learning_rate",
    "learning_rate": "train.learning_rate",
    "epochs": "train.epochs",
    "steps": "train.max_steps",
    "max_steps": "train.max_steps",
    "beta": "train.preference.beta",
    "rank": "train.lora.r",
    "lora_rank": "train.lora.r",
    "alpha": "train.lora.alpha",
    "lora_alpha": "train.lora.alpha",
    "target_modules": "train.lora.target_modules",
    "interpolation": "train.interpolation",
    "early_stopping_patience": "train.early_stopping_patience",
    "clean": "data.clean",
    "cleaning": "data.clean",
    "dedup": "data.dedup",
    "near_dup_threshold": "data.near_dup_threshold",
    "quality_filter": "data.quality_filter",
    "max_tokens": "data.max_tokens",
    "min_tokens": "data.min_tokens",
    "min_answer_chars": "data.min_answer_chars",
    "data_size": "data.max_examples",
    "paraphrase": "data.augment.paraphrase",
    "template_variation": "data.augment.template_variation",
}

# Plain names for the report ("Raising LoRA rank 8→32 ...").
AXIS_LABELS: dict[str, str] = {
    "model": "the base model",
    "train.weights": "what training updates",
    "train.objective": "the training objective",
    "train.preference.beta": "the DPO/ORPO β",
    "train.learning_rate": "learning rate",
    "train.epochs": "epochs",
    "train.max_steps": "training steps",
    "train.lora.r": "LoRA rank",
    "train.lora.alpha": "LoRA alpha",
    "train.lora.target_modules": "LoRA target modules",
    "train.interpolation": "the interpolation toward the tuned weights (α)",
    "train.early_stopping_patience": "the early-stopping patience",
    "data.clean": "data cleaning",
    "data.dedup": "deduplication",
    "data.near_dup_threshold": "the near-duplicate threshold",
    "data.quality_filter": "the quality filter",
    "data.max_tokens": "the length limit (tokens)",
    "data.min_tokens": "the minimum length (tokens)",
    "data.max_examples": "data size",
    "data.augment.paraphrase": "paraphrase augmentation",
    "data.augment.template_variation": "template variation",
    "data.sources": "the training mix",
}

# Settings that never make two variants different runs (they are set by the sweep itself).
IGNORED_IN_IDENTITY = ("name", "output_dir")


class HeldoutSpec(Strict):
    path: str | None = Field(None, description="A held-out file (any supported format); default: carve it out of a training source.")
    format: str = "auto"
    placeholders: dict[str, str] = Field(default_factory=dict)
    template: RowTemplate | None = Field(None, description="With `path`: how a table row becomes an example (as for a data source).")
    max_examples: int | None = Field(None, gt=0, description="With `path`: take at most this many examples (seeded sample).")
    from_source: int = Field(0, ge=0, description="Without `path`: index of the base recipe's source the held-out set is carved from.")
    size: int = Field(30, gt=0, description="Without `path`: number of examples carved out (removed from that source for every variant).")
    seed: int = 0


class ServingSpec(Strict):
    """`serving:` in a sweep file: measure what each variant's GGUF costs to serve on this CPU (tunelab.serve.cost)."""

    prompts: int = Field(3, gt=0, description="How many held-out prompts (the first ones) each GGUF answers; the medians are kept.")
    tokens: int = Field(128, gt=0, description="New tokens per answer at most (greedy; an answer may end sooner).")
    wait_idle_s: float = Field(
        600,
        ge=0,
        description="How long to wait for an idle machine before each measurement; still busy, it is left for the next `tunelab sweep`.",
    )


class VariantSpec(Strict):
    name: str
    set: dict[str, Any] = Field(default_factory=dict)


class SweepSpec(Strict):
    name: str | None = None
    base: str | None = Field(None, description="Base recipe file, relative to the sweep file.")
    recipe: dict[str, Any] | None = Field(None, description="Inline base recipe (instead of `base`).")
    output_dir: str = Field("runs/sweeps", description="The sweep folder is <output_dir>/<name>.")
    set: dict[str, Any] = Field(default_factory=dict, description="Settings applied to every variant.")
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    variants: list[VariantSpec] = Field(default_factory=list)
    baseline: str | None = None
    seeds: list[int] | None = None
    heldout: HeldoutSpec = Field(default_factory=HeldoutSpec)
    task_metric: str | None = Field(
        None,
        description="The task metric `tunelab compare` weighs against general ability (default: the recipe's eval.task, "
        "else its first eval.metrics entry; bertscore means BERTScore F1).",
    )
    serving: ServingSpec | None = Field(
        None,
        description="Measure what each variant costs to serve on this CPU: every variant exports its recipe's merged GGUF formats before "
        "it is evaluated, and after the sweep its GGUF (the one eval.generation_backend 'gguf' scores) is timed at batch 1, one at a "
        "time on an idle machine. `tunelab compare` then shows quality against tokens/s.",
    )


@dataclass
class Variant:
    name: str
    settings: dict[str, Any]  # canonical axis path -> value, as written in the sweep
    raw: dict  # the full recipe as a dict (before the sweep's run placement)
    recipe: Recipe  # validated
    config_id: str  # hash of the resolved recipe without the seed
    kinds: set[str] = field(default_factory=set)  # {"model", "data"}


@dataclass
class Sweep:
    name: str
    file: Path
    spec: SweepSpec
    base_raw: dict
    variants: list[Variant]
    baseline: Variant
    seeds: list[int]
    task_metric: str  # the metric whose gain `tunelab compare` weighs against general ability

    @property
    def folder(self) -> Path:
        return Path(self.spec.output_dir) / self.name


# ---------------------------------------------------------------- axes
def canonical_axis(axis: str) -> str:
    axis = axis.strip()
    m = re.fullmatch(r"(?:mix|weight)\.(\d+)", axis)
    if m:
        return f"data.sources.{m.group(1)}.weight"
    m = re.fullmatch(r"share\.(\d+)", axis)
    if m:
        return f"data.sources.{m.group(1)}.share"
    return AXIS_ALIASES.get(axis, axis)


def axis_kind(path: str) -> str:
    """'data' for data-centric axes, 'model' for model-centric ones."""
    return "data" if path.startswith("data.") or path == "data" else "model"


def _unwrap(annotation) -> tuple[str, Any]:
    """Classify a field annotation: ('model', cls), ('list', item annotation) or ('value', None)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            kind, inner = _unwrap(arg)
            if kind != "value":
                return kind, inner
        return "value", None
    if origin is list:
        return "list", typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    return "value", None


def check_axis(path: str, raw: dict, where: str, allow_eval: bool = False) -> None:
    """Refuse an axis the recipe does not have, naming the nearest valid choices."""
    if path in OLD_TRAIN_FIELDS:  # set as the new fields it stands for (set_path)
        return
    parts = path.split(".")
    model: type[BaseModel] = Recipe
    node: Any = raw
    kind = "model"
    item = None
    for i, part in enumerate(parts):
        sofar = ".".join(parts[: i + 1])
        if kind == "model":
            if part not in model.model_fields:
                choices = ", ".join(model.model_fields)
                raise ConfigError(f"{where}: axis '{path}': the recipe has no '{sofar}' (choices at this level: {choices})")
            if not allow_eval and (part == "eval" or sofar.startswith("eval.")):
                raise ConfigError(
                    f"{where}: axis '{path}': evaluation settings are fixed for the whole sweep (every variant is scored the same way)"
                )
            kind, item = _unwrap(model.model_fields[part].annotation)
            if kind == "model":
                model = item
            node = node.get(part) if isinstance(node, dict) else None
        elif kind == "list":
            if not part.isdigit():
                raise ConfigError(f"{where}: axis '{path}': '{'.'.join(parts[:i])}' is a list; use an index like {'.'.join(parts[:i])}.0")
            length = len(node) if isinstance(node, list) else 0
            if int(part) >= length:
                raise ConfigError(
                    f"{where}: axis '{path}': the base recipe's '{'.'.join(parts[:i])}' has {length} entries, so index {part} does not exist"
                )
            node = node[int(part)]
            kind, item = _unwrap(item)
            if kind == "model":
                model = item
        else:
            raise ConfigError(f"{where}: axis '{path}': '{'.'.join(parts[:i])}' is a value, not a section")


def set_path(raw: dict, path: str, value: Any, where: str = "") -> None:
    if path in OLD_TRAIN_FIELDS:
        set_old_train_field(raw, path, value, f"{where}axis '{path}'")
        return
    parts = path.split(".")
    node: Any = raw
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = copy.deepcopy(value)
    else:
        node[last] = copy.deepcopy(value)


# ---------------------------------------------------------------- identity
def resolved_dict(recipe: Recipe) -> dict:
    d = recipe.model_dump(mode="json")
    for key in IGNORED_IN_IDENTITY:
        d.pop(key, None)
    return d


def hash_obj(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_id(recipe: Recipe) -> str:
    """Hash of the resolved recipe (every default filled in), without name, folder, seed and the train fields that
    change how a run goes, not what it computes."""
    d = resolved_dict(recipe)
    d["train"].pop("seed", None)
    # how a run goes is not what it computes: hashed at the values every store began with, so a new default for
    # one of them (train.compile became `auto`) or a sweep that sets one re-runs nothing
    d["train"].update({key: HASHED_AS[key] for key in HOW_NOT_WHAT_TRAIN_FIELDS})
    return hash_obj(hashed_as_one_method(without_added_later(d)))[:16]


# Fields added after the stores began, with the value every run had before they existed: hashed only when
# set to something else, so the ids runs already have hold (a sweep re-runs nothing for a new default field).
# A field of `eval.code` is hashed only where the recipe scores code (eval.task: code): elsewhere it changes
# nothing, so a new default there (chat_answer's code_block) leaves every other recipe's id as it was.
ADDED_LATER = {("export", "imatrix"): None, ("eval", "code", "half"): "all", ("eval", "code", "chat_answer"): "body"}
CODE_SETTINGS = ("eval", "code")


def without_added_later(d: dict, root: tuple[str, ...] = ()) -> dict:
    """`d`, a resolved recipe (or its section at `root`, e.g. ("eval",)), less the ADDED_LATER fields that hold their
    old value or, under `eval.code`, that a recipe not scoring code never reads."""
    evaluation = d if root == ("eval",) else d.get("eval") if not root else None
    scores_code = isinstance(evaluation, dict) and evaluation.get("task") == "code"
    for path, old in ADDED_LATER.items():
        if path[: len(root)] != root:
            continue
        *parents, key = path[len(root) :]
        node = d
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and (node.get(key, old) == old or (path[:2] == CODE_SETTINGS and not scores_code)):
            node.pop(key, None)
    return d


HASHED_AS = {"threads": None, "compile": False, "logging_steps": 5, "mlflow": False, "tensorboard": True}


def hashed_as_one_method(d: dict) -> dict:
    """A resolved recipe with the two axes of training spelled as they were when the sweep stores began:
    one `train.method` (the weights for SFT, else the objective) and `train.preference.weights`. Hashed in
    that spelling, a recipe keeps the id its runs already have, whichever spelling it is written in."""
    train = d["train"]
    weights, objective = train.pop("weights"), train.pop("objective")
    train["method"] = weights if objective == "sft" else objective
    train["preference"]["weights"] = weights if objective != "sft" else "lora"  # lora: what SFT recipes held there
    return d


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = obj
    return out


def recipe_changes(base: Recipe, other: Recipe) -> dict[str, tuple[Any, Any]]:
    """Settings that differ between two resolved recipes: path -> (base value, other value)."""
    a, b = resolved_dict(base), resolved_dict(other)
    for d in (a, b):
        d["train"].pop("seed", None)
        d["data"].pop("eval_source", None)
    if len(a["data"]["sources"]) != len(b["data"]["sources"]):
        changes = {"data.sources": (describe_sources(a["data"]["sources"]), describe_sources(b["data"]["sources"]))}
        a["data"].pop("sources")
        b["data"].pop("sources")
    else:
        changes = {}
    fa, fb = flatten(a), flatten(b)
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key) != fb.get(key):
            changes[key] = (fa.get(key), fb.get(key))
    return changes


def describe_sources(sources: list[dict]) -> str:
    parts = []
    for s in sources:
        label = Path(s["path"]).name + (" functions" if s.get("format") == "python_functions" else "")
        if s.get("answers", "any") != "any":
            label += f" ({s['answers']} answers)"
        if s.get("weight", 1.0) != 1.0:
            label += f"×{s['weight']:g}"
        if s.get("max_examples"):
            label += f"[{s['max_examples']}]"
        if s.get("share") is not None:
            label += f" (share {s['share']:g})"
        parts.append(label)
    return " + ".join(parts)


# ---------------------------------------------------------------- loading
def _variant_name(settings: dict[str, Any]) -> str:
    bits = []
    for path, value in settings.items():
        short = path.split(".")[-1] if not path.startswith("data.sources.") else "mix" + path.split(".")[2]
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        bits.append(f"{short}={text}")
    name = ",".join(bits) or "base"
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", name)[:80]


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    raw_spec = read_yaml_mapping(path, "sweep", "base, grid/variants, ...")
    try:
        spec = SweepSpec.model_validate(raw_spec)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err).replace("invalid recipe", "invalid sweep file")) from None
    return build_sweep(spec, path)


def _resolve_source_paths(raw: dict, folder: Path) -> None:
    """Data paths are relative to the file that names them, unless they exist from the working directory."""
    data = raw.get("data") or {}
    for src in list(data.get("sources") or []) + ([data["eval_source"]] if data.get("eval_source") else []):
        if isinstance(src, dict) and isinstance(src.get("path"), str):
            p = Path(src["path"])
            if not p.is_absolute() and not p.exists() and (folder / p).exists():
                src["path"] = str((folder / p).resolve())


def _base_recipe_dict(spec: SweepSpec, file: Path) -> dict:
    if (spec.base is None) == (spec.recipe is None):
        raise ConfigError(f"{file}: give exactly one of `base:` (a recipe file) or `recipe:` (an inline recipe)")
    if spec.recipe is not None:
        raw = copy.deepcopy(spec.recipe)
        recipe_dir = file.parent
    else:
        base_path = Path(spec.base)
        if not base_path.is_absolute() and not base_path.exists():
            base_path = file.parent / base_path
        try:
            raw = yaml.safe_load(base_path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{file}: base recipe '{spec.base}' not found (looked in {base_path})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{base_path}: a recipe must be a mapping of sections")
        recipe_dir = base_path.parent
    _resolve_source_paths(raw, recipe_dir)
    return raw


def build_sweep(spec: SweepSpec, file: Path) -> Sweep:
    file = Path(file)
    name = spec.name or file.stem
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise ConfigError(f"{file}: sweep name '{name}' must be a plain folder name")
    base_raw = _base_recipe_dict(spec, file)
    note_old_spelling(spec, base_raw, file)
    for axis, value in spec.set.items():
        path = canonical_axis(axis)
        check_axis(path, base_raw, f"{file}: set", allow_eval=True)
        set_path(base_raw, path, value, f"{file}: set: ")
    _resolve_source_paths(base_raw, file.parent)

    variants = [_make_variant(vname, settings, base_raw, file) for vname, settings in _planned_variants(spec, base_raw, file)]
    _check_distinct(variants, file)
    baseline = _pick_baseline(spec, variants, file)
    for v in variants:
        v.kinds = {axis_kind(p) for p in recipe_changes(baseline.recipe, v.recipe)}

    seeds = spec.seeds or [baseline.recipe.train.seed]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{file}: seeds repeat a value: {seeds}")
    held = spec.heldout
    if held.path is None:
        sources = baseline.recipe.data.sources
        if held.from_source >= len(sources):
            raise ConfigError(f"{file}: heldout.from_source is {held.from_source} but the base recipe has {len(sources)} source(s)")
    task_metric = resolve_task_metric(spec, baseline.recipe, file)
    return Sweep(
        name=name, file=file, spec=spec, base_raw=base_raw, variants=variants, baseline=baseline, seeds=seeds, task_metric=task_metric
    )


def note_old_spelling(spec: SweepSpec, base_raw: dict, file: Path) -> None:
    """Upgrade the base recipe's old `train.method` (with its message), and say once per old axis what it is now."""
    note = upgrade_old_train_fields(base_raw, f"{file}: {spec.base or 'recipe'}")
    if note:
        console.print(note)
    axes = [*spec.set, *spec.grid, *(axis for v in spec.variants for axis in v.set)]
    for axis in dict.fromkeys(a for a in axes if canonical_axis(a) in OLD_TRAIN_FIELDS):
        console.print(
            f"[yellow]deprecated:[/] {file}: the axis '{axis}' is now two, `objective` (sft, dpo, orpo) and `weights` "
            f"(lora, qlora, full); {OLD_SPELLING_GOES}"
        )


def resolve_task_metric(spec: SweepSpec, recipe: Recipe, file: Path) -> str:
    """The sweep's task metric: `task_metric:`, else the recipe's task, else its first metric; one the sweep scores."""
    ev = recipe.eval
    scored = ["bertscore_f1" if m == "bertscore" else m for m in ev.metrics]
    if ev.task == "code":  # pass@1 on the declared test half: the column a code sweep reports (its dev half is for choosing)
        scored.insert(0, half_metric(REPORTED_HALF))
    elif ev.task != "none":
        scored.insert(0, ev.task)
    if spec.task_metric is None:
        return scored[0]
    if spec.task_metric not in scored and spec.task_metric not in METRICS:  # METRICS: e.g. preference accuracy, scored on pairs
        raise ConfigError(f"{file}: task_metric '{spec.task_metric}' is no metric tunelab scores (this sweep's: {', '.join(scored)})")
    return spec.task_metric


def _planned_variants(spec: SweepSpec, base_raw: dict, file: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, {axis path: value}) of every variant: the grid expanded, then the listed variants; names checked."""
    planned: list[tuple[str, dict[str, Any]]] = []
    if spec.grid:
        axes = []
        for axis, values in spec.grid.items():
            path = canonical_axis(axis)
            check_axis(path, base_raw, f"{file}: grid")
            if not values:
                raise ConfigError(f"{file}: grid axis '{axis}' has no values")
            axes.append((path, values))
        for combo in itertools.product(*[values for _, values in axes]):
            settings = {path: value for (path, _), value in zip(axes, combo)}
            planned.append((_variant_name(settings), settings))
    for v in spec.variants:
        settings = {}
        for axis, value in v.set.items():
            path = canonical_axis(axis)
            check_axis(path, base_raw, f"{file}: variant '{v.name}'")
            settings[path] = value
        planned.append((v.name, settings))
    if not planned:
        raise ConfigError(f"{file}: no variants; give `grid:` axes and/or a `variants:` list")
    seen_names: set[str] = set()
    for vname, _ in planned:
        if not re.fullmatch(r"[A-Za-z0-9._=,+-]+", vname):
            raise ConfigError(f"{file}: variant name '{vname}' may hold only letters, digits and . _ = , + -")
        if vname in seen_names:
            raise ConfigError(f"{file}: two variants are named '{vname}'")
        seen_names.add(vname)
    return planned


def _make_variant(vname: str, settings: dict[str, Any], base_raw: dict, file: Path) -> Variant:
    raw = copy.deepcopy(base_raw)
    for path, value in settings.items():
        set_path(raw, path, value, f"{file}: variant '{vname}': ")
    _resolve_source_paths(raw, file.parent)
    raw["name"] = vname
    recipe = recipe_from_dict(copy.deepcopy(raw), f"{file}: variant '{vname}'")
    return Variant(name=vname, settings=settings, raw=raw, recipe=recipe, config_id=config_id(recipe))


def _check_distinct(variants: list[Variant], file: Path) -> None:
    by_id: dict[str, Variant] = {}
    for v in variants:
        if v.config_id in by_id:
            other = by_id[v.config_id]
            raise ConfigError(
                f"{file}: variants '{other.name}' and '{v.name}' are identical once every default is filled in "
                f"(same resolved recipe {v.config_id}); remove one or change a setting"
            )
        by_id[v.config_id] = v


def _pick_baseline(spec: SweepSpec, variants: list[Variant], file: Path) -> Variant:
    if spec.baseline is None:
        return variants[0]
    matches = [v for v in variants if v.name == spec.baseline]
    if not matches:
        raise ConfigError(f"{file}: baseline '{spec.baseline}' is not one of the variants ({', '.join(v.name for v in variants)})")
    return matches[0]
