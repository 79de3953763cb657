"""`tunelab export RUN --format space`: the folder's contents, its app.py serving chat and votes
from the folder's own copy of tunelab, and (slow) a clean virtual environment made from the
folder's requirements.txt alone (plus the local wheel folders) running it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_export import make_lora_run, needs_llama
from test_serve_evaluate import wait_until_serving

from tunelab.evaluate.human import read_votes
from tunelab.runs import RunDir
from tunelab.serve.run import free_port

pytestmark = [pytest.mark.gguf, needs_llama]


@pytest.fixture(scope="module")
def space(tiny_model_dir, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from tunelab.cli import app

    run = make_lora_run(tmp_path_factory.mktemp("runs") / "tiny-run", tiny_model_dir)
    result = CliRunner().invoke(app, ["export", str(run), "--format", "space", "--no-check"])  # no GGUF yet: exported on the way
    assert result.exit_code == 0, result.output
    return run / "export" / "space"


def start_app(python: str, space: Path, port: int, env_extra: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the folder's own tunelab
    env.update(HF_HUB_OFFLINE="1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", TUNELAB_THREADS="1", **(env_extra or {}))
    env.pop("SPACE_ID", None)
    log = space.parent / f"app-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([python, "app.py"], cwd=space, env=env, stdout=out, stderr=subprocess.STDOUT)
    return wait_until_serving(proc, port, 300, log)


def chat_and_vote(port: int, space: Path) -> str:
    from gradio_client import Client

    meta = json.loads((space / "space.json").read_text())
    tuned, base = meta["tuned"]["label"], meta["base"]["label"]
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    try:
        answer = client.predict("Say hello.", tuned, "", 0.0, 1.0, 8, 1.0, api_name="/respond")
        prompt, *_ = client.predict("tester", base, tuned, api_name="/evaluate_next")
        assert prompt == "What is the capital of France?"  # the first held-out prompt, from the folder's data/test.jsonl
        list(client.submit("tester", base, tuned, prompt, "", 0.0, 1.0, 8, 1.0, api_name="/evaluate_answers"))
        reveal, *_ = client.predict("tester", api_name="/vote_tie")
    finally:
        client.close()
    assert tuned in reveal and base in reveal
    return answer


def test_space_folder_contents(space):
    names = {p.name for p in space.iterdir()}
    assert {"README.md", "app.py", "space.json", "requirements.txt", ".gitattributes", "models", "data", "tunelab"} <= names
    header = yaml.safe_load(space.joinpath("README.md").read_text().split("---")[1])
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py" and header["sdk_version"]
    reqs = space.joinpath("requirements.txt").read_text().splitlines()
    assert f"gradio=={header['sdk_version']}" in reqs and "--extra-index-url https://download.pytorch.org/whl/cpu" in reqs
    assert {line.split("==")[0] for line in reqs if "==" in line} >= {"llama_cpp_python", "gguf", "torch", "transformers", "gradio"}
    meta = json.loads(space.joinpath("space.json").read_text())
    ggufs = sorted(p.name for p in (space / "models").iterdir())
    assert ggufs == sorted([Path(meta["tuned"]["file"]).name, Path(meta["base"]["file"]).name])
    assert all(space.joinpath(meta[k]["file"]).read_bytes()[:4] == b"GGUF" for k in ("tuned", "base"))
    assert meta["tuned"]["file"].endswith("-q8_0.gguf") and meta["base"]["file"].endswith("-q8_0.gguf")  # the same quantization
    assert "*.gguf filter=lfs" in space.joinpath(".gitattributes").read_text()
    assert (space / "tunelab" / "serve" / "ui.py").is_file() and not list(space.rglob("__pycache__"))
    assert (space / "data" / "test.jsonl").read_text().count("\n") == 4
    assert not [p for p in space.parent.iterdir() if p.name.startswith(".space")]  # no work folders left behind


def test_space_app_serves_chat_and_evaluate_from_its_folder(space):
    port = free_port()
    proc = start_app(sys.executable, space, port)
    try:
        assert chat_and_vote(port, space).strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (vote,) = read_votes(RunDir(space).human_votes)  # the folder is its own run
    assert vote["vote"] == "tie" and vote["reference"] == "Paris." and vote["rater"] == "tester"


@pytest.mark.slow
def test_space_runs_in_a_clean_venv_from_its_own_requirements(space, tmp_path):
    from tunelab.export.llama_cpp import wheel_dirs

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    links = [arg for d in wheel_dirs() if d.is_dir() for arg in ("--find-links", str(d))]
    # --retries 0: PyTorch's CPU index (named in the file, for a Space) is unreachable from this machine,
    # where pip's find-links hold the same CPU torch wheel
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--retries", "0", *links, "-r", str(space / "requirements.txt")]
    subprocess.run(pip, check=True, timeout=1800)
    python = str(venv / "bin" / "python")
    cuda = subprocess.run([python, "-c", "import torch; print(torch.version.cuda)"], capture_output=True, text=True, check=True).stdout
    assert cuda.strip() == "None", "the Space's requirements installed a CUDA build of torch"
    port = free_port()
    proc = start_app(python, space, port, {"TUNELAB_VOTES": str(tmp_path / "votes.jsonl")})
    try:
        assert chat_and_vote(port, space).strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert [v["vote"] for v in read_votes(tmp_path / "votes.jsonl")] == ["tie"]
