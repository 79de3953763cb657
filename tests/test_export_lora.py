"""gguf-lora: a run's LoRA adapter as a GGUF file beside its base model's GGUF. The pair answers like the
PyTorch model (the faithfulness check) and like the merged GGUF; generate, serve and the API load it through
llama-cpp-python's `lora_path`; its Modelfile's template renders in Go like the jinja one; and what it cannot
hold (full weights, DoRA, an adapter for another base, a missing base) is refused clearly. A QLoRA pair's base
is the NF4-dequantized base, and an rsLoRA adapter keeps its scale. Tiny random models, real llama.cpp."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from test_export import make_lora_run, needs_llama

from tunelab.config import LORA_BASE_QUANT, ExportConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.runs import ExportDir, RunDir

QUICK = ExportConfig(check_prompts=3, check_tokens=8, evaluate=False)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]  # the first prompt of make_lora_run's test split

pytestmark = [pytest.mark.gguf, needs_llama]


@pytest.fixture(scope="module")
def own_cache(tmp_path_factory):
    """tunelab's cache in a temporary folder, so the base GGUFs converted here stay out of the user's; it
    shares the user's extracted llama.cpp converters (adding the LoRA converter there, as any first use does)."""
    from tunelab.paths import cache_dir

    converters = cache_dir() / "llama.cpp"
    converters.mkdir(exist_ok=True)
    cache = tmp_path_factory.mktemp("cache")
    (cache / "llama.cpp").symlink_to(converters)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_CACHE", str(cache))
        yield cache


def export(run: Path, formats: list[str]) -> dict:
    from tunelab.export.run import export_run

    return export_run(run, formats, config=QUICK, threads=1)


# An adapter that changes every greedy answer from its first token, with clear margins (at least 0.7
# between the PyTorch model's top two logits on the check's prompts): at b_scale 1 the tiny model still
# answers as its base, and a pair that ignored its adapter would pass.
B_SCALE = 2.0


@pytest.fixture(scope="module")
def lora_export(own_cache, peaked_tiny_dir, tmp_path_factory) -> tuple[Path, dict]:
    run = make_lora_run(tmp_path_factory.mktemp("runs") / "tiny-run", peaked_tiny_dir, b_scale=B_SCALE)
    return run, export(run, ["gguf-lora", "gguf-q8_0"])


def pair_files(run: Path, base_dir: Path, base_suffix: str = "") -> tuple[Path, Path]:
    """(base GGUF, adapter GGUF) where the export writes them for a run named as its folder."""
    export_dir = RunDir(run).export_dir
    return export_dir.lora_base(base_dir.name + base_suffix, LORA_BASE_QUANT), export_dir.lora_adapter(run.name)


def test_the_pair_answers_like_the_pytorch_model_and_the_merged_gguf(lora_export, peaked_tiny_dir, own_cache):
    from tunelab.export.faithfulness import check_prompts, gguf_greedy
    from tunelab.models.llama_cpp import LlamaCppChatModel, gguf_metadata

    run, report = lora_export
    pair = report["formats"]["gguf-lora"]
    assert pair["passed"] and pair["prompts_equal"] == 3 and pair["prompt_tokens_equal"], pair
    assert pair["ids"] == report["pytorch"]["ids"] == report["formats"]["gguf-q8_0"]["ids"]
    assert pair["gguf"]["chat_template_equal"] and pair["gguf"]["eos_token_id_equal"]
    base, adapter = pair_files(run, peaked_tiny_dir)
    lora = RunDir(run).export_dir.lora
    assert sorted(p.name for p in lora.iterdir()) == sorted([base.name, adapter.name, "Modelfile", "README.md"])
    assert (pair["path"], pair["adapter"], pair["base"]) == (str(lora), adapter.name, base.name)
    meta = gguf_metadata(adapter)
    assert (meta["general.type"], meta["adapter.type"], meta["adapter.lora.alpha"], meta["general.name"]) == (
        "adapter",
        "lora",
        8.0,
        "tiny-run-lora",
    )
    assert not any(str(peaked_tiny_dir) in str(v) for v in meta.values())  # peft's card names the base by its local path
    assert 20 * adapter.stat().st_size < base.stat().st_size
    cached = ExportDir(own_cache / "base-exports" / peaked_tiny_dir.name).gguf_file(peaked_tiny_dir.name, LORA_BASE_QUANT)
    assert base.stat().st_ino == cached.stat().st_ino  # one base file for every adapter of this base
    # the adapter is applied: the base alone answers otherwise from the first token of every prompt
    conversations, _, _ = check_prompts(run, 3)
    alone = gguf_greedy(LlamaCppChatModel(base, n_threads=1), conversations, 8)
    assert all(g.ids[0] != ids[0] for g, ids in zip(alone, pair["ids"]))


def test_generate_serve_and_api_load_the_pair(lora_export):
    import httpx
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.models.chat import GenerationSettings, load_chat_model
    from tunelab.models.llama_cpp import LlamaCppChatModel
    from tunelab.serve.generation import ServeLimits
    from tunelab.serve.registry import build_registry
    from tunelab.serve.run import ServerThread, build_app

    run, report = lora_export
    pair, lora = report["formats"]["gguf-lora"], RunDir(run).export_dir.lora
    chat = load_chat_model(lora, n_threads=1)
    assert isinstance(chat, LlamaCppChatModel) and chat.lora.name == pair["adapter"]
    prompt = chat.prompt_tokens(QUESTION)
    assert prompt == pair["prompt_ids"][0] and list(chat.generate_ids(prompt, GenerationSettings(max_new_tokens=8))) == pair["ids"][0]
    # log-likelihoods (perplexity, multiple choice) and answers decoded together go through the adapter too
    alone = LlamaCppChatModel(chat.path, n_threads=1)
    assert chat.loglikelihood([(prompt, pair["ids"][0])]) != alone.loglikelihood([(prompt, pair["ids"][0])])
    settings = GenerationSettings(max_new_tokens=8)
    assert chat.generate([QUESTION] * 2, settings, batch_size=2) == [chat.decode(pair["ids"][0]).strip()] * 2
    assert alone.generate([QUESTION], settings) != chat.generate([QUESTION], settings)

    res = CliRunner().invoke(app, ["generate", str(lora), QUESTION[0]["content"], "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == pair["answers"][0]

    registry = build_registry([], runs=run.parent, n_threads=1)
    entry = next(e for e in registry.entries.values() if e.kind == "gguf-lora")
    assert (entry.id, entry.ref, entry.run) == ("tiny-run-lora-gguf", str(lora), "tiny-run")
    with ServerThread(build_app(registry, ServeLimits(), ui=False, api=True)) as url:
        body = {"model": entry.id, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()
    assert answer["choices"][0]["message"]["content"].strip() == pair["answers"][0]


def test_the_pairs_modelfile_and_card(lora_export, peaked_tiny_dir, tmp_path):
    from test_reliability import CONVERSATIONS, _quoted, go_render

    from tunelab.models.load import load_tokenizer

    run, _ = lora_export
    base, adapter = pair_files(run, peaked_tiny_dir)
    modelfile = RunDir(run).export_dir.lora_modelfile.read_text()
    lines = modelfile.splitlines()
    assert f"FROM ./{base.name}" in lines and f"ADAPTER ./{adapter.name}" in lines
    card = RunDir(run).export_dir.lora_card.read_text()
    assert (
        "## Files" in card
        and f"`gguf-lora/{adapter.name}` | the LoRA adapter alone" in card
        and f"its base, `gguf-lora/{base.name}`" in card
    )
    assert "## Export faithfulness" in card and "| gguf-lora |" in card
    if shutil.which("go") is None and os.environ.get("TUNELAB_REQUIRE_GO") != "1":
        pytest.skip("Go is not installed (apt-get install golang-go): Ollama's templates are Go's")
    tok = load_tokenizer(run / "model")
    system = _quoted(modelfile, "SYSTEM")
    sent = [conv if conv[0]["role"] == "system" else [{"role": "system", "content": system}, *conv] for conv in CONVERSATIONS]
    rendered = go_render(_quoted(modelfile, "TEMPLATE"), sent, tmp_path)
    assert rendered == [tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) for conv in CONVERSATIONS]


def test_a_base_model_without_a_chat_template(own_cache, smollm2_dir, tmp_path):
    """Gemma-3 270m is a base model: its GGUF carries no chat template, and the pair is served with tunelab's
    default one, as the run was trained (the merged GGUF carries that template itself)."""
    from test_architectures import make_tiny_arch

    from tunelab.models.llama_cpp import gguf_metadata

    gemma = make_tiny_arch(tmp_path / "gemma", "gemma3", smollm2_dir)
    run = make_lora_run(tmp_path / "gemma-run", gemma)
    pair = export(run, ["gguf-lora"])["formats"]["gguf-lora"]
    assert "tokenizer.chat_template" not in gguf_metadata(pair_files(run, gemma)[0])
    assert pair["passed"] and pair["prompt_tokens_equal"] and pair["gguf"]["chat_template_equal"], pair


def test_a_qlora_pairs_base_is_the_base_it_was_trained_against(own_cache, lora_export, peaked_tiny_dir, tmp_path):
    run = make_lora_run(tmp_path / "qlora-run", peaked_tiny_dir, weights="qlora", b_scale=B_SCALE)
    pair = export(run, ["gguf-lora"])["formats"]["gguf-lora"]
    base, _ = pair_files(run, peaked_tiny_dir, "-nf4")
    assert pair["passed"] and pair["base"] == base.name, pair
    plain, _ = pair_files(lora_export[0], peaked_tiny_dir)
    assert base.read_bytes() != plain.read_bytes()
    assert "quantized to 4 bit (NF4), dequantized" in RunDir(run).export_dir.lora_card.read_text()


def test_an_rslora_adapter_keeps_its_scale(own_cache, lora_export, peaked_tiny_dir, tmp_path):
    """peft scales rsLoRA by alpha/sqrt(r), llama.cpp by alpha/r: the GGUF's alpha is alpha·sqrt(r). With r 4
    and alpha 8, rsLoRA at b_scale 1 is the LoRA of lora_export (b_scale 2, the same random draws): the same
    answers, where alpha/r would halve the adapter and answer as the base does."""
    from tunelab.models.llama_cpp import gguf_metadata

    run = make_lora_run(tmp_path / "rslora-run", peaked_tiny_dir, use_rslora=True)
    pair = export(run, ["gguf-lora"])["formats"]["gguf-lora"]
    assert pair["passed"] and pair["ids"] == lora_export[1]["formats"]["gguf-lora"]["ids"], pair
    assert gguf_metadata(pair_files(run, peaked_tiny_dir)[1])["adapter.lora.alpha"] == pytest.approx(8 * math.sqrt(4))


# ---------------------------------------------------------------- what is refused
def test_a_model_without_an_adapter_is_refused_before_any_work(tiny_model_dir, tmp_path):
    from tunelab.config import load_recipe
    from tunelab.models.load import load_causal_lm, load_tokenizer

    run = tmp_path / "full-run"
    load_causal_lm(tiny_model_dir).save_pretrained(run / "model")
    load_tokenizer(tiny_model_dir).save_pretrained(run / "model")
    (run / "model" / "tunelab_model.json").write_text(json.dumps({"base_model": str(tiny_model_dir), "method": "full"}))
    with pytest.raises(TunelabError, match="gguf-lora writes a LoRA adapter, and this model has no adapter .weights full"):
        export(run, ["gguf-lora"])
    assert not (run / "export").exists()
    # a recipe says so before training
    recipe = tmp_path / "r.yaml"
    for train, why in [("{weights: full}", "every weight"), ("{lora: {use_dora: true}}", "DoRA")]:
        recipe.write_text(f"data:\n  sources: [{{path: x.json}}]\ntrain: {train}\nexport: {{formats: [gguf-lora]}}\n")
        with pytest.raises(ConfigError, match=f"gguf-lora.*{why}"):
            load_recipe(recipe)


def test_a_dora_adapter_is_refused(peaked_tiny_dir, tmp_path):
    run = make_lora_run(tmp_path / "dora-run", peaked_tiny_dir, use_dora=True)
    with pytest.raises(TunelabError, match="adapter_config.json: field 'use_dora' is true.*export a merged GGUF"):
        export(run, ["gguf-lora"])
    assert not (run / "export").exists()


def test_an_adapter_for_another_base_and_a_missing_base_are_refused(lora_export, peaked_tiny_dir, smollm2_dir, tmp_path):
    from test_architectures import make_tiny_arch

    from tunelab.export.llama_cpp import convert_hf_to_gguf
    from tunelab.models.chat import load_chat_model
    from tunelab.models.llama_cpp import LlamaCppChatModel
    from tunelab.serve.registry import default_gguf

    run, _ = lora_export
    base, adapter = pair_files(run, peaked_tiny_dir)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(adapter, alone)
    with pytest.raises(TunelabError, match=f"the LoRA adapter {adapter.name} has no base model GGUF beside it"):
        load_chat_model(alone)
    with pytest.raises(TunelabError, match="is a LoRA adapter, not a model"):
        load_chat_model(alone / adapter.name)
    shutil.copy(base, alone / "second-base-q8_0.gguf")
    shutil.copy(base, alone)
    with pytest.raises(TunelabError, match="holds one adapter and one base model GGUF"):
        load_chat_model(alone)
    # another architecture
    gemma = convert_hf_to_gguf(make_tiny_arch(tmp_path / "gemma", "gemma3", smollm2_dir), tmp_path / "gemma-f16.gguf")
    with pytest.raises(TunelabError, match="adapts a 'llama' model and .*gemma-f16.gguf is a 'gemma3' model: an adapter for another base"):
        LlamaCppChatModel(gemma, n_threads=1, lora=adapter)
    # the same architecture, other shapes: the real SmolLM2-135M-Instruct
    if default_gguf() is not None:
        with pytest.raises(TunelabError, match=f"{adapter.name} does not fit .*: its blk.0.* is .* and the base holds it as"):
            LlamaCppChatModel(default_gguf(), n_threads=1, lora=adapter)


def test_the_server_refuses_a_pair_whose_base_lies_outside_its_folders(lora_export, peaked_tiny_dir, tmp_path):
    from tunelab.serve.registry import UnsafeModel, build_registry

    run, _ = lora_export
    base, adapter = pair_files(run, peaked_tiny_dir)
    runs = tmp_path / "runs"
    pair = runs / "pair"
    pair.mkdir(parents=True)
    shutil.copy(adapter, pair)
    outside = tmp_path / "elsewhere" / base.name
    outside.parent.mkdir()
    shutil.copy(base, outside)
    (pair / base.name).symlink_to(outside)
    registry = build_registry([], runs=runs, n_threads=1)
    with pytest.raises(UnsafeModel, match="outside the folders this server may load models from"):
        registry.get(registry.find(str(pair)))


@pytest.mark.slow
def test_real_default_model_pair_is_faithful(own_cache, smollm2_dir, tmp_path):
    """The real SmolLM2-135M-Instruct with a random LoRA scaled as training would leave one (as
    test_export's real-model test does): the pair passes the check, and its adapter is a few MB."""
    from tunelab.export.run import export_run

    run = make_lora_run(tmp_path / "smol-run", smollm2_dir, b_scale=0.05)
    report = export_run(run, ["gguf-lora", "gguf-q8_0"], config=ExportConfig(check_prompts=4, check_tokens=16, evaluate=False))
    for fmt, r in report["formats"].items():
        assert r["passed"], (fmt, r)
    pair = report["formats"]["gguf-lora"]
    assert pair["bytes"] < 16 * 2**20 < pair["base_bytes"]
