"""The model resolver (local paths, the offline default, split GGUF assembly, clear errors) and likelihood batching."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from tunelab.errors import ModelNotFound
from tunelab.models import resolve_model
from tunelab.models.catalog import CATALOG, OfflinePackage, lookup
from tunelab.models.likelihood import batches
from tunelab.models.resolve import assemble_gguf


def test_catalog_names_and_hub_ids():
    assert set(CATALOG) == {"smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"}
    assert lookup("HuggingFaceTB/SmolLM2-135M-Instruct").name == "smollm2-135m-instruct"


def test_default_model_resolves_offline_to_a_complete_folder(smollm2_dir):
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tunelab_source.json"]:
        assert (smollm2_dir / name).is_file(), name
    assert json.loads((smollm2_dir / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    again = resolve_model("smollm2-135m-instruct")
    assert again.path == smollm2_dir and again.source == "cache"


def test_local_folder_is_used_as_is(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.source == "local" and resolved.path == tiny_model_dir.resolve()


def test_unknown_model_error_lists_where_it_looked(tmp_path):
    with pytest.raises(ModelNotFound) as err:
        resolve_model("nobody/no-such-model")
    text = str(err.value)
    assert "local path" in text and "tunelab cache" in text and "hub" in text and "To get it" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_split_gguf_is_joined_and_checksummed(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    whole = b"GGUF" + bytes(range(256)) * 10
    parts = []
    for i, chunk in enumerate([whole[:1000], whole[1000:2000], whole[2000:]]):
        p = tmp_path / f"part{i}"
        p.write_bytes(chunk)
        parts.append(p)
    good = OfflinePackage(
        pip_requirements=("x",), parts=(("m", "f"),) * 3, gguf_name="joined.gguf", sha256=hashlib.sha256(whole).hexdigest()
    )
    joined = assemble_gguf(good, parts)
    assert joined.read_bytes() == whole
    bad = OfflinePackage(pip_requirements=("x",), parts=(("m", "f"),) * 3, gguf_name="bad.gguf", sha256="0" * 64)
    with pytest.raises(ModelNotFound, match="sha256"):
        assemble_gguf(bad, parts)
    assert not list((tmp_path / "cache" / "models" / "gguf").glob("bad*"))  # nothing half-written left


def test_models_command_lists_the_catalog():
    from tunelab.cli import app

    result = CliRunner().invoke(app, ["models"])  # piped: no terminal width, no COLUMNS
    assert result.exit_code == 0, result.output
    for name, entry in CATALOG.items():  # whole names and hub ids on one line, as `tunelab models | grep gemma` needs
        assert any(name in line and entry.hub_id in line for line in result.stdout.splitlines()), result.stdout
    assert "installed" in result.output


def test_likelihood_batches_respect_size_and_token_budget():
    lengths = [10, 10, 10, 300, 400, 2000]
    groups = batches(list(range(6)), lengths, batch_size=2, max_batch_tokens=800)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) <= 2 and (len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 800) for g in groups)
    assert groups == [[0, 1], [2, 3], [4], [5]]


def test_third_party_noise_is_filtered_precisely(caplog):
    """bitsandbytes' `kernels` warnings and one transformers FutureWarning are dropped; their neighbours are not."""
    import logging
    import warnings

    from tunelab import filter_third_party_noise
    from tunelab.models.load import _no_weight_loading_bars

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "No module named 'kernels'")
        log.warning("a real bitsandbytes problem")
    assert [r.getMessage() for r in caplog.records] == ["a real bitsandbytes problem"]
    caplog.clear()
    hub = logging.getLogger("kernels._internals.hf_hub")
    with caplog.at_level(logging.WARNING):
        hub.warning(
            "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in offline mode."
        )
        hub.warning("Skipping publisher trust check for 'someone-else/kernel' because Hugging Face Hub is in offline mode.")
    assert [r.getMessage() for r in caplog.records] == [
        "Skipping publisher trust check for 'someone-else/kernel' because Hugging Face Hub is in offline mode."
    ]
    caplog.clear()
    args_log = logging.getLogger("transformers.training_args")
    args_log.addHandler(caplog.handler)  # once transformers sets up its logging, its loggers stop propagating to caplog's root
    try:
        args_log.warning("The speedups for torchdynamo mostly come with GPU Ampere or higher and which is not detected here.")
        args_log.warning("another TrainingArguments warning")
    finally:
        args_log.removeHandler(caplog.handler)
    # a set: where transformers' loggers do propagate (its logging not set up yet), caplog gets the record twice
    assert {r.getMessage() for r in caplog.records} == {"another TrainingArguments warning"}
    with warnings.catch_warnings(record=True) as seen:
        filter_third_party_noise()  # pytest restores the warning filters of each test's import time; put ours back
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)
        warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another FutureWarning"]
    # transformers' per-model 'Loading weights' and 'Writing model shards' bars are disabled, other bars are left alone
    made = lambda *args, **kwargs: kwargs  # noqa: E731
    assert _no_weight_loading_bars(made, (), {"desc": "Loading weights"}) == {"desc": "Loading weights", "disable": True}
    assert _no_weight_loading_bars(made, (), {"desc": "Writing model shards"})["disable"] is True  # export's save_pretrained
    assert _no_weight_loading_bars(made, (), {"desc": "Downloading"}) == {"desc": "Downloading"}


def test_the_gguf_conversion_bars_are_hidden_at_their_source():
    """`tunelab models fetch` converts a GGUF through transformers, which drew three bars between tunelab's lines:
    'Converting and de-quantizing GGUF tensors...' (the GGUF reader, with tqdm of its own), 'Loading weights' and
    'Writing model shards'. The conversion routes the reader's bar through transformers' hook, which hides all three."""
    import inspect

    from transformers import modeling_gguf_pytorch_utils
    from transformers.utils import logging as transformers_logging

    from tunelab.models import resolve
    from tunelab.models.load import HIDDEN_BARS, _no_weight_loading_bars, route_gguf_bar_through_hook

    made = lambda *args, **kwargs: kwargs  # noqa: E731
    for desc in ("Converting and de-quantizing GGUF tensors...", "Loading weights", "Writing model shards"):
        assert desc.startswith(HIDDEN_BARS) and _no_weight_loading_bars(made, (), {"desc": desc})["disable"] is True
    # the description transformers' GGUF reader gives its bar (so an upgrade that rewords it fails here)
    assert "Converting and de-quantizing GGUF tensors" in inspect.getsource(modeling_gguf_pytorch_utils)
    route_gguf_bar_through_hook()
    assert modeling_gguf_pytorch_utils.tqdm is transformers_logging.tqdm
    with modeling_gguf_pytorch_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...") as bar:
        assert bar.disable
    assert "route_gguf_bar_through_hook()" in inspect.getsource(resolve.gguf_to_hf_folder)  # the fetch path calls it
