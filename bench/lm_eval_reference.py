"""lm-evaluation-harness itself, run on the same multiple-choice questions tunelab scores.

A local custom task points lm-eval at a JSONL file of the questions (`dataset_path: json`, no hub),
with the ARC task's prompt (`Question: ...\\nAnswer:`, choices as continuations). Used by
tests/test_benchmark.py (the numbers must agree) and bench/arc_scoring.py (throughput).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def lm_eval_multiple_choice(model_dir: str | Path, questions, batch_size: int = 16, dtype: str = "float32") -> dict:
    """{"acc", "acc_norm", "logprobs": [[per choice] per question]} from lm-eval's HFLM on `questions`
    (tunelab.evaluate.benchmark.Question objects; their `context` is already `Question: ...\\nAnswer:`)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "questions.jsonl"
        data.write_text("".join(json.dumps({"context": q.context, "choices": list(q.choices), "gold": q.gold}) + "\n" for q in questions))
        (Path(tmp) / "task.yaml").write_text(TASK_YAML.format(task="tunelab_mc", data=data))
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(model_dir), "dtype": dtype, "device": "cpu"},
            tasks=["tunelab_mc"],
            task_manager=TaskManager(include_path=tmp),
            batch_size=batch_size,
            log_samples=True,
        )
    samples = sorted(out["samples"]["tunelab_mc"], key=lambda s: s["doc_id"])
    metrics = out["results"]["tunelab_mc"]
    return {
        "acc": metrics["acc,none"],
        "acc_norm": metrics["acc_norm,none"],
        "logprobs": [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
    }
