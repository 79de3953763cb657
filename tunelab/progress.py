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


class LoggedProgress(Progress):
    """Progress for a log file or CI output (stderr is no terminal, so rich draws no bar): a plain
    line per task every `every` seconds with the count, elapsed time and ETA (rich prints the final state)."""

    every = 30.0

    def stop(self) -> None:
        # rich ends a display on a non-interactive console with a line break, after the final state;
        # a transient bar (the data stage's) prints no final state and left an empty line in the log
        if self.live.transient and not self.disable:
            self.live.stop()
        else:
            super().stop()

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        task = self._tasks[task_id]
        if task.completed and "_first_done" not in task.fields:  # where the steady rate starts (see plain_progress_line)
            task.fields["_first_done"] = (self.get_time(), task.completed)
        last = task.fields.get("_logged_at", task.start_time or 0.0)  # the first line after `every` seconds
        if not task.finished and self.get_time() - last >= self.every:
            task.fields["_logged_at"] = self.get_time()
            self.console.print(plain_progress_line(task), highlight=False, soft_wrap=True)


def plain_progress_line(task) -> str:
    total = f"/{task.total:g}" if task.total is not None else ""
    # The average rate since the first update that completed anything (until there is a second, the
    # average since the start): rich's own estimate needs several updates within 30 s, and a batch of
    # generation or a training step can take longer than that; and the first unit carries one-off
    # work (loading, warming up, torch.compile's compiling) that the rest will not repeat.
    elapsed, done = task.elapsed or 0, task.completed
    first_time, first_done = task.fields.get("_first_done", (None, 0))
    if first_time is not None and done > first_done:
        elapsed, done = task.start_time + elapsed - first_time, done - first_done
    remaining = elapsed * (task.total - task.completed) / done if task.total and done else None
    eta = f", ETA {remaining:.0f} s" if remaining is not None else ""
    info = f" | {task.fields['info']}" if task.fields.get("info") else ""
    return f"{task.description}: {task.completed:g}{total} after {task.elapsed or 0:.0f} s{eta}{info}"


def progress_bar(transient: bool = False) -> Progress:
    """A rich Progress with description, bar, count, elapsed time, ETA and a free text field
    (plain lines every 30 s instead where stderr is no terminal: see `LoggedProgress`).

    Use `task = bar.add_task("Training", total=n, info="")` and
    `bar.update(task, advance=1, info="loss 1.23 | 250 tok/s")`.
    """
    kind = Progress if console.is_terminal else LoggedProgress
    return kind(
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
