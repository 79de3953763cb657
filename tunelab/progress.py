"""Where tunelab writes: progress bars and messages to stderr (`console`), result tables to stdout
(`print_table`), so results can be piped (`tunelab models | grep gemma`) while progress stays visible."""

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
from rich.table import Table

console = Console(stderr=True)
results = Console()
if not results.is_terminal:
    # Piped or redirected there is no terminal width to fit: a table keeps its natural width, so no
    # name or path is folded over several lines and `grep` finds it whole.
    results.width = 10_000


def print_table(table: Table) -> None:
    """A result table, on stdout."""
    results.print(table)


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
