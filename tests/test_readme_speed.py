"""The README's speed table quotes bench/RESULTS.md: every figure in a row is in the section of the
bench script that row names, measured on the CPU that row names, so the README cannot drift from
what the scripts measured nor quote one CPU's figures as another's."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the figures a row quotes: decimals (tokens/s, ratios, MFU, losses) and the matmul peak MFU is against
FIGURES = r"\d[\d,]*\.\d+|[\d,]+(?= GFLOP/s)"


def sections(text: str) -> dict[tuple[str, str], str]:
    """RESULTS.md's sections by (title, CPU): each heading is `## TITLE · CPU` (bench/results.py keyed_title)."""
    found = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        title, sep, machine = part.splitlines()[0].rpartition(" · ")
        assert sep, f"a bench/RESULTS.md section names no CPU: ## {part.splitlines()[0]}"
        found[(title, machine)] = part
    return found


def speed_rows(readme: str) -> list[dict[str, str]]:
    """The rows of the table under the README's `## Speed` heading, each by its column names."""
    body = readme.split("\n## Speed\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split(" | ")))) for line in lines[1:]]


def test_every_speed_figure_is_in_its_bench_section_on_its_cpu():
    results = sections((ROOT / "bench" / "RESULTS.md").read_text())
    rows = speed_rows((ROOT / "README.md").read_text())
    assert rows, "the README has no speed table"
    for row in rows:
        assert row.get("CPU"), f"a speed row names no CPU: {row}"
        script = re.search(r"bench/\w+\.py", row["what"])
        assert script, f"a speed row names no bench script: {row['what']}"
        # `--model NAME` in the row: the script's section for that model ("... on NAME (bench/...)")
        model = re.search(r"--model ([\w.-]+)", row["what"])
        wanted = f"on {model.group(1)} ({script.group(0)})" if model else f"({script.group(0)})"
        matching = [
            body
            for (title, machine), body in results.items()
            if machine == row["CPU"] and title.endswith(wanted) and (model or " on " not in title)
        ]
        assert len(matching) == 1, f"bench/RESULTS.md has no section ending {wanted} · {row['CPU']}"
        quoted = " | ".join(cell for column, cell in row.items() if column != "CPU")
        for figure in re.findall(FIGURES, quoted):
            assert figure in matching[0], f"README quotes {figure} for {script.group(0)} on {row['CPU']}, which its section does not hold"
