"""Trainer callbacks: a rich progress bar with tokens/s and ETA, metrics.jsonl, and the loss plot."""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

from tunelab.io import append_jsonl, read_jsonl
from tunelab.progress import progress_bar


class ProgressCallback(TrainerCallback):
    """One bar for the run: step count, ETA, last loss and trained tokens per second (after the first step)."""

    def __init__(self):
        self.bar = None
        self.task = None
        self.t0 = None
        self.tokens0 = 0
        self.first_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = progress_bar()
            self.bar.start()
            self.task = self.bar.add_task("Training", total=state.max_steps, completed=state.global_step, info="")
            self.t0, self.tokens0, self.first_step = time.time(), state.num_input_tokens_seen, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            now, seen = time.time(), state.num_input_tokens_seen
            # the rate since the end of the first step leaves out its one-off work (torch.compile's); until then, since the start
            since, seen_then = self.first_step if self.first_step and now > self.first_step[0] else (self.t0, self.tokens0)
            tps = (seen - seen_then) / max(now - since, 1e-6)
            self.first_step = self.first_step or (now, seen)
            loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
            info = (f"loss {loss:.3f} | " if loss is not None else "") + f"{tps:,.0f} tok/s"
            self.bar.update(self.task, completed=state.global_step, info=info)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class MetricsFileCallback(TrainerCallback):
    """Append every log entry (loss, eval_loss, learning rate, tokens/s) to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.last_time = None
        self.last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time, self.last_tokens = time.time(), state.num_input_tokens_seen
        if state.is_world_process_zero and self.path.exists() and state.global_step == 0:
            self.path.unlink()  # a fresh run starts a fresh log; a resumed run appends

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        row = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0, 4),
            **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
        }
        if "loss" in logs:
            dt = max(now - self.last_time, 1e-6)
            row["tokens_per_second"] = round((state.num_input_tokens_seen - self.last_tokens) / dt, 1)
            row["tokens_seen"] = state.num_input_tokens_seen
            self.last_time, self.last_tokens = now, state.num_input_tokens_seen
        append_jsonl(self.path, row)


def plot_losses(metrics_path: Path, out_png: Path) -> Path | None:
    """Training and validation loss against step, as a PNG (atomic)."""
    import matplotlib  # here: ~0.7 s to import (measured), paid only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): drawing needs no display

    rows = read_jsonl(metrics_path) if Path(metrics_path).exists() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(out_png).with_name(f".{Path(out_png).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_png)
    return Path(out_png)
