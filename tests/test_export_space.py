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
from packaging.utils import canonicalize_name
from test_export import make_lora_run, needs_llama
from test_serve_evaluate import wait_until_serving

from tunelab.evaluate.human import read_votes
from tunelab.export.llama_cpp import PORTABLE_WHEELS
from tunelab.runs import RunDir
from tunelab.serve.run import free_port

pytestmark = [pytest.mark.gguf, needs_llama]

# the training and evaluation stack, which a Space serving GGUF files does without (2 GB and more)
NOT_FOR_A_SPACE = {"torch", "transformers", "peft", "accelerate", "datasets", "scikit-learn", "scipy", "matplotlib", "nltk"}
NOT_FOR_A_SPACE |= {"sacrebleu", "rouge-score", "bert-score", "pyarrow", "bitsandbytes"}
# gradio, llama-cpp-python and what they need: 406 MiB measured (docs/serve.md), where torch alone adds
# about 1 GB and pyarrow 170 MB; the limit leaves room for version drift, not for another framework
SPACE_VENV_LIMIT = 450 * 2**20


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
    assert f"gradio=={header['sdk_version']}" in reqs
    pinned = {canonicalize_name(line.split("==")[0]) for line in reqs if "==" in line}
    assert pinned >= {"llama-cpp-python", "gguf", "gradio", "fastapi", "uvicorn", "numpy"}
    assert not pinned & NOT_FOR_A_SPACE, "the Space would install " + ", ".join(sorted(pinned & NOT_FOR_A_SPACE))
    assert not [line for line in reqs if line.startswith("-") or "torch" in line]  # no PyTorch index either
    assert f"--find-links ~/.cache/tunelab/wheels/{PORTABLE_WHEELS}" in "\n".join(reqs)  # where the portable wheel is
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
    links = [arg for d in wheel_dirs() if d.is_dir() for arg in ("--find-links", str(d))]  # the portable llama-cpp-python wheel
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *links, "-r", str(space / "requirements.txt")]
    subprocess.run(pip, check=True, timeout=1800)
    python = str(venv / "bin" / "python")
    for name in ("torch", "transformers"):
        found = subprocess.run([python, "-c", f"import {name}"], capture_output=True)
        assert found.returncode != 0, f"the Space's requirements installed {name}"
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    assert size < SPACE_VENV_LIMIT, f"the Space's venv takes {size / 2**20:.0f} MiB"
    port = free_port()
    proc = start_app(python, space, port, {"TUNELAB_VOTES": str(tmp_path / "votes.jsonl")})
    try:
        assert chat_and_vote(port, space).strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert [v["vote"] for v in read_votes(tmp_path / "votes.jsonl")] == ["tie"]
