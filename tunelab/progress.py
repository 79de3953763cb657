"""One progress bar style for all long work: rich, with rate and ETA."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar(transient: bool = False) -> Progress:
    """A rich Progress with description, bar, count, elapsed time, ETA and a free text field.

    Use `task = bar.add_task("Training", total=n, info="")` and
    `bar.update(task, advance=1, info="loss 1.23 | 250 tok/s")`.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
        refresh_per_second=2,
    )
