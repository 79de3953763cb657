"""Export stage: merge correctness, GGUF conversion, faithfulness, Modelfile, clear errors, atomicity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tunelab.config import EvalConfig, ExportConfig
from tunelab.errors import TunelabError

QUICK = ExportConfig(check_prompts=3, check_tokens=8, evaluate=False)


def _has_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


needs_llama = pytest.mark.skipif(not _has_llama_cpp(), reason="llama-cpp-python is not installed (make setup-gguf)")


def make_lora_run(root: Path, base_dir: Path, weights: str = "lora", b_scale: float = 1.0, **lora_options) -> Path:
    """A run directory as `tunelab train` leaves it: model/ with a LoRA adapter (non-zero B; `lora_options`
    go to peft's LoraConfig) and tunelab_model.json, plus data/test.jsonl and data/card.json."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunelab.models.load import load_causal_lm, load_tokenizer

    torch.manual_seed(1)
    model = load_causal_lm(base_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
        **lora_options,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(b_scale)
    (root / "model").mkdir(parents=True)
    peft_model.save_pretrained(root / "model")
    load_tokenizer(base_dir).save_pretrained(root / "model")
    (root / "model" / "tunelab_model.json").write_text(
        json.dumps({"base_model": str(base_dir), "base_model_path": str(base_dir), "weights": weights, "objective": "sft"})
    )
    (root / "data").mkdir()
    rows = [
        {"id": str(i), "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "source": "test"}
        for i, (q, a) in enumerate(
            [
                ("What is the capital of France?", "Paris."),
                ("Name a primary colour.", "Red."),
                ("What is 2+2?", "4"),
                ("Say hello.", "Hello!"),
            ]
        )
    ]
    (root / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "data" / "card.json").write_text(json.dumps({"counts": {"train": 10, "validation": 1, "test": 4}}))
    return root


@pytest.fixture(scope="module")
def lora_run(peaked_tiny_dir, tmp_path_factory) -> Path:
    return make_lora_run(tmp_path_factory.mktemp("run") / "tiny-run", peaked_tiny_dir)


def _logits(model, tokenizer):
    import torch

    ids = tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")
    with torch.inference_mode():
        return model(**ids).logits


def _no_leftovers(parent: Path):
    return [p.name for p in parent.iterdir() if ".staging-" in p.name or p.name.endswith(".tmp")]


def test_merge_equals_adapter_logits(lora_run, peaked_tiny_dir, tmp_path):
    import torch

    from tunelab.export.merge import load_pytorch_model, merged_model, save_merged
    from tunelab.models.load import load_causal_lm, load_tokenizer

    model, tokenizer, info = load_pytorch_model(lora_run / "model")
    assert info["weights"] == "lora"
    with_adapter = _logits(model, tokenizer)
    base = _logits(load_causal_lm(peaked_tiny_dir), tokenizer)
    assert (with_adapter - base).abs().max() > 1e-2  # the adapter really changes the model
    save_merged(merged_model(model), tokenizer, tmp_path / "merged")
    merged = load_causal_lm(tmp_path / "merged")
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(_logits(merged, load_tokenizer(tmp_path / "merged")), with_adapter, atol=1e-4, rtol=1e-4)


def test_qlora_merge_adds_adapter_to_dequantized_base(peaked_tiny_dir, tmp_path):
    """A QLoRA adapter is merged into the dequantized NF4 weights it was trained against."""
    import torch

    from tunelab.export.merge import load_pytorch_model, merged_model
    from tunelab.models.load import load_causal_lm

    run = make_lora_run(tmp_path / "qrun", peaked_tiny_dir, weights="qlora")
    model, _, _ = load_pytorch_model(run / "model")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = layer.get_delta_weight("default").detach().clone()
    dequantized = layer.base_layer.weight.detach().clone()
    full = load_causal_lm(peaked_tiny_dir).model.layers[0].self_attn.q_proj.weight
    assert 0 < (dequantized - full).abs().max() < 0.05  # NF4 rounding, not the fp32 weights
    merged = merged_model(model)
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, dequantized + delta)


def test_export_merged_with_card_and_check(lora_run):
    from tunelab.export.run import export_run

    report = export_run(
        lora_run,
        ["merged"],
        config=ExportConfig(check_prompts=3, check_tokens=8, evaluate=True),
        eval_config=EvalConfig(metrics=["bleu", "rougeL"], max_new_tokens=10),
    )
    merged = lora_run / "export" / "merged"
    for f in ["config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"]:
        assert (merged / f).is_file(), f
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == 2
    assert (merged / "README.md").stat().st_mode & 0o777 == 0o644  # shareable, not the temp file's 0600
    card = (merged / "README.md").read_text()
    assert "license:" in card and "Export faithfulness" in card and "test" in card
    assert "by tunelab: **lora** weights, objective **sft**" in card and "- sft" in card  # both axes, in the text and the tags
    m = report["formats"]["merged"]
    assert m["passed"] and m["prompts_equal"] == 3 and m["agreement"] == 1.0
    # quality delta, scored by the evaluation stage: the merged model answers exactly like PyTorch
    assert set(report["pytorch_metrics"]) == {"bleu", "rougeL"} and report["answer_tokens"] == 10
    assert m["metrics"]["rougeL"]["delta"] == 0.0 and m["metrics"]["bleu"]["delta"] == 0.0
    saved = json.loads((lora_run / "export" / "faithfulness.json").read_text())
    assert saved["formats"]["merged"]["passed"] and saved["prompt_source"].endswith("test.jsonl")
    assert (saved["weights"], saved["objective"]) == ("lora", "sft")
    assert (lora_run / "export" / "faithfulness.md").read_text().count("| merged |") == 1
    assert _no_leftovers(lora_run) == [] and _no_leftovers(lora_run / "export") == []


@pytest.fixture(scope="module")
def gguf_export(lora_run) -> dict:
    from tunelab.export.run import export_run

    return export_run(lora_run, ["gguf-f16", "gguf-q8_0"], config=QUICK)


@pytest.mark.gguf
@needs_llama
def test_export_gguf_f16_faithful(lora_run, gguf_export):
    from tunelab.models.chat import GenerationSettings, load_chat_model
    from tunelab.models.llama_cpp import LlamaCppChatModel, gguf_metadata

    report = gguf_export
    gguf_dir = lora_run / "export" / "gguf"
    f16 = gguf_dir / "tiny-run-f16.gguf"
    assert f16.is_file() and (gguf_dir / "tiny-run-q8_0.gguf").is_file()
    meta = gguf_metadata(f16)
    assert meta["general.architecture"] == "llama"
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert meta["tokenizer.ggml.eos_token_id"] == 2
    r = report["formats"]["gguf-f16"]
    assert r["prompt_tokens_equal"] and r["gguf"]["chat_template_equal"]
    assert r["prompts_equal"] == 3 and r["passed"], r
    assert report["formats"]["gguf-q8_0"]["passed"], report["formats"]["gguf-q8_0"]
    # the Modelfile points at a file that exists
    modelfile = (gguf_dir / "Modelfile").read_text()
    from_line = next(line for line in modelfile.splitlines() if line.startswith("FROM "))
    assert (gguf_dir / from_line.split("./", 1)[1]).is_file()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    # the chat backend: generate and stream agree, and load_chat_model dispatches .gguf to it
    chat = load_chat_model(str(f16), n_threads=1)
    assert isinstance(chat, LlamaCppChatModel)
    s = GenerationSettings(max_new_tokens=8)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    assert chat.prompt_tokens(msgs) == report["formats"]["gguf-f16"]["prompt_ids"][0]
    ids = list(chat.generate_ids(chat.prompt_tokens(msgs), s))
    assert ids == report["formats"]["gguf-f16"]["ids"][0]
    text = chat.generate([msgs], s)[0]
    assert text == chat.decode(ids).strip() == "".join(chat.stream(msgs, s)).strip()
    assert _no_leftovers(lora_run) == [] and _no_leftovers(gguf_dir) == []


@pytest.mark.gguf
@needs_llama
def test_answers_decoded_together_are_the_answers_decoded_one_by_one(lora_run, gguf_export):
    """generate_many (several sequences in one llama.cpp batch, a new prompt taking the slot of an answer
    that ended) gives each request the answer it gets alone: greedy, sampled with its seed, with a
    repetition penalty, stopped early by `finished`."""
    from tunelab.errors import TunelabError
    from tunelab.models.chat import GenerationSettings, load_chat_model
    from tunelab.models.interface import generate_one_by_one

    chat = load_chat_model(str(lora_run / "export" / "gguf" / "tiny-run-q8_0.gguf"), n_threads=1)
    hot = {"max_new_tokens": 12, "temperature": 8.0, "top_p": 1.0}  # hot enough that each seed draws its own answer
    asked = [
        ("What is the capital of France?", GenerationSettings(max_new_tokens=12)),
        ("Name a colour.", GenerationSettings(**hot, seed=3)),
        ("Name a colour.", GenerationSettings(**hot, seed=4)),
        ("Count to five.", GenerationSettings(max_new_tokens=7, repetition_penalty=1.3)),
        ("Why is the sky blue?", GenerationSettings(max_new_tokens=12)),
    ]
    requests = [(i, chat.prompt_tokens([{"role": "user", "content": q}]), s) for i, (q, s) in enumerate(asked)]

    def finished(key, text):  # one answer ends early, as a code answer does at its block's end
        return key == 4 and len(text) >= 5

    alone = dict(generate_one_by_one(chat, requests, finished))
    together = list(chat.generate_many(requests, finished, slots=2))
    assert dict(together) == alone and len(together) == len(requests)
    assert alone[1] != alone[2]  # the seeds drew different answers
    whole = chat.decode(list(chat.generate_ids(requests[4][1], asked[4][1])))
    assert len(alone[4]) >= 5 and whole.startswith(alone[4]) and len(whole) > len(alone[4])
    greedy = GenerationSettings(max_new_tokens=12)
    assert chat.generate([[{"role": "user", "content": q}] for q, _ in asked], greedy, batch_size=3) == [
        chat.decode(list(chat.generate_ids(ids, greedy))).strip() for _, ids, _ in requests
    ]
    with pytest.raises(TunelabError, match="more than the context"):
        list(chat.generate_many([("long", [1] * chat.n_ctx, greedy)], finished))
    assert dict(chat.generate_many(requests[:3], finished)) == {k: alone[k] for k in range(3)}  # still whole after the error


@pytest.mark.gguf
@needs_llama
def test_generate_command_on_gguf(lora_run, gguf_export):
    from typer.testing import CliRunner

    from tunelab.cli import app

    f16 = lora_run / "export" / "gguf" / "tiny-run-f16.gguf"
    res = CliRunner().invoke(app, ["generate", str(f16), "What is the capital of France?", "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == gguf_export["formats"]["gguf-f16"]["answers"][0]


def _tiny_opt_run(root: Path, tokenizer_dir: Path) -> Path:
    """A full-weights run of an architecture llama.cpp's converter does not support (OPT)."""
    from transformers import OPTConfig, OPTForCausalLM

    from tunelab.models.load import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    config = OPTConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=2,
        word_embed_proj_dim=32,
        max_position_embeddings=128,
    )
    (root / "model").mkdir(parents=True)
    OPTForCausalLM(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "model" / "tunelab_model.json").write_text(json.dumps({"base_model": "tiny-opt", "method": "full"}))
    return root


@pytest.mark.gguf
@needs_llama
def test_unsupported_architecture_is_a_clear_error(tmp_path, tiny_model_dir):
    from tunelab.export.run import export_run

    run = _tiny_opt_run(tmp_path / "opt-run", tiny_model_dir)
    with pytest.raises(TunelabError, match="OPTForCausalLM.*cannot be converted to GGUF"):
        export_run(run, ["merged", "gguf-q8_0"], config=QUICK)
    assert not (run / "export").exists() and _no_leftovers(run) == []


def test_missing_llama_cpp_is_a_clear_error(lora_run, tmp_path, monkeypatch):
    from tunelab.export.run import export_run
    from tunelab.models.llama_cpp import LlamaCppMissing

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    out = tmp_path / "out"
    with pytest.raises(LlamaCppMissing, match="make setup-gguf"):
        export_run(lora_run, ["gguf-q8_0"], out=out, config=QUICK)
    assert not out.exists() and _no_leftovers(tmp_path) == []


def test_missing_converter_source_is_a_clear_error(tmp_path, monkeypatch):
    from tunelab.export import llama_cpp

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(llama_cpp, "wheel_dirs", lambda: [tmp_path / "wheels"])
    monkeypatch.setattr(llama_cpp, "LLAMA_CPP_VERSION", "0.0.0-missing")
    monkeypatch.setattr(llama_cpp, "SDIST_NAME", "llama_cpp_python-0.0.0-missing.tar.gz")
    with pytest.raises(llama_cpp.LlamaCppMissing, match="convert_hf_to_gguf.py"):
        llama_cpp.converter_dir()
    assert not (tmp_path / "cache" / "llama.cpp" / "0.0.0-missing").exists()


def test_a_converter_folder_from_before_gets_the_missing_script_alone(tmp_path, monkeypatch):
    """A folder extracted before the LoRA converter was added gets convert_lora_to_gguf.py; what is there
    stays as it is (a converter may be running from it), where the folder used to be replaced whole."""
    from tunelab.export import llama_cpp

    if not any((d / llama_cpp.SDIST_NAME).is_file() for d in llama_cpp.wheel_dirs()):
        pytest.skip(f"{llama_cpp.SDIST_NAME} is not in the wheel cache (make setup-gguf)")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    old = tmp_path / "cache" / "llama.cpp" / llama_cpp.LLAMA_CPP_VERSION
    for name in ("conversion", "gguf-py"):
        (old / name).mkdir(parents=True)
        (old / name / "in-use.txt").write_text("a running converter's file")
    for name in ("convert_hf_to_gguf.py", "LICENSE"):
        (old / name).write_text("# the earlier extraction")
    assert llama_cpp.converter_dir() == old
    assert "LoraModel" in (old / "convert_lora_to_gguf.py").read_text()
    assert (old / "conversion" / "in-use.txt").is_file() and (old / "gguf-py" / "in-use.txt").is_file()
    assert (old / "convert_hf_to_gguf.py").read_text() == "# the earlier extraction"
    assert sorted(p.name for p in old.parent.iterdir()) == [llama_cpp.LLAMA_CPP_VERSION]  # no temporary folder left


def test_no_disk_room_is_a_clear_error(lora_run, tmp_path, monkeypatch):
    from tunelab.export import run as export_stage
    from tunelab.export.run import export_run

    monkeypatch.setattr(export_stage, "disk_free", lambda path: 10 * 2**20)
    out = tmp_path / "out"
    with pytest.raises(TunelabError, match="not enough disk space.*needs about"):
        export_run(lora_run, ["merged"], out=out, config=QUICK)
    assert not out.exists()


@pytest.mark.gguf
@needs_llama
def test_failing_conversion_leaves_previous_export_intact(lora_run, tmp_path, monkeypatch):
    """The converter really fails (the merged folder lost its tokenizer): no half-written export."""
    from tunelab.export import run as export_stage
    from tunelab.export.run import export_run

    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")
    real_save = export_stage.save_merged

    def save_without_tokenizer(model, tokenizer, out_dir):
        real_save(model, tokenizer, out_dir)
        for f in Path(out_dir).glob("tokenizer*"):
            f.unlink()
        return out_dir

    monkeypatch.setattr(export_stage, "save_merged", save_without_tokenizer)
    with pytest.raises(TunelabError, match="converter failed"):
        export_run(lora_run, ["merged", "gguf-f16"], out=out, config=QUICK)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert _no_leftovers(tmp_path) == []


def test_unknown_format_is_rejected(lora_run):
    from tunelab.export.run import export_run

    with pytest.raises(TunelabError, match="unknown export format.*gguf-q2"):
        export_run(lora_run, ["gguf-q2"], config=QUICK)


def test_every_export_format_has_its_disk_cost_and_a_gguf_its_quantization():
    from tunelab.config import EXPORT_FORMATS, MERGED_GGUF_FORMATS
    from tunelab.export.run import BYTES_PER_PARAM, MODELFILE_PREFERENCE

    assert set(BYTES_PER_PARAM) == set(EXPORT_FORMATS)  # one list of formats (config.py); the costs follow it
    assert set(MODELFILE_PREFERENCE) == set(MERGED_GGUF_FORMATS)


def test_modelfile_for_chatml_and_default_templates(smollm2_dir):
    from tunelab.export.modelfile import modelfile_text
    from tunelab.models.load import load_tokenizer
    from tunelab.models.templates import DEFAULT_CHAT_TEMPLATE

    tok = load_tokenizer(smollm2_dir)
    user_only = tok.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False, add_generation_prompt=True)
    text = modelfile_text("m-q8_0.gguf", tok.chat_template, tok.eos_token, user_only, other_files=["m-q4_k_m.gguf"])
    assert "FROM ./m-q8_0.gguf" in text and "# Other quantization in this folder: FROM ./m-q4_k_m.gguf" in text
    assert "<|im_start|>{{ .Role }}" in text and 'SYSTEM """You are a helpful AI assistant named SmolLM' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    plain = modelfile_text("b.gguf", DEFAULT_CHAT_TEMPLATE, "</s>", "### Instruction:\nX\n\n### Response:\n")
    assert "### Instruction:" in plain and "\nSYSTEM" not in plain and 'PARAMETER stop "### Instruction:"' in plain


def test_compare_tokens_rules():
    from tunelab.export.faithfulness import Generation, compare_tokens

    ref = [Generation([1], [5, 6, 7], True, "", margins=[3.0, 0.01, 2.0, 2.0]), Generation([1], [5, 6, 7, 8], False, "", margins=[3.0] * 4)]
    same = [Generation([1], [5, 6, 7], True, ""), Generation([1], [5, 6, 7, 8], False, "")]
    tie = [Generation([1], [5, 9, 9], True, ""), Generation([1], [5, 6, 7, 8], False, "")]
    wrong = [Generation([1], [5, 6, 7], True, ""), Generation([1], [5, 9, 7, 8], False, "")]
    assert compare_tokens("gguf-f16", ref, same, 4)["passed"]
    r = compare_tokens("gguf-f16", ref, tie, 4)
    assert r["passed"] and r["per_prompt"][0]["near_tie"] and r["prompts_equal"] == 1
    r = compare_tokens("gguf-q8_0", ref, wrong, 4)
    assert not r["passed"] and r["per_prompt"][1]["diverged_at"] == 1 and r["agreement"] == pytest.approx((1 + 0.25) / 2)
    assert compare_tokens("gguf-q4_k_m", ref, wrong, 4)["passed"]  # 62.5% >= 40%
    # stopping early is a token too
    early = [Generation([1], [5], True, ""), Generation([1], [5, 6, 7, 8], False, "")]
    assert not compare_tokens("gguf-f16", ref, early, 4)["per_prompt"][0]["equal"]


@pytest.mark.slow
@pytest.mark.gguf
@needs_llama
def test_real_default_model_exports_to_all_formats(smollm2_dir, tmp_path):
    """The real default model with a LoRA adapter: all four formats, each passing the check."""
    from tunelab.export.run import export_run

    # a random LoRA on a real model is scaled down so it perturbs the model as training would, not drowns it
    run = make_lora_run(tmp_path / "smol-run", smollm2_dir, b_scale=0.05)
    report = export_run(
        run, ["merged", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"], config=ExportConfig(check_prompts=4, check_tokens=16, evaluate=False)
    )
    for fmt, r in report["formats"].items():
        assert r["passed"], (fmt, r)
    assert (run / "export" / "gguf" / "Modelfile").is_file()
