"""How long a sweep takes when everything is already in its results store, against the first run.

A tiny random Llama (the test fixture's shape, with the real SmolLM2 tokenizer) and 30 tiny
examples keep the first run short; the ratio first/second is the figure. The second run must
train and evaluate nothing (asserted).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_resume.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    import torch

    torch.set_num_threads(2)
    from conftest import make_tiny_model
    from test_compare_sweep import write_sweep

    from tunelab.compare.sweep import sweep_cli
    from tunelab.models import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_tiny_model(tmp / "tiny", resolve_model("smollm2-135m-instruct").path)
        sweep = write_sweep(tmp, model)
        t0 = time.perf_counter()
        first = sweep_cli(sweep)
        t1 = time.perf_counter()
        second = sweep_cli(sweep)
        t2 = time.perf_counter()
    assert first["done"] == 4 and second == {"done": 0, "skipped": 4, "failed": []}, (first, second)
    a, b = t1 - t0, t2 - t1
    print(f"first run (reference + 3 variants trained and evaluated): {a:.1f} s")
    print(f"second run (everything in the store): {b:.2f} s")
    print(f"ratio first/second: {a / b:.0f}x")


if __name__ == "__main__":
    main()
