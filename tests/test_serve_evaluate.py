"""The Evaluate tab against a real server (tiny random model, real SmolLM2 tokenizer): blind
rounds over the run's held-out prompts, votes in <run>/eval/human_votes.jsonl, names shown only
after the vote, and a vote file that survives a kill of the `tunelab serve` process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import QA
from test_serve import make_run

from tunelab.evaluate.human import read_votes
from tunelab.runs import RunDir
from tunelab.serve.generation import ServeLimits
from tunelab.serve.registry import build_registry
from tunelab.serve.run import ServerThread, build_app, free_port

TUNED = "demo (adapter)"
SETTINGS = ("", 0.7, 0.9, 8, 1.0)  # system prompt, temperature, top-p, max new tokens, repetition penalty


def write_test_split(run: Path) -> list[dict]:
    rows = [
        {"id": f"t{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "source": "qa"}
        for i, (q, a) in enumerate(QA)
    ]
    RunDir(run).split("test").parent.mkdir(parents=True, exist_ok=True)
    RunDir(run).split("test").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    run = make_run(tmp_path_factory.mktemp("runs"), "demo", tiny_model_dir, merged=False)
    write_test_split(run)
    return run


def one_round(client, rater: str, base: str, vote: str = "a") -> tuple[str, tuple]:
    """Next held-out prompt, both answers (every streamed update kept), a vote; returns (prompt, updates, reveal)."""
    prompt, *_ = client.predict(rater, base, TUNED, api_name="/evaluate_next")
    job = client.submit(rater, base, TUNED, prompt, *SETTINGS, api_name="/evaluate_answers")
    updates = list(job)
    reveal, *_ = client.predict(rater, api_name=f"/vote_{vote}")
    return prompt, updates, reveal


def test_blind_rounds_over_held_out_prompts(run_dir, tiny_model_dir):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    base = f"{tiny_model_dir.name} (base)"
    registry = build_registry([str(run_dir), str(tiny_model_dir)], runs=None)  # the base named: its folder is allowed
    random.seed(0)  # the server runs in this process: its A/B draws are then fixed
    with ServerThread(build_app(registry, ServeLimits(max_tokens=16), ui=True)) as url:
        client = Client(f"{url}/", verbose=False)
        try:
            with pytest.raises(AppError, match="get both answers first"):
                client.predict("alice", api_name="/vote_a")
            with pytest.raises(AppError, match="type your name"):
                client.predict("", base, TUNED, api_name="/evaluate_next")
            rounds = [one_round(client, "alice", base, vote) for vote in ["a", "b", "tie", "both_bad", "a", "b"]]
            with pytest.raises(AppError, match="already has its vote|has its vote"):
                client.predict("alice", api_name="/vote_a")
            # a typed prompt: no reference, the UI's system prompt recorded
            job = client.submit("alice", base, TUNED, "Tell me a joke.", "Be brief.", 0.0, 1.0, 6, 1.0, api_name="/evaluate_answers")
            list(job)
            client.predict("alice", api_name="/vote_tie")
            bob_prompt, *_ = client.predict("bob", base, TUNED, api_name="/evaluate_next")
        finally:
            client.close()
    votes = read_votes(RunDir(run_dir).human_votes)
    assert len(votes) == 7
    # held-out prompts in file order, each once per rater; bob starts at the first
    assert [v["example_id"] for v in votes[:6]] == [f"t{i}" for i in range(6)]
    assert [r[0] for r in rounds] == [q for q, _ in QA[:6]] and bob_prompt == QA[0][0]
    assert [v["reference"] for v in votes[:6]] == [a for _, a in QA[:6]]
    assert [v["vote"] for v in votes[:6]] == ["A", "B", "tie", "both_bad", "A", "B"]
    assert {v["candidate"] for v in votes} == {TUNED} and {v["baseline"] for v in votes} == {base}
    assert {v["model_a"] for v in votes} == {TUNED, base}  # both orders were drawn
    for (_, updates, reveal), v in zip(rounds, votes):
        assert len(updates) >= 2  # streamed
        final = updates[-1]
        assert (final[0], final[1]) == (v["answer_a"], v["answer_b"]) and v["answer_a"] and v["answer_b"]
        shown_before_vote = json.dumps(updates)
        assert TUNED not in shown_before_vote and base not in shown_before_vote  # blind until the vote
        assert f"**A** was `{v['model_a']}`, **B** was `{v['model_b']}`" in reveal
        assert v["settings"]["max_new_tokens"] == 8 and v["settings"]["temperature"] == 0.7 and v["rater"] == "alice"
    typed = votes[6]
    assert typed["example_id"] is None and typed["reference"] is None
    assert typed["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a joke."}]
    assert typed["settings"]["system_prompt"] == "Be brief."


def start_serve(run_dir: Path, base_dir: Path, port: int) -> subprocess.Popen:
    """`tunelab serve RUN BASE` as its own process (the base named so its folder is allowed)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    cmd = ["tunelab.cli", "serve", str(run_dir), str(base_dir), "--runs", str(run_dir.parent), "--port", str(port), "--max-tokens", "2000"]
    proc = subprocess.Popen([sys.executable, "-m", *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_until_serving(proc, port, 120)


def wait_until_serving(proc: subprocess.Popen, port: int, timeout: float, log: Path | None = None) -> subprocess.Popen:
    """`proc` once its Gradio app answers on 127.0.0.1:`port`; killed (log tail shown) if it never does."""
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/config").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError("the server did not start" + (":\n" + log.read_text()[-3000:] if log else ""))
        time.sleep(0.3)


def test_votes_survive_a_kill_of_the_server(tmp_path, tiny_model_dir):
    from gradio_client import Client

    run = make_run(tmp_path / "runs", "demo", tiny_model_dir, merged=False)
    write_test_split(run)
    base = f"{tiny_model_dir.name} (base)"
    port = free_port()
    proc = start_serve(run, tiny_model_dir, port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for vote in ["a", "b", "tie"]:
            one_round(client, "alice", base, vote)
        prompt, *_ = client.predict("alice", base, TUNED, api_name="/evaluate_next")
        job = client.submit("alice", base, TUNED, prompt, "", 1.0, 1.0, 2000, 1.0, api_name="/evaluate_answers")
        deadline = time.time() + 60
        while not job.outputs() and time.time() < deadline:  # the answer has started streaming
            time.sleep(0.05)
        assert job.outputs() and not job.done()
        proc.send_signal(signal.SIGKILL)  # mid-answer, no chance to clean up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    votes = read_votes(RunDir(run).human_votes)
    assert [v["vote"] for v in votes] == ["A", "B", "tie"]
    assert RunDir(run).human_votes.read_bytes().endswith(b"\n")
    # a new server appends after them
    proc = start_serve(run, tiny_model_dir, port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        prompt, _, _ = one_round(client, "alice", base, "both_bad")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    votes = read_votes(RunDir(run).human_votes)
    assert [v["vote"] for v in votes] == ["A", "B", "tie", "both_bad"]
    assert prompt == QA[3][0]  # it went on where alice stopped
