"""Training: packing without cross-example attention, answer-only labels, resume, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QA, write_alpaca

from tunelab.config import recipe_from_dict
from tunelab.data.render import IGNORE_INDEX, render_example
from tunelab.errors import ConfigError, TunelabError
from tunelab.io import read_jsonl


def make_recipe(tmp_path: Path, model_dir: Path, **train) -> object:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_alpaca(tmp_path / "qa.json")
    raw = {
        "name": "r",
        "output_dir": str(tmp_path / "runs"),
        "model": str(model_dir),
        "data": {"sources": [{"path": str(data)}], "dedup": "exact", "test_fraction": 0.1, "validation_fraction": 0.1},
        "train": {
            "max_steps": 6,
            "batch_size": 4,
            "logging_steps": 1,
            "save_steps": 3,
            "eval_steps": 3,
            "max_seq_length": 128,
            "learning_rate": 5e-3,
            "threads": 1,
            "tensorboard": False,
            **train,
        },
    }
    return recipe_from_dict(raw)


def test_packed_batch_equals_separate_examples(tiny_model_dir):
    """Padding-free packing: the loss of a packed row equals the token-weighted loss of each example alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunelab.models.load import load_tokenizer
    from tunelab.train.collate import PackedCollator, PaddedCollator

    tok = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    examples = [render_example(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in QA[:4]]
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            batch = PaddedCollator(tok.pad_token_id)([ex])
            n = int((batch["labels"][0, 1:] != IGNORE_INDEX).sum())
            total += model(**batch).loss.item() * n
            count += n
        packed = model(**PackedCollator()(examples))
        packed_full = model(**PackedCollator(logits_only_at_labels=False)(examples))
    assert packed.loss.item() == pytest.approx(total / count, rel=1e-4)
    assert packed_full.loss.item() == pytest.approx(total / count, rel=1e-4)
    assert packed.logits.shape[1] == count  # logits only where there is a label


def test_labels_cover_only_answers(tiny_model_dir):
    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    ex = render_example(tok, messages)
    answer = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX])
    assert "Hello there." in answer and "Goodbye." in answer
    assert "Hi" not in answer and "Be brief" not in answer and "Bye<" not in answer
    assert tok.eos_token in answer  # the model learns to stop


def test_lora_presets(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tunelab.train.lora import target_modules

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert target_modules(model, "attention") == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert set(target_modules(model, "attention_mlp")) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with pytest.raises(ConfigError, match="not in this model"):
        target_modules(model, ["c_attn"])


def test_train_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, monkeypatch):
    """A run killed after its step-3 checkpoint and resumed ends with the same loss as one never stopped."""
    from transformers import Trainer, TrainerCallback

    from tunelab.train.run import train_recipe

    (tmp_path / "a").mkdir()
    full_run = train_recipe(make_recipe(tmp_path / "a", tiny_model_dir))
    full_losses = {r["step"]: r["loss"] for r in read_jsonl(full_run / "train" / "metrics.jsonl") if "loss" in r}
    full_summary = json.loads((full_run / "train" / "summary.json").read_text())
    assert full_summary["model_flops_per_token"] > 0 and full_summary["matmul_peak_gflops"] > 0 and full_summary["mfu_note"] is None
    peak_flops = full_summary["matmul_peak_gflops"] * 1e9
    assert full_summary["mfu"] == pytest.approx(
        full_summary["model_flops_per_token"] * full_summary["tokens_per_second"] / peak_flops, rel=1e-9
    )  # unrounded values: with a small MFU (a fast chip, a tiny model) any rounding is a large relative error

    class Killed(Exception):
        pass

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Killed()

    class KillingTrainer(Trainer):
        def __init__(self, *a, **kw):
            kw["callbacks"] = list(kw.get("callbacks") or []) + [KillAfterSave()]
            super().__init__(*a, **kw)

    (tmp_path / "b").mkdir()
    recipe = make_recipe(tmp_path / "b", tiny_model_dir)
    with monkeypatch.context() as patch:
        patch.setattr("tunelab.train.run.Trainer", KillingTrainer)
        with pytest.raises(Killed):
            train_recipe(recipe)
    run_dir = Path(recipe.run_dir())
    assert not (run_dir / "model").exists()  # no final model from a killed run
    with pytest.raises(TunelabError, match="--resume"):
        train_recipe(recipe)  # refuses to silently start over
    resumed = train_recipe(recipe, resume=True)
    losses = {r["step"]: r["loss"] for r in read_jsonl(resumed / "train" / "metrics.jsonl") if "loss" in r}
    assert losses[6] == pytest.approx(full_losses[6], rel=1e-3)
    assert losses[4] == pytest.approx(full_losses[4], rel=1e-3)
    summary = json.loads((resumed / "train" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-3")
    assert summary["mfu"] is None and summary["mfu_note"].startswith("resumed run")  # tokens/s mixes the two sessions
    assert (resumed / "model" / "adapter_model.safetensors").is_file()
    assert (resumed / "train" / "loss.png").is_file()


def test_resume_with_changed_recipe_is_refused(tmp_path, tiny_model_dir):
    from tunelab.train.run import train_recipe

    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=2)
    train_recipe(recipe)
    changed = make_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=2, learning_rate=1e-4)
    with pytest.raises(TunelabError, match="train.learning_rate"):
        train_recipe(changed, resume=True)


def test_full_finetune_and_sequence_length_error(tmp_path, tiny_model_dir):
    from tunelab.report import build_markdown
    from tunelab.runs import RunDir
    from tunelab.train.run import train_recipe

    run = train_recipe(make_recipe(tmp_path / "full", tiny_model_dir, weights="full", max_steps=2, save_steps=2))
    info = json.loads((run / "model" / "tunelab_model.json").read_text())
    assert info["weights"] == "full" and info["objective"] == "sft" and (run / "model" / "model.safetensors").is_file()
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["weights"] == "full" and summary["objective"] == "sft" and "method" not in summary
    report = build_markdown(RunDir(run))
    assert "| weights | objective |" in report and "| full | sft |" in report
    with pytest.raises(TunelabError, match="max_seq_length"):
        train_recipe(make_recipe(tmp_path / "short", tiny_model_dir, max_seq_length=16, max_steps=2))


def test_frozen_weights_are_bf16_where_lora_trains_under_bf16_autocast_on_a_cpu(tmp_path, tiny_model_dir):
    """The frozen base weights are stored in bf16 where supervised LoRA trains under bf16 autocast on a CPU (faster steps
    on the AMX Xeon, less memory on every bf16 CPU: docs/training.md), fp32 where the run trains in fp32;
    `base_dtype` asks for one, and the summary says which a run used."""
    from tunelab.train.run import StepChoices, train_recipe

    def frozen_weights(name, step=StepChoices(), **train):
        run = train_recipe(make_recipe(tmp_path / name, tiny_model_dir, max_steps=1, save_steps=1, **train), step=step)
        return json.loads((run / "train" / "summary.json").read_text())["frozen_weights"]

    assert frozen_weights("fp32", precision="fp32") == "float32"
    assert frozen_weights("bf16", precision="bf16") == "bfloat16"
    assert frozen_weights("bf16-asked-fp32", StepChoices(base_dtype="float32"), precision="bf16") == "float32"
    assert frozen_weights("fp32-asked-bf16", StepChoices(base_dtype="bfloat16"), precision="fp32") == "bfloat16"


def test_a_step_choice_where_it_does_not_apply_is_refused(tmp_path, tiny_model_dir):
    """train_recipe's `step` (what bench/train_throughput.py's ablation varies) is refused before any work where it
    would change nothing: with padded batches there are no packed rows, and a full fine-tune has no frozen base."""
    from tunelab.train.run import StepChoices, train_recipe

    padded = make_recipe(tmp_path / "padded", tiny_model_dir, packing=False)
    for step in (StepChoices(answer_logits=False), StepChoices(attention_per_example=False)):
        with pytest.raises(ConfigError, match="apply to packed supervised training only"):
            train_recipe(padded, step=step)
    with pytest.raises(ConfigError, match="base_dtype applies to supervised LoRA training only, not to full SFT"):
        train_recipe(make_recipe(tmp_path / "full", tiny_model_dir, weights="full"), step=StepChoices(base_dtype="bfloat16"))
    assert not (tmp_path / "padded" / "runs").exists() and not (tmp_path / "full" / "runs").exists()


def test_default_template_for_base_models(tiny_model_dir):
    """Models without a template get tunelab's: BOS first, answers end with EOS, prefixes stay prefixes."""
    from tunelab.models.load import load_tokenizer
    from tunelab.models.templates import DEFAULT_CHAT_TEMPLATE

    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == f"{tok.bos_token}### Instruction:\nHi\n\n### Response:\nHello.{tok.eos_token}\n\n"
    ex = render_example(tok, messages)
    assert tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]) == f"Hello.{tok.eos_token}\n\n"


def test_each_run_logs_tensorboard_into_its_own_folder(tmp_path, tiny_model_dir, monkeypatch):
    """A sweep trains several runs in one process: each run's TensorBoard events land in its own train/tensorboard/.

    TENSORBOARD_LOGGING_DIR was set once per process (setdefault), so every later run logged into the first run's folder.
    """
    from tunelab.train.run import train_recipe

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    runs = [train_recipe(make_recipe(tmp_path / name, tiny_model_dir, max_steps=1, save_steps=1, tensorboard=True)) for name in ("a", "b")]
    for run in runs:
        events = set(run.rglob("events.out.tfevents.*"))
        assert events, f"{run} has no TensorBoard events"
        # all in train/tensorboard, the final validation loss too (logged after training ends, by a new writer)
        assert {e.parent for e in events} == {run / "train" / "tensorboard"}, events


@pytest.mark.slow  # inductor compiles the tiny model's graphs for about a minute on 2 cores
def test_compiled_training_learns_the_same(tmp_path, tiny_model_dir):
    """train.compile=true trains through inductor (graphs are compiled) and logs the eager run's losses."""
    import torch._dynamo

    from tunelab.train.run import train_recipe

    eager = train_recipe(make_recipe(tmp_path / "eager", tiny_model_dir, max_steps=3, save_steps=3))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train_recipe(make_recipe(tmp_path / "compiled", tiny_model_dir, max_steps=3, save_steps=3, compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert torch._dynamo.config.assume_static_by_default  # the dynamic-shape setting stays inside the run

    def losses(run):
        return [r["loss"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in r]

    assert losses(compiled) == pytest.approx(losses(eager), rel=2e-2)
    assert (compiled / "model" / "adapter_model.safetensors").is_file()


def test_compile_without_a_cpp_compiler_is_refused(tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.train.run import train_recipe

    monkeypatch.setattr("tunelab.train.run.has_cpp_compiler", lambda: False)
    with pytest.raises(TunelabError, match="C\\+\\+ compiler"):
        train_recipe(make_recipe(tmp_path, tiny_model_dir, max_steps=1, compile=True))
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_compile_auto_compiles_long_supervised_cpu_runs_only(tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.config import COMPILE_FROM_STEPS
    from tunelab.cpu import CpuFeatures
    from tunelab.train import run as train_run

    def runs_on(*flags: str) -> None:  # whatever CPU runs the test
        monkeypatch.setattr(train_run, "cpu", lambda: CpuFeatures("x86_64", flags=frozenset({"avx2", *flags}), flags_known=True))

    runs_on("avx512_bf16", "amx_bf16", "amx_tile")
    auto = make_recipe(tmp_path, tiny_model_dir)
    assert auto.train.compile == "auto"
    long_run = COMPILE_FROM_STEPS
    assert train_run.compiles(auto, long_run) and not train_run.compiles(auto, long_run - 1)
    assert not train_run.compiles(make_recipe(tmp_path, tiny_model_dir, compile=False), 10 * long_run)
    assert train_run.compiles(make_recipe(tmp_path, tiny_model_dir, compile=True), 1)
    # the norms and MLPs compiled keep the model whole eager: decided here, where the Trainer's arguments (and
    # accelerate's dynamo plugin, which reads their backend) are made, not flipped on the arguments afterwards
    assert not train_run.compiles(auto, long_run, train_run.StepChoices(compiled_norms_and_mlps=True))
    dpo = auto.model_copy(update={"train": auto.train.model_copy(update={"objective": "dpo"})})
    assert dpo.train.objective == "dpo" and not train_run.compiles(dpo, 10 * long_run)  # not measured with TRL's trainers
    runs_on()
    assert train_run.compiles(auto, long_run)  # AVX2 only, fp32: 1.05x per step
    runs_on("avx512_bf16")
    assert not train_run.compiles(auto, 10 * long_run)  # measured 0.98x there: the eager step has what compiling added
    assert train_run.compiles(make_recipe(tmp_path, tiny_model_dir, compile=True), 1)  # still there when asked for
    runs_on("avx512_bf16", "amx_bf16", "amx_tile")
    monkeypatch.setattr("tunelab.train.run.has_cpp_compiler", lambda: False)
    assert not train_run.compiles(auto, 10 * long_run)  # no compiler: auto stays eager instead of failing


def test_a_short_run_with_compile_auto_trains_eager_and_says_so(tmp_path, tiny_model_dir):
    from tunelab.train.run import train_recipe

    run = train_recipe(make_recipe(tmp_path, tiny_model_dir, max_steps=1, save_steps=1))
    assert json.loads((run / "train" / "summary.json").read_text())["compiled"] is False


def test_compiling_or_not_may_change_on_resume(tmp_path, tiny_model_dir):
    from tunelab.train.run import training_fingerprint

    eager = make_recipe(tmp_path, tiny_model_dir)
    assert training_fingerprint(make_recipe(tmp_path, tiny_model_dir, compile=True, threads=2)) == training_fingerprint(eager)
    assert training_fingerprint(make_recipe(tmp_path, tiny_model_dir, learning_rate=1e-4)) != training_fingerprint(eager)


def test_early_stopping_stops_on_the_validation_loss_and_keeps_the_best_model(tmp_path, tiny_model_dir):
    """Every weight at a learning rate of 1 makes the validation loss climb: training stops at the first evaluation
    that is not better (patience 1) long before max_steps, and the model kept is the checkpoint with the best one."""
    from tunelab.train.run import train_recipe

    recipe = make_recipe(
        tmp_path,
        tiny_model_dir,
        weights="full",
        max_steps=12,
        eval_steps=1,
        save_steps=1,
        save_total_limit=12,
        learning_rate=1.0,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        early_stopping_patience=1,
    )
    run = train_recipe(recipe)
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["steps"] < 12, "early stopping did not stop"
    # one evaluation per step while training (the summary's own evaluation of the kept model comes last)
    losses = [r["eval_loss"] for r in read_jsonl(run / "train" / "metrics.jsonl") if "eval_loss" in r][: summary["steps"]]
    assert len(losses) == summary["steps"] and losses[-1] > min(losses[:-1])  # stopped on one that was not better
    assert summary["eval_loss"] == pytest.approx(min(losses)) and summary["eval_loss"] < losses[-1]  # the best model is kept


def test_early_stopping_without_validation_examples_is_refused(tmp_path, tiny_model_dir):
    from tunelab.runs import RunDir
    from tunelab.train.run import check_early_stopping

    recipe = make_recipe(tmp_path, tiny_model_dir, early_stopping_patience=2)
    run = RunDir(recipe.run_dir())
    check_early_stopping(recipe, run, has_validation=True)
    with pytest.raises(TunelabError, match=r"train.early_stopping_patience: .*validation.jsonl holds no validation example"):
        check_early_stopping(recipe, run, has_validation=False)
    check_early_stopping(make_recipe(tmp_path, tiny_model_dir), run, has_validation=False)  # no early stopping: nothing to check


def test_the_cli_names_the_two_axes_and_the_old_method_option_still_works(tmp_path, capsys):
    from tunelab.train.run import recipe_from_cli

    train = recipe_from_cli(None, data=["x.json"], weights="qlora", objective="orpo").train
    assert (train.weights, train.objective) == ("qlora", "orpo")
    train = recipe_from_cli(None, data=["x.json"], method="full").train
    assert (train.weights, train.objective) == ("full", "sft")
    assert "deprecated: --method full is now --weights full --objective sft" in " ".join(capsys.readouterr().err.split())
    assert recipe_from_cli(None, data=["x.json"], method="dpo").train.objective == "dpo"
    with pytest.raises(ConfigError, match="--method is the old spelling of --weights and --objective: give those alone"):
        recipe_from_cli(None, data=["x.json"], method="dpo", weights="full")
    with pytest.raises(ConfigError, match=r"(?s)command line: invalid recipe.*train\.objective"):
        recipe_from_cli(None, data=["x.json"], objective="ppo")


@pytest.mark.skipif(not __import__("tunelab.cpu", fromlist=["x"]).has_cpp_compiler(), reason="torch.compile needs a C++ compiler")
def test_compiled_norms_and_mlps_train_the_same(tmp_path, tiny_model_dir, monkeypatch):
    """StepChoices.compiled_norms_and_mlps (regional compilation, a bench candidate): every RMSNorm and MLP module runs
    through torch.compile and the logged losses are the eager run's."""
    import torch._dynamo

    from tunelab.train import run as train_run

    compiled_modules = []
    compile_parts = train_run.compile_norms_and_mlps

    def losses(name: str, step) -> list[float]:
        run = train_run.train_recipe(make_recipe(tmp_path / name, tiny_model_dir, precision="fp32", max_steps=3, eval_steps=3), step=step)
        assert json.loads((run / "train" / "summary.json").read_text())["compiled"] is False  # not the whole model
        return [r[k] for r in read_jsonl(run / "train" / "metrics.jsonl") for k in ("loss", "eval_loss") if k in r]

    eager = losses("eager", train_run.StepChoices())
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(train_run, "compile_norms_and_mlps", lambda model: compiled_modules.append(compile_parts(model)))
    regional = losses("regional", train_run.StepChoices(compiled_norms_and_mlps=True))
    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    assert compiled_modules == [3 * layers + 1]  # two norms and an MLP a layer, and the final norm
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert len(regional) == len(eager) >= 4
    assert regional == pytest.approx(eager, rel=1e-4)


def test_compiled_norms_and_mlps_where_they_do_not_apply_are_refused(tmp_path, tiny_model_dir, monkeypatch):
    """Refused before any work: outside packed supervised training, beside train.compile=true (which compiles the whole
    model), and without a C++ compiler for inductor's CPU kernels."""
    from tunelab.train.run import StepChoices, train_recipe

    regional = StepChoices(compiled_norms_and_mlps=True)
    with pytest.raises(ConfigError, match="apply to packed supervised training only"):
        train_recipe(make_recipe(tmp_path / "padded", tiny_model_dir, packing=False), step=regional)
    with pytest.raises(ConfigError, match="train.compile=true compiles whole"):
        train_recipe(make_recipe(tmp_path / "whole", tiny_model_dir, compile=True), step=regional)
    monkeypatch.setattr("tunelab.train.run.has_cpp_compiler", lambda: False)
    with pytest.raises(ConfigError, match="on a CPU with a C\\+\\+ compiler"):
        train_recipe(make_recipe(tmp_path / "no-compiler", tiny_model_dir), step=regional)
    assert not any((tmp_path / name / "runs").exists() for name in ("padded", "whole", "no-compiler"))
