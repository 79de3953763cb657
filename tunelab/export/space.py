"""`tunelab export RUN --format space`: a folder to push to a Hugging Face Space as it is.

    <run>/export/space/
      README.md         the Space's card, opening with its YAML header (sdk: gradio, app_file, ...)
      app.py            tunelab's UI (Chat, Side by side, Evaluate) for the two GGUF files below
      space.json        which file is the tuned model, which its base, and their labels
      requirements.txt  gradio and llama-cpp-python at the versions this machine runs; no torch
      .gitattributes    the GGUF files go through Git LFS
      models/           the run's GGUF (exported first if the run has none) and its base's, same quantization
      data/test.jsonl   the run's held-out split: the Evaluate tab's prompts and references
      tunelab/          tunelab's own source (it is not on PyPI)

The folder is built beside its destination and renamed into place when complete.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import tunelab
from tunelab.errors import TunelabError
from tunelab.export.card import base_licence
from tunelab.export.llama_cpp import PORTABLE_WHEELS
from tunelab.export.merge import base_model_path
from tunelab.export.run import export_run
from tunelab.io import atomic_dir, atomic_write_json, atomic_write_text
from tunelab.progress import console
from tunelab.runs import RunDir, gguf_quant, model_weights, split_gguf_name

QUANT_PREFERENCE = ("q8_0", "q4_k_m", "f16")  # the tuned GGUF the Space serves, if the run has several
# what app.py runs: tunelab/serve/space_app.py (the UI, all three tabs) and, once a model loads, the GGUF backend
SPACE_MODULES = ("tunelab.serve.space_app", "tunelab.models.chat", "llama_cpp")
REQUIREMENTS_HEADER = [
    "# Pinned to the versions tunelab was run with when this folder was written (found by importing app.py's modules).",
    "# The Space runs its GGUF files with llama.cpp alone: no deep-learning framework to install.",
    "# llama-cpp-python has no wheel on PyPI: pip builds it from source once (about 11 minutes on 2 cores), or takes",
    f"# the portable wheel `make setup-gguf` cached: pip install --find-links ~/.cache/tunelab/wheels/{PORTABLE_WHEELS} -r requirements.txt",
]
SPACE_LICENCES = {"apache-2.0": "apache-2.0", "mit": "mit", "gemma terms of use": "gemma"}

APP_PY = '''"""A Hugging Face Space made by `tunelab export RUN --format space`: tunelab's UI for a fine-tuned
model and its base, both GGUF files run by llama.cpp on the CPU. Tabs: Chat, Side by side and
Evaluate (blind A/B votes, appended to eval/human_votes.jsonl here, or to TUNELAB_VOTES).
How it reads space.json and the settings: tunelab/serve/space_app.py, in this folder.

Run it anywhere: pip install -r requirements.txt && python app.py
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # tunelab's source travels in this folder

from tunelab.serve.space_app import launch, space_folder_ui  # noqa: E402

demo = space_folder_ui(HERE)

if __name__ == "__main__":
    launch(demo)
'''


def tuned_gguf(run: RunDir, check: bool) -> Path:
    """The run's GGUF export (Q8_0 preferred), exported now if it has none."""
    found = run.export_dir.ggufs_by_quant()
    for quant in QUANT_PREFERENCE:
        if quant in found:
            return found[quant]
    console.print(f"{run.root} has no GGUF export yet: exporting gguf-q8_0 first")
    report = export_run(run.root, ["gguf-q8_0"], check=check)
    if check and not report["passed"]:
        console.print(f"[yellow]warning:[/] the GGUF failed its faithfulness check: see {run.export_dir.faithfulness_md}")
    return run.export_dir.ggufs_by_quant()["q8_0"]


def base_gguf(base_ref: str, quant: str, work: Path) -> Path:
    """The base model as GGUF in the same quantization as the tuned one (a fair comparison)."""
    console.print(f"converting the base model {base_ref} to gguf-{quant}")
    report = export_run(base_ref, [f"gguf-{quant}"], out=work, check=False)
    return Path(report["formats"][f"gguf-{quant}"]["path"])


def loaded_modules() -> dict[str, str | None]:
    """{module: its file} for every module loaded once app.py's modules are imported, in a fresh interpreter
    (so it follows the code as it is)."""
    probe = (
        "import importlib, json, sys; [importlib.import_module(m) for m in sys.argv[1:]]; "
        "print(json.dumps({name: getattr(module, '__file__', None) for name, module in list(sys.modules.items())}))"
    )
    done = subprocess.run([sys.executable, "-c", probe, *SPACE_MODULES], capture_output=True, text=True)
    if done.returncode != 0:
        raise TunelabError(f"the Space's modules do not import here, so its requirements cannot be pinned:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def module_level_imports(path: Path) -> set[str]:
    """The top-level names a file imports when it is imported: outside its functions, whose imports are paid
    only when they run (the serving path's lazy ones are kept free of torch by tests/test_serve.py)."""
    found: set[str] = set()
    todo = list(ast.parse(path.read_text(), str(path)).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def direct_distributions(modules: dict[str, str | None]) -> set[str]:
    """The distributions tunelab's loaded modules import, and the third-party modules of SPACE_MODULES.
    Not every loaded module: libraries import optional ones when they are installed (pandas loads
    pyarrow, 170 MB, if it is there), which the Space does without."""
    names = {module.partition(".")[0] for module in SPACE_MODULES if not module.startswith("tunelab")}
    for module, file in modules.items():
        if file and module.partition(".")[0] == "tunelab":
            names |= module_level_imports(Path(file))
    owners = metadata.packages_distributions()
    third_party = names - set(sys.stdlib_module_names) - {"tunelab", "__future__"}
    return {dist for name in third_party for dist in owners.get(name, [])} - {"tunelab"}


def with_requirements(roots: set[str]) -> dict[str, str]:
    """{normalized name: distribution name} for `roots` and everything they require, as installed here
    (extras asked for included, markers evaluated for this interpreter): what pip installs for them."""
    found: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [(root, frozenset()) for root in roots]
    while todo:
        name, extras = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not for this platform or interpreter; pip installs it with what requires it, unpinned
        key = canonicalize_name(dist.metadata["Name"])
        if key in found and extras <= extras_seen[key]:
            continue
        found[key] = dist.metadata["Name"]
        extras_seen.setdefault(key, set()).update(extras)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": extra}) for extra in extras or {""}):
                todo.append((req.name, frozenset(req.extras)))
    return found


def requirements() -> str:
    """What the Space's code imports and what that requires, pinned to the versions installed here
    (serving GGUF files needs no torch, transformers or metric libraries: tunelab's serving path imports none)."""
    needed = with_requirements(direct_distributions(loaded_modules()))
    pins = sorted((f"{name}=={metadata.version(name).partition('+')[0]}" for name in needed.values()), key=str.lower)
    return "\n".join([*REQUIREMENTS_HEADER, *pins]) + "\n"


def readme(run: RunDir, info: dict, files: dict[str, Path], examples: int) -> str:
    licence = base_licence(info.get("base_model"), base_model_path(run.model))
    header = {
        "title": run.root.name,
        "emoji": "🧪",
        "colorFrom": "blue",
        "colorTo": "green",
        "sdk": "gradio",
        "sdk_version": metadata.version("gradio"),
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "app_file": "app.py",
        "pinned": False,
        "license": SPACE_LICENCES.get(licence.lower(), "other"),
        "short_description": f"{run.root.name}: chat and blind A/B votes against its base"[:60],
    }
    sizes = ", ".join(f"`{p.name}` ({p.stat().st_size / 2**20:.0f} MiB)" for p in files.values())
    return "\n".join(
        [
            "---",
            yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip(),
            "---",
            "",
            f"# {run.root.name}",
            "",
            f"`{info.get('base_model')}` fine-tuned with tunelab ({model_weights(info) or 'lora'}, {info.get('objective', 'sft')}), served next to its base by llama.cpp on the CPU: {sizes}.",
            f"Base model licence: {licence}.",
            "",
            "- **Chat**: the tuned model, streaming.",
            "- **Side by side**: one prompt, both models.",
            f"- **Evaluate**: blind A/B votes on the {examples} held-out prompts in `data/test.jsonl` (or typed ones). Votes are appended to "
            "`eval/human_votes.jsonl`; a Space's disk is wiped on restart, so set `TUNELAB_VOTES=/data/human_votes.jsonl` with persistent storage, "
            "or download the file. `tunelab votes human_votes.jsonl` (or the file placed in the run's `eval/`) computes win rates.",
            "",
            "Push: create a Gradio Space on huggingface.co, then `git clone` it, copy this folder's files in (hidden `.gitattributes` included, "
            "it sends `*.gguf` through Git LFS), `git lfs install`, commit and push; or upload the folder with the `hf` command line.",
            "",
            "Settings (the Space's variables): `TUNELAB_PASSWORD` (login, user `tunelab`), `TUNELAB_MAX_TOKENS` (default 256), `TUNELAB_VOTES`.",
            "",
            "Locally: `python -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python app.py` (http://127.0.0.1:7860).",
            "",
        ]
    )


def copy_source(dst: Path) -> None:
    shutil.copytree(Path(tunelab.__file__).parent, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def export_space(run_path: str | Path, out: Path | None = None, check: bool = True) -> Path:
    """Write the Space folder for a run directory; returns its path."""
    run = RunDir(Path(run_path))
    if not run.has_model():
        raise TunelabError(f"{run.root} is not a run directory (no {run.model_info_file}): a Space serves a tuned model beside its base")
    info = run.model_info()
    base_ref = run.base_model()
    out = Path(out) if out else run.export_dir.space
    tuned = tuned_gguf(run, check)
    quant = gguf_quant(tuned)  # one of QUANT_PREFERENCE: tuned_gguf found or exported it by that name
    reqs = requirements()
    run.export.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".space-base-", dir=run.export) as work:
        base = base_gguf(base_ref, quant, Path(work))
        with atomic_dir(out) as tmp:
            (tmp / "models").mkdir()
            files = {"tuned": tmp / "models" / tuned.name, "base": tmp / "models" / base.name}
            shutil.copy2(tuned, files["tuned"])
            shutil.move(base, files["base"])
            base_name = split_gguf_name(base)[0]
            atomic_write_json(
                tmp / "space.json",
                {
                    "title": f"{run.root.name} (tunelab)",
                    "run": run.root.name,
                    "tuned": {
                        "id": f"{run.root.name}-{quant}-gguf",
                        "label": f"{run.root.name} · {quant} gguf",
                        "file": f"models/{tuned.name}",
                    },
                    "base": {
                        "id": f"{base_name}-{quant}-gguf",
                        "label": f"{base_name} · {quant} gguf (base)",
                        "file": f"models/{base.name}",
                    },
                },
            )
            test = run.split("test")
            examples = 0
            if test.is_file():
                (tmp / "data").mkdir()
                shutil.copy2(test, tmp / "data" / "test.jsonl")
                examples = sum(1 for line in test.read_text().splitlines() if line.strip())
            atomic_write_text(tmp / "app.py", APP_PY)
            atomic_write_text(tmp / "requirements.txt", reqs)
            atomic_write_text(tmp / ".gitattributes", "*.gguf filter=lfs diff=lfs merge=lfs -text\n")
            atomic_write_text(tmp / "README.md", readme(run, info, files, examples))
            copy_source(tmp / "tunelab")
    console.print(f"[green]Space folder[/] {out}: push it to a Gradio Space (see its README.md)")
    return out
