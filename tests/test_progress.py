"""Progress where stderr is no terminal (a log file, CI): plain lines with count, elapsed time and ETA."""

from __future__ import annotations

import io
import re

from rich.console import Console

from tunelab.progress import LoggedProgress


def test_a_log_gets_plain_progress_lines_with_an_eta():
    out = io.StringIO()
    clock = iter(float(t) for t in range(100))
    bar = LoggedProgress(console=Console(file=out, force_terminal=False), get_time=lambda: next(clock))
    bar.every = 2.0
    with bar:
        task = bar.add_task("Generating (base)", total=4, info="")
        for i in range(4):
            bar.update(task, advance=1, info=f"{10 * i} tok/s")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("Generating (base):")]
    assert len(lines) >= 2, out.getvalue()
    assert all("/4 after" in line for line in lines)
    assert all("ETA" in line for line in lines) and lines[-1].endswith("tok/s")
    for line in lines:  # the ETA is the average rate so far applied to what is left
        done, elapsed, eta = map(int, re.search(r": (\d+)/4 after (\d+) s, ETA (\d+) s", line).groups())
        assert abs(eta - elapsed * (4 - done) / done) <= (4 - done) / done + 1, line  # both figures are rounded
    assert not any(line.startswith("Generating (base): 4/4") for line in lines)  # the final state is rich's own line
