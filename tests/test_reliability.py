"""Small reliability fixes, each with the test that failed before it: the hub check's expiry,
stop sequences, and the Ollama Modelfile's template for every catalog model's chat template."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess

import pytest
from chat_templates import GEMMA3_IT_TEMPLATE, QWEN25_TEMPLATE


# ---------------------------------------------------------------- the hub check
def test_hub_check_is_rechecked_after_its_ttl(monkeypatch):
    """A long-running server must notice the network coming back (it was cached for the process's life)."""
    from tunelab.models import resolve

    clock = [1000.0]
    answers = [OSError("down"), None]  # first unreachable, then reachable
    calls = []

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def connect(address, timeout):
        calls.append(address)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return Connection()

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(resolve.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(resolve, "_hub_checked", None, raising=False)
    assert resolve.hub_reachable() is False
    clock[0] += 10
    assert resolve.hub_reachable() is False and len(calls) == 1  # within the TTL: no new connection
    clock[0] += resolve.HUB_RECHECK_SECONDS
    assert resolve.hub_reachable() is True and len(calls) == 2  # expired: checked again
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve.hub_reachable() is False and len(calls) == 2  # offline mode never connects


# ---------------------------------------------------------------- the Ollama Modelfile
CONVERSATIONS = [
    [{"role": "user", "content": "X"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."}],
    [
        {"role": "system", "content": "Answer in German."},
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "Eins."},
        {"role": "user", "content": "Two?"},
    ],
]
# (catalog model, its template (None: the real tokenizer's), expected stops, does the jinja write BOS itself)
CATALOG_TEMPLATES = [
    ("smollm2-135m-instruct", None, ["<|im_start|>", "<|im_end|>"], False),
    ("qwen2.5-coder-0.5b-instruct", QWEN25_TEMPLATE, ["<|im_start|>", "<|im_end|>"], False),
    ("gemma3-270m (base: tunelab's default template)", "default", ["### Instruction:"], True),
    ("gemma-3 instruction-tuned", GEMMA3_IT_TEMPLATE, ["<start_of_turn>", "<end_of_turn>"], True),
]


def _tokenizer_with(smollm2_dir, template):
    """SmolLM2's real tokenizer, with another catalog model's chat template put on it."""
    from tunelab.models.load import load_tokenizer
    from tunelab.models.templates import DEFAULT_CHAT_TEMPLATE

    tok = load_tokenizer(smollm2_dir)
    if template is not None:
        tok.chat_template = DEFAULT_CHAT_TEMPLATE if template == "default" else template
    return tok


def _modelfile(tok) -> str:
    from tunelab.export.modelfile import modelfile_text

    user_only = tok.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
    return modelfile_text("m.gguf", tok.chat_template, tok.eos_token, user_only)


def _quoted(modelfile: str, keyword: str) -> str | None:
    found = re.search(rf'^{keyword} """(.*?)"""$', modelfile, re.S | re.M)
    return found.group(1) if found else None


@pytest.mark.parametrize("name,template,stops,writes_bos", CATALOG_TEMPLATES, ids=[c[0].split()[0] for c in CATALOG_TEMPLATES])
def test_modelfile_has_template_and_stops_for_every_catalog_template(smollm2_dir, name, template, stops, writes_bos):
    tok = _tokenizer_with(smollm2_dir, template)
    text = _modelfile(tok)
    assert _quoted(text, "TEMPLATE"), text
    for stop in [tok.eos_token, *stops]:
        assert f"PARAMETER stop {json.dumps(stop)}" in text, (stop, text)
    if name.startswith(("smollm2", "qwen")):
        assert _quoted(text, "SYSTEM").startswith("You are"), text  # the template's own default system prompt


GO_RENDER = """package main

import (
\t"encoding/json"
\t"os"
\t"strings"
\t"text/template"
)

type Message struct {
\tRole    string
\tContent string
}

func main() {
\tvar in struct {
\t\tTemplate string
\t\tCases    [][]Message
\t}
\tif err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
\t\tpanic(err)
\t}
\ttmpl := template.Must(template.New("modelfile").Parse(in.Template))
\tout := []string{}
\tfor _, messages := range in.Cases {
\t\tvar b strings.Builder
\t\tif err := tmpl.Execute(&b, map[string]any{"Messages": messages}); err != nil {
\t\t\tpanic(err)
\t\t}
\t\tout = append(out, b.String())
\t}
\tjson.NewEncoder(os.Stdout).Encode(out)
}
"""


def go_render(template: str, cases: list[list[dict]], workdir) -> list[str]:
    """Render a Go template as Ollama does (text/template, `.Messages` of Role/Content)."""
    source = workdir / "render.go"
    source.write_text(GO_RENDER)
    cases = [[{"Role": m["role"], "Content": m["content"]} for m in conv] for conv in cases]
    done = subprocess.run(
        ["go", "run", str(source)], input=json.dumps({"Template": template, "Cases": cases}), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


# CI (.ci/run) installs Go and sets TUNELAB_REQUIRE_GO=1, so there a missing Go fails instead of skipping.
@pytest.mark.skipif(
    shutil.which("go") is None and os.environ.get("TUNELAB_REQUIRE_GO") != "1",
    reason="Go is not installed (apt-get install golang-go): Ollama's templates are Go's",
)
@pytest.mark.parametrize("name,template,stops,writes_bos", CATALOG_TEMPLATES, ids=[c[0].split()[0] for c in CATALOG_TEMPLATES])
def test_modelfile_template_renders_like_the_jinja_template(smollm2_dir, tmp_path, name, template, stops, writes_bos):
    """Go's text/template on the Modelfile's TEMPLATE gives the same prompt as the model's jinja
    template, for one and several turns, with and without a system prompt (BOS aside: Ollama's
    tokenizer adds it)."""
    tok = _tokenizer_with(smollm2_dir, template)
    text = _modelfile(tok)
    system = _quoted(text, "SYSTEM")
    as_ollama_sends = [
        conv if conv[0]["role"] == "system" or not system else [{"role": "system", "content": system}, *conv] for conv in CONVERSATIONS
    ]
    rendered = go_render(_quoted(text, "TEMPLATE"), as_ollama_sends, tmp_path)
    for conv, go_prompt in zip(CONVERSATIONS, rendered):
        jinja_prompt = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        if writes_bos:
            assert jinja_prompt.startswith(tok.bos_token)
            jinja_prompt = jinja_prompt[len(tok.bos_token) :]
        assert go_prompt == jinja_prompt, (name, conv)


# ---------------------------------------------------------------- checkpoints cut off mid-write
def test_checkpoint_with_a_cut_off_trainer_state_is_not_resumed_from(tmp_path):
    """A kill while the Trainer writes trainer_state.json (last, not atomically) leaves it cut off:
    that checkpoint is removed and the one before is used (resuming from it crashed with a
    SafetensorError; tests/test_crash_resume.py does it with a real SIGKILL)."""
    from tunelab.train.run import last_complete_checkpoint

    good, cut, missing = (tmp_path / f"checkpoint-{n}" for n in (3, 4, 5))
    for folder in (good, cut, missing):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": []}))
    (cut / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
    assert last_complete_checkpoint(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]


# ---------------------------------------------------------------- the soak's memory slope
def test_serve_load_memory_slope_is_mib_per_thousand_requests():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).parent.parent / "bench" / "serve_load.py")
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    leaking = [(n, 300 + 0.25 * n + (1 if n % 2 else -1)) for n in range(0, 400, 7)]  # 0.25 MiB per request, with noise
    assert serve_load.memory_slope(leaking) == pytest.approx(250, rel=0.02)
    assert serve_load.memory_slope([(n, 300.0) for n in range(10)]) == pytest.approx(0, abs=1e-9)
    assert serve_load.memory_slope([(0, 300.0), (0, 310.0)]) != serve_load.memory_slope([(0, 300.0), (0, 310.0)])  # NaN: no requests yet


# ---------------------------------------------------------------- the shared cache
def _make_once(target: str, log: str) -> None:
    """What resolve_model and base_model_gguf do under the lock: look, and make it only if it is not there."""
    import time
    from pathlib import Path

    from tunelab.io import atomic_write_text, cache_lock

    with cache_lock(target):
        if not Path(target).exists():
            with open(log, "a") as f:
                f.write("made\n")
            time.sleep(0.5)  # a conversion takes a while: the other process arrives meanwhile
            atomic_write_text(target, "converted")


def test_two_processes_needing_one_cache_entry_make_it_once(tmp_path):
    """Two commands (or two pytest workers) that need the same conversion at once: one makes it, the other
    waits and finds it (before the lock, both converted and swapped folders under each other)."""
    import multiprocessing

    target, log = tmp_path / "models" / "entry", tmp_path / "made.log"
    procs = [multiprocessing.get_context("fork").Process(target=_make_once, args=(str(target), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text() == "made\n" and target.read_text() == "converted"
