"""Facts with one owner stay that way: a second copy of one of them (a GGUF file name built or parsed
again, another "runs" default folder, another 0.95) fails here, naming the file and line. Also: every
file a run directory can hold is named in docs/run-directory.md, and every import inside a function
says why it is there (docs/architecture.md, "Imports")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tunelab.config import LORA_BASE_QUANT, MERGED_GGUF_FORMATS
from tunelab.runs import BenchmarkDir, DataDir, EvalDir, ExportDir, PreferenceEvalDir, RunDir, gguf_name

ROOT = Path(__file__).resolve().parent.parent


def sources() -> list[Path]:
    """Every Python file of the package, the benches and the Space entry point."""
    return sorted([*(ROOT / "tunelab").rglob("*.py"), *(ROOT / "bench").rglob("*.py"), ROOT / "app.py"])


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def constants(value) -> list[str]:
    """file:line of every literal equal to `value` (f-string parts included; docstrings and comments are not literals that count)."""
    found = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and type(node.value) is type(value) and node.value == value:
                found.append(where(path, node.lineno))
    return found


# ---------------------------------------------------------------- one owner each
# `<name>-<quant>.gguf`: built from variables (an f-string ending in `}.gguf`), globbed (`*-q8_0.gguf`) or
# parsed back from a file's stem
GGUF_NAME_PATTERNS = [r"\}\.gguf", r"\*-[^\"']*\.gguf", r"stem(\.lower\(\))?\.(endswith|removesuffix)\(", r"removesuffix\(f?[\"']-"]


def test_gguf_file_names_are_built_and_read_in_runs_py_alone():
    found = [
        where(path, n)
        for path in sources()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(re.search(p, line) for p in GGUF_NAME_PATTERNS)
    ]
    assert len(found) == 1 and found[0].startswith("tunelab/runs.py:"), (
        "GGUF file names belong to tunelab/runs.py (gguf_name, split_gguf_name, gguf_quant, ExportDir): " + ", ".join(found)
    )


def test_the_default_runs_folder_is_named_once():
    found = constants("runs") + constants("runs/data")
    assert len(found) == 1 and found[0].startswith("tunelab/runs.py:"), "use tunelab.runs.DEFAULT_RUNS_DIR: " + ", ".join(found)


# 0.95 where it means something else than the confidence level of an interval
OTHER_095 = {
    "tunelab/data/dedup.py": 1,  # the highest MinHash LSH threshold
    "bench/serve_load.py": 2,  # the 95th percentile of latencies
    "bench/llama_cpp_builds.py": 1,  # the goal: the portable llama.cpp build at >= 0.95x the native one
    "tunelab/config.py": 1,  # CodeEvalConfig.top_p, the Codex paper's nucleus for sampled code answers
}


def test_the_confidence_level_is_set_once():
    found = constants(0.95)
    owner = [f for f in found if f.startswith("tunelab/evaluate/metric_facts.py:")]
    others: dict[str, int] = {}
    for f in found:
        if f not in owner:
            others[f.split(":")[0]] = others.get(f.split(":")[0], 0) + 1
    assert len(owner) == 1, owner
    assert others == OTHER_095, f"use tunelab.evaluate.metric_facts.CONFIDENCE: {sorted(set(found) - set(owner))}"


def test_peak_memory_is_read_in_cpu_py_alone():
    """One rule for a process's peak memory (VmHWM, not ru_maxrss, which a child inherits from the process that
    started it): the benches, distributed training and the serving cost all call tunelab.cpu.peak_rss_mib."""
    found = [
        where(path, n)
        for path in sources()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"ru_maxrss|VmHWM", line) and not line.lstrip().startswith("#")
    ]
    assert found and all(f.startswith("tunelab/cpu.py:") for f in found), "use tunelab.cpu.peak_rss_mib: " + ", ".join(found)


def test_the_checks_above_would_see_a_second_owner(tmp_path, monkeypatch):
    copy = tmp_path / "bench" / "copy.py"
    copy.parent.mkdir()
    copy.write_text('out = Path("runs")\nci = {"confidence": 0.95}\nggufs = sorted(folder.glob(f"*-{q}.gguf"))\n')
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "app.py").write_text("")
    assert constants("runs") == ["bench/copy.py:1"] and constants(0.95) == ["bench/copy.py:2"]
    lines = copy.read_text().splitlines()
    assert [n for n, line in enumerate(lines, 1) if any(re.search(p, line) for p in GGUF_NAME_PATTERNS)] == [3]


# ---------------------------------------------------------------- the benches' scaffolding
def test_the_benches_share_one_harness_and_patch_nothing():
    """bench/harness.py alone sets the benches' environment and defines their hidden worker flags; no bench patches
    tunelab's names (what a bench needs from the trainer is a public parameter) or imports a test module."""
    owner = ROOT / "bench" / "harness.py"
    for path in sorted((ROOT / "bench").glob("*.py")):
        text, name = path.read_text(), path.relative_to(ROOT)
        assert not re.search(r"unittest\.mock|mock\.patch|monkeypatch", text), f"{name} patches code at run time"
        assert not re.search(r"^\s*(from|import) (conftest|test_\w+)\b|\"tests\"\)", text, re.M), f"{name} imports from tests/"
        if path != owner:
            assert '"--worker"' not in text, f"{name} defines the hidden worker flags: bench/harness.py owns them"
            assert 'setdefault("HF_HUB_OFFLINE"' not in text, f"{name} sets the benches' environment: bench/harness.py owns it"


# ---------------------------------------------------------------- the run directory's files are documented
def run_directory_file_names(root: Path) -> set[str]:
    """The name of every file and folder the run directory's layouts (tunelab/runs.py) give a path to."""
    layouts = [RunDir(root), DataDir(root), EvalDir(root), BenchmarkDir(root), PreferenceEvalDir(root), ExportDir(root)]
    names = set()
    for layout in layouts:
        for attr, value in vars(type(layout)).items():
            if isinstance(value, property) and isinstance(path := getattr(layout, attr), Path):
                names.add(path.name)
    names |= {DataDir(root).split(s).name for s in ("train", "validation", "test")}
    names |= {gguf_name("<name>", f.removeprefix("gguf-")) for f in MERGED_GGUF_FORMATS}
    names |= {ExportDir(root).lora_adapter("<name>").name, ExportDir(root).lora_base("<base>", LORA_BASE_QUANT).name}
    return names


def test_every_file_of_a_run_directory_is_in_its_documentation(tmp_path):
    names = run_directory_file_names(tmp_path)
    assert {"recipe.yaml", "benchmark.json", "faithfulness.md", "human_votes.jsonl", "<name>-q8_0.gguf"} <= names  # the walk works
    doc = (ROOT / "docs" / "run-directory.md").read_text()
    missing = sorted(n for n in names if not re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w-])", doc))
    assert not missing, f"docs/run-directory.md does not name {missing}, which tunelab/runs.py gives a path to"


# ---------------------------------------------------------------- every import inside a function says why
# cli.py imports each stage inside its command, for one reason its module docstring gives once
# (`tunelab --help` stays fast); every other import inside a function carries its own comment.
EXPLAINED_ONCE = {"tunelab/cli.py"}


def unexplained_imports(path: Path) -> list[int]:
    """Lines of imports inside a function with no comment on their line or the line above. A run of imports
    (blank lines between them allowed) shares the comment of its first one."""
    lines = path.read_text().splitlines()
    imports = sorted(
        {
            node.lineno: node
            for fn in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
            if isinstance(node, (ast.Import, ast.ImportFrom))
        }.items()
    )
    explained: set[int] = set()  # last lines of explained imports
    missing = []
    for start, node in imports:
        above = start - 1
        while above > 0 and not lines[above - 1].strip():
            above -= 1
        before = lines[above - 1].strip() if above > 0 else ""
        if "#" in lines[start - 1] or before.startswith("#") or above in explained:
            explained.add(node.end_lineno)
        else:
            missing.append(start)
    return missing


def test_every_import_inside_a_function_has_a_reason():
    found = [
        where(path, line)
        for path in sorted((ROOT / "tunelab").rglob("*.py"))
        if str(path.relative_to(ROOT)) not in EXPLAINED_ONCE
        for line in unexplained_imports(path)
    ]
    assert not found, "an import inside a function needs a comment saying why it is not at the top: " + ", ".join(found)


@pytest.mark.parametrize(
    "body, missing",
    [
        ("def f():\n    import torch\n", [2]),
        ("def f():\n    import torch  # heavy\n", []),
        ("def f():\n    # heavy, and only this path needs them\n    import torch\n\n    from peft import x\n", []),
        ("def f():\n    import torch  # heavy\n    y = 1\n    import numpy\n", [4]),
        ("import os\n\ndef f():\n    return os\n", []),
    ],
)
def test_the_import_check_sees_a_missing_reason(tmp_path, body, missing):
    path = tmp_path / "m.py"
    path.write_text(body)
    assert unexplained_imports(path) == missing
