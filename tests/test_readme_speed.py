"""The README's speed table quotes bench/RESULTS.md: every figure in a row is in the section of the
bench script that row names, so the README cannot drift from what the scripts measured."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sections(text: str) -> dict[str, str]:
    """RESULTS.md's sections by heading."""
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {p.splitlines()[0]: p for p in parts}


def speed_rows(readme: str) -> list[str]:
    """The data rows of the table under the README's `## Speed` heading."""
    body = readme.split("\n## Speed\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| what ")]
    return [r for r in rows if not set(r) <= set("|- ")]


def test_every_speed_figure_is_in_its_bench_section():
    results = sections((ROOT / "bench" / "RESULTS.md").read_text())
    rows = speed_rows((ROOT / "README.md").read_text())
    assert rows, "the README has no speed table"
    for row in rows:
        script = re.search(r"bench/\w+\.py", row)
        assert script, f"a speed row names no bench script: {row}"
        # `--model NAME` in the row: the script's section for that model ("... on NAME (bench/...)")
        model = re.search(r"--model ([\w.-]+)", row)
        wanted = f"on {model.group(1)} ({script.group(0)})" if model else f"({script.group(0)})"
        section = next((body for title, body in results.items() if title.endswith(wanted) and (model or " on " not in title)), None)
        assert section is not None, f"bench/RESULTS.md has no section ending {wanted}"
        for figure in re.findall(r"\d[\d,]*\.\d+", row):
            assert figure in section, f"README quotes {figure} for {script.group(0)}, which its RESULTS.md section does not hold"
