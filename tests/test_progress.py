"""Progress where stderr is no terminal (a log file, CI): plain lines with count, elapsed time and ETA."""

from __future__ import annotations

import io

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
    assert not any(line.startswith("Generating (base): 4/4") for line in lines)  # the final state is rich's own line


def test_the_eta_leaves_out_the_first_units_one_off_work():
    """A first step of 100 s (loading, compiling) then steps of 2 s: the ETA counts 2 s per step left, not 100."""
    out = io.StringIO()
    now = [0.0]
    bar = LoggedProgress(console=Console(file=out, force_terminal=False), get_time=lambda: now[0])
    bar.every = 1.0
    with bar:
        task = bar.add_task("Training", total=10, info="")
        now[0] = 100.0
        bar.update(task, advance=1)  # only one unit done: the average so far, 100 s each
        for _ in range(4):
            now[0] += 2.0
            bar.update(task, advance=1)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("Training:")]
    assert lines[0] == "Training: 1/10 after 100 s, ETA 900 s", lines
    assert lines[-1] == "Training: 5/10 after 108 s, ETA 10 s", lines


def test_the_training_bars_rate_leaves_out_the_first_step(monkeypatch):
    """tokens/s on the training bar: the average until the first step ends, then the rate since it."""
    from types import SimpleNamespace

    from tunelab.train import callbacks

    updates = []
    fake_bar = SimpleNamespace(start=lambda: None, stop=lambda: None, add_task=lambda *a, **kw: 0)
    fake_bar.update = lambda task, **kw: updates.append(kw["info"])
    clock = [0.0]
    monkeypatch.setattr(callbacks, "progress_bar", lambda: fake_bar)
    monkeypatch.setattr(callbacks, "time", SimpleNamespace(time=lambda: clock[0]))
    state = SimpleNamespace(is_world_process_zero=True, max_steps=10, global_step=0, num_input_tokens_seen=0, log_history=[])
    callback = callbacks.ProgressCallback()
    callback.on_train_begin(None, state, None)
    for step, (seconds, tokens) in enumerate([(100.0, 1000), (102.0, 2000), (104.0, 3000)], start=1):
        clock[0], state.global_step, state.num_input_tokens_seen = seconds, step, tokens
        callback.on_step_end(None, state, None)
    assert updates == ["10 tok/s", "500 tok/s", "500 tok/s"]


def test_a_log_gets_no_empty_lines_from_finished_bars():
    """A transient bar leaves nothing in a log; a kept one its final line, with no empty line after it."""
    for transient, expected in ((True, "next line"), (False, "Cleaning")):
        out = io.StringIO()
        with LoggedProgress(console=Console(file=out, force_terminal=False), transient=transient) as bar:
            task = bar.add_task("Cleaning", total=3)
            bar.update(task, advance=3)
        print("next line", file=out)
        text = out.getvalue()
        assert text.startswith(expected) and text.endswith("\n") and "\n\n" not in text, repr(text)
        assert text.count("\n") == (1 if transient else 2), repr(text)  # the final state on its own line, then the next
