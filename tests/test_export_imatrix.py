"""Quantization with an importance matrix (`gguf-<type>_imat`): the calibration text is the training split
and never the test split, bad settings are refused, and a real tiny-model export end to end (slow: it
needs llama.cpp's llama-imatrix and llama-quantize, built once from the llama-cpp-python sdist)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from test_export import make_lora_run

from tunelab.config import IMATRIX_FORMATS, ExportConfig, ImatrixConfig, load_recipe
from tunelab.errors import ConfigError, TunelabError
from tunelab.runs import ExportDir, RunDir, gguf_name, gguf_quant, imatrix_quant, split_gguf_name, split_imatrix_quant

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (make setup-gguf)"
)

TRAIN = [(f"Tell me fact number {i} about otters.", f"Otters hold hands while sleeping, fact {i}.") for i in range(40)]
TEST = [("What is the boiling point of water at sea level?", "100 degrees Celsius."), ("Name the largest planet.", "Jupiter.")]


def write_split(path: Path, pairs: list[tuple[str, str]]) -> None:
    rows = [
        {"id": f"{path.stem}-{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "source": "t"}
        for i, (q, a) in enumerate(pairs)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_imatrix_quantizations_are_named_through_runs_py():
    for quant in ("q4_k_m", "q4_k_s", "iq4_xs", "q3_k_m"):
        name = gguf_name("my-run", imatrix_quant(quant))
        assert split_gguf_name(name) == ("my-run", imatrix_quant(quant)) and gguf_quant(name) == imatrix_quant(quant)
        assert split_imatrix_quant(gguf_quant(name)) == (quant, True)
    assert split_imatrix_quant("q4_k_m") == ("q4_k_m", False)
    assert {split_imatrix_quant(f.removeprefix("gguf-"))[0] for f in IMATRIX_FORMATS} == {"q4_k_m", "q4_k_s", "iq4_xs", "q3_k_m"}


def test_imatrix_settings_without_an_imatrix_format_are_refused(tmp_path):
    with pytest.raises(ValueError, match="export.imatrix applies to the importance-matrix formats only"):
        ExportConfig(formats=["gguf-q4_k_m"], imatrix={"chunks": 8})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data: {sources: [{path: x.json}]}\nexport: {formats: [gguf-q8_0], imatrix: {chunk_tokens: 256}}\n")
    with pytest.raises(ConfigError, match="export.imatrix applies"):
        load_recipe(recipe)
    with pytest.raises(ValueError, match="chunk_tokens"):
        ImatrixConfig(chunk_tokens=0)
    assert ExportConfig(formats=["gguf-q4_k_m_imat"], imatrix={"chunks": 8}).imatrix_settings().chunks == 8
    assert ExportConfig(formats=["gguf-q4_k_m_imat"]).imatrix_settings() == ImatrixConfig()


def test_a_dumped_recipe_without_an_imatrix_format_loads_again(tmp_path):
    """Every run writes its resolved recipe (recipe.yaml) and reads it back on resume and export."""
    from tunelab.config import dump_recipe, recipe_from_dict

    recipe = recipe_from_dict({"data": {"sources": [{"path": "x.jsonl"}]}})
    path = tmp_path / "recipe.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path).export.imatrix is None


def test_an_iquant_without_an_importance_matrix_is_refused_with_the_format_that_exists(tiny_model_dir):
    from tunelab.export.run import export_run

    with pytest.raises(TunelabError, match=r"unknown export format.*gguf-iq4_xs.*did you mean gguf-iq4_xs_imat\?"):
        export_run(tiny_model_dir, ["gguf-iq4_xs"])
    with pytest.raises(TunelabError, match=r"did you mean gguf-q4_k_m_imat\?"):
        export_run(tiny_model_dir, ["gguf-q4_k_m-imat"])


@pytest.mark.gguf
@needs_llama
def test_an_imatrix_format_needs_training_text_to_calibrate_on(tiny_model_dir, tmp_path):
    from tunelab.export.run import export_run

    with pytest.raises(TunelabError, match="not of a run.*export.imatrix.calibration"):
        export_run(tiny_model_dir, ["gguf-q4_k_m_imat"], out=tmp_path / "out")
    missing = ExportConfig(formats=["gguf-q4_k_m_imat"], imatrix={"calibration": str(tmp_path / "nowhere.json")})
    with pytest.raises(TunelabError, match=r"export.imatrix.calibration: .*nowhere.json does not exist"):
        export_run(tiny_model_dir, out=tmp_path / "out", config=missing)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_calibration_text_is_the_training_split_alone(tiny_model_dir, tmp_path):
    from tunelab.data.render import conversation_text
    from tunelab.export.imatrix import calibration_file, write_calibration
    from tunelab.models.load import load_tokenizer

    run = RunDir(tmp_path / "run")
    write_split(run.split("train"), TRAIN)
    write_split(run.split("test"), TEST)
    tokenizer = load_tokenizer(tiny_model_dir)
    source = calibration_file(run, ImatrixConfig())
    assert source == run.split("train")
    out = tmp_path / "calibration.txt"
    made = write_calibration(source, ImatrixConfig(chunks=1000, chunk_tokens=64), tokenizer, out)
    text = out.read_text()
    # every training conversation, in order, as training rendered it (chat template, answers included) ...
    expected = "".join(
        conversation_text(tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in TRAIN
    )
    assert text == expected and made["conversations"] == len(TRAIN) and "<|im_start|>user" in text
    # ... and nothing of the test split: neither its prompts nor its answers
    for q, a in TEST:
        assert q not in text and a not in text
    # a cap on chunks takes the first conversations only
    few = write_calibration(source, ImatrixConfig(chunks=2, chunk_tokens=64), tokenizer, out)
    assert few["text_tokens"] >= 128 and few["conversations"] < len(TRAIN) and expected.startswith(out.read_text())


def test_too_little_calibration_text_is_a_clear_error(tiny_model_dir, tmp_path):
    from tunelab.export.imatrix import write_calibration
    from tunelab.models.load import load_tokenizer

    split = tmp_path / "train.jsonl"
    write_split(split, TRAIN[:2])
    with pytest.raises(TunelabError, match=r"train.jsonl: 2 conversations render to \d+ tokens.*at least two chunks.*512 tokens"):
        write_calibration(split, ImatrixConfig(), load_tokenizer(tiny_model_dir), tmp_path / "c.txt")
    assert not (tmp_path / "c.txt").exists()


def test_building_the_tools_without_cmake_is_a_clear_error(tmp_path, monkeypatch):
    from tunelab.export.llama_cpp import llama_tools, tools_dir
    from tunelab.models.llama_cpp import LlamaCppMissing

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LlamaCppMissing, match="builds once with cmake and a C\\+\\+ compiler; cmake and c\\+\\+ are not on PATH"):
        llama_tools()
    assert not tools_dir().exists()


@pytest.mark.slow
@pytest.mark.gguf
@needs_llama
def test_tiny_model_exports_with_an_importance_matrix_end_to_end(peaked_tiny_dir, tmp_path):
    """A LoRA run exported to plain Q4_K_M and two imatrix formats: llama.cpp's tools compute the matrix on the
    training split, every file passes the faithfulness check, and the card and report say how it was made."""
    from tunelab.export.llama_cpp import llama_tools
    from tunelab.export.run import export_run
    from tunelab.models.llama_cpp import gguf_metadata

    root = make_lora_run(tmp_path / "imat-run", peaked_tiny_dir)
    write_split(RunDir(root).split("train"), TRAIN)
    formats = ["merged", "gguf-f16", "gguf-q4_k_m", "gguf-q4_k_m_imat", "gguf-iq4_xs_imat"]
    imatrix = ImatrixConfig(chunks=4, chunk_tokens=64)
    report = export_run(root, config=ExportConfig(formats=formats, check_prompts=3, check_tokens=8, evaluate=False, imatrix=imatrix))
    export = ExportDir(root / "export")

    assert report["imatrix"]["tokens"] == 4 * 64 and report["imatrix"]["training_split"]
    meta = gguf_metadata(export.imatrix_file)
    assert meta["imatrix.chunk_count"] == 4 and meta["imatrix.chunk_size"] == 64
    assert export.calibration_text.read_text().startswith("<|im_start|>")
    for fmt in formats:
        assert report["formats"][fmt]["passed"], (fmt, report["formats"][fmt])
    by_quant = export.ggufs_by_quant()
    plain, imat = by_quant["q4_k_m"], by_quant["q4_k_m_imat"]
    assert gguf_metadata(imat)["general.file_type"] == gguf_metadata(plain)["general.file_type"]  # both LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert imat.read_bytes() != plain.read_bytes()  # the matrix changed the rounding
    words = "from 256 tokens (4 chunks of 64) of the training split"
    assert words in (export.merged / "README.md").read_text() and words in export.faithfulness_md.read_text()
    assert "imatrix" in export.logs.joinpath("imatrix.log").read_text()

    # the built llama-quantize is the llama.cpp of the llama-cpp-python wheel: without a matrix it writes the
    # Python API's Q4_K_M byte for byte
    again = tmp_path / "again.gguf"
    tool = llama_tools() / "llama-quantize"
    subprocess.run([str(tool), str(by_quant["f16"]), str(again), "Q4_K_M", "1"], check=True, capture_output=True)
    assert again.read_bytes() == plain.read_bytes()


@pytest.mark.slow
@pytest.mark.gguf
@needs_llama
def test_an_imatrix_format_without_an_imatrix_block_uses_the_defaults(peaked_tiny_dir, tmp_path):
    """`export.formats: [gguf-q4_k_m_imat]` and nothing else, as a recipe or `--format` gives it: the default settings
    (the training split, at most 256 chunks of 256 tokens). It once crashed reading the absent block's chunks."""
    from tunelab.export.run import export_run

    root = make_lora_run(tmp_path / "imat-defaults", peaked_tiny_dir)
    write_split(RunDir(root).split("train"), TRAIN * 4)  # a few thousand tokens: more than the two chunks of 256 needed
    report = export_run(root, config=ExportConfig(formats=["gguf-q4_k_m_imat"], check_prompts=3, check_tokens=8, evaluate=False))
    assert report["imatrix"]["chunk_tokens"] == 256 and report["imatrix"]["training_split"], report["imatrix"]
    assert report["formats"]["gguf-q4_k_m_imat"]["passed"], report["formats"]["gguf-q4_k_m_imat"]
