"""The one writer of bench/RESULTS.md: each bench script replaces its own section on this CPU, nothing else.

A bench script reaches it through bench/harness.py, which does three steps for it:

    results.add_arguments(parser)       # --allow-busy, --max-load, --results
    idle = results.check_idle(args.max_load, args.allow_busy)   # before measuring anything
    ...                                 # the script's interleaved repeats; figures as results.median_range(values)
    results.write_section(args.results, TITLE, body, idle)

A section's heading is its title and the CPU it was measured on, `## TITLE · CPU` (`keyed_title`;
the CPU as tunelab.cpu names it, e.g. `Intel(R) Xeon(R) Processor (AMX)`): the same bench on
another CPU has a section of its own, so a run on one CPU never overwrites another's figures.
`write_section` puts a header above the script's tables (the exact command line, date, git
commit, CPU and what tunelab decided from it, torch threads, load average before and after) and
replaces the section `## TITLE · CPU` of RESULTS.md (up to the next `## ` heading), or appends it;
every other byte of the file stays as it was. The file is written to a temporary file and renamed
into place.

`check_idle` refuses to record figures taken while other processes load the machine: the
1-minute load average must fall to `max_load` (waiting up to a few minutes, so benches can run
one after another). `--allow-busy` records anyway, under a bold warning not to quote them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from tunelab.cpu import IDLE_LOAD, cpu, wait_until_idle

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
BUSY_WARNING = (
    "**Taken under load (1-minute load average {load:.2f} before the run, recorded with `--allow-busy`): "
    "these figures describe the machine's other work as much as this code and are not to be quoted.**"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every bench script shares."""
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file whose section this run replaces")
    parser.add_argument("--max-load", type=float, default=IDLE_LOAD, help="highest 1-minute load average at which figures are recorded")
    parser.add_argument(
        "--allow-busy", action="store_true", help="record even when the machine is busy (the section then says not to quote it)"
    )


def check_idle(max_load: float = IDLE_LOAD, allow_busy: bool = False, wait_s: float = 300.0, poll_s: float = 10.0) -> dict:
    """The load average before the run ({"load_before": (1, 5, 15 min), "busy": bool}); exits if the machine stays busy.

    The 1-minute load must be at most `max_load`; tunelab.cpu.wait_until_idle waits up to `wait_s` for it
    to fall. With `allow_busy` it goes on at once, and write_section marks the figures as not to be quoted.
    """
    if allow_busy:
        load = os.getloadavg()
        return {"load_before": load, "busy": load[0] > max_load}
    load, busy = wait_until_idle(max_load, wait_s, poll_s)
    if busy:
        sys.exit(
            f"refusing to measure: the 1-minute load average is {load[0]:.2f} (above {max_load}) after waiting {wait_s:.0f} s, "
            "so other processes would be measured too. Run this on an idle machine, or pass --allow-busy to record figures marked as not to be quoted."
        )
    return {"load_before": load, "busy": False}


def median_range(values: list[float], digits: int = 1, unit: str = "") -> str:
    """'median (min–max)' of repeated measurements, e.g. '1.52x (1.48–1.60x)'; fewer than 3 are marked with their count."""
    if not values:
        return "n/a"
    med, lo, hi = (f"{x:,.{digits}f}" for x in (statistics.median(values), min(values), max(values)))
    return f"{med}{unit} ({lo}–{hi}{unit}" + (")" if len(values) >= 3 else f", n={len(values)})")


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- the header of a section
def git_commit() -> str:
    """The short commit, '+dirty' if tracked files differ from it (RESULTS.md itself does not count)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/RESULTS.md"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:  # no git program (a bare GPU machine): the figures must still be written
        return "unknown (no git here)"
    if head.returncode != 0:
        return "unknown (no git here)"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def cpu_line() -> str:
    """The CPU, what tunelab decided from it, and the number of logical CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu().describe()}; {cpus} logical CPUs"


def torch_threads() -> str:
    torch = sys.modules.get("torch")  # only if the bench imported it: this module never loads torch itself
    return str(torch.get_num_threads()) if torch is not None else "n/a (torch not used in this process)"


def header(idle: dict, command: list[str] | None = None) -> str:
    """The lines under a section's title: what ran, where, when, on which code, and how busy the machine was."""
    before, after = idle["load_before"], os.getloadavg()
    lines = [BUSY_WARNING.format(load=before[0]), ""] if idle["busy"] else []
    lines += [
        f"- command: `python {shlex.join(sys.argv if command is None else command)}`",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- commit: {git_commit()}",
        f"- CPU: {cpu_line()}",
        f"- torch threads: {torch_threads()}",
        f"- load average (1/5/15 min): {' / '.join(f'{x:.2f}' for x in before)} before, {' / '.join(f'{x:.2f}' for x in after)} after",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- replacing a section
def keyed_title(title: str, machine: str | None = None) -> str:
    """The heading of `title`'s section measured on `machine` (default: this CPU, as tunelab.cpu labels it)."""
    return f"{title} · {machine or cpu().label}"


def replace_section(text: str, title: str, section: str) -> str:
    """`text` with the section `## title` (up to the next `## ` heading) replaced by `section`, or `section` appended.

    `section` starts with its heading and ends with a newline; the rest of `text` is kept byte for byte.
    """
    heading = f"## {title}"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def write_section(path: Path, title: str, body: str, idle: dict, command: list[str] | None = None) -> str:
    """Replace this CPU's section of `title` (`## title · CPU`) in the results file at `path` by the header and
    `body`; returns the section.

    `idle` is what check_idle returned before the measurements; `command` defaults to sys.argv.
    """
    heading = keyed_title(title)
    section = "\n".join([f"## {heading}", "", header(idle, command), "", body.strip("\n"), ""])
    replace_file_section(path, heading, section)
    return section


def replace_file_section(path: Path, title: str, section: str) -> None:
    """Replace (or append) the section `## title` of the file at `path`: a temporary file renamed into place."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(replace_section(text, title, section), encoding="utf-8")
    os.replace(tmp, path)
