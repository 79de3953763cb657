"""Loaded at start-up by the training processes of tests/test_distributed.py (this folder is on
their PYTHONPATH): records what each rank does, and can kill rank 0 right after a checkpoint.

TUNELAB_TEST_RECORD=DIR: each rank appends to DIR/rank<R>.jsonl one line per training step (the
examples it trained on), per call of prepare_data, per file written through tunelab.io and per
model folder written with save_pretrained. TUNELAB_TEST_KILL_AT=STEP: after the checkpoint of that
step is complete on every rank, rank 0 SIGKILLs itself (torchrun then stops the others).
"""

import hashlib
import json
import os
import signal
from pathlib import Path

RECORD = os.environ.get("TUNELAB_TEST_RECORD")
RANK = os.environ.get("RANK")  # set by torchrun in the processes it starts, not in the launcher


def example_key(example: dict) -> str:
    return hashlib.sha1(json.dumps([int(t) for t in example["input_ids"]]).encode()).hexdigest()[:12]


def trained_examples(inputs: dict) -> list[str]:
    """The examples inside a packed training batch: each one starts where position_ids restart at 0."""
    ids, positions = inputs["input_ids"][0].tolist(), inputs["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
    return [example_key({"input_ids": ids[a:b]}) for a, b in zip(starts, starts[1:])]


def record(event: str, **info) -> None:
    with open(Path(RECORD) / f"rank{RANK}.jsonl", "a") as f:
        f.write(json.dumps({"event": event, **info}) + "\n")


def wrap(owner, name: str, before) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        before(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def install_recorder() -> None:
    # tunelab.io first: the modules imported after it bind the wrapped writers
    import tunelab.io

    for writer in ("atomic_write_json", "atomic_write_jsonl", "atomic_write_text", "append_jsonl"):
        wrap(tunelab.io, writer, lambda path, *a, _w=writer, **k: record("write", writer=_w, path=str(path)))
    from peft import PeftModel
    from transformers import PreTrainedModel, Trainer

    import tunelab.data.prepare

    wrap(tunelab.data.prepare, "prepare_data", lambda *a, **k: record("prepare_data"))
    wrap(Trainer, "training_step", lambda self, model, inputs, *a, **k: record("step", examples=trained_examples(inputs)))
    for model_class in (PeftModel, PreTrainedModel):
        wrap(model_class, "save_pretrained", lambda self, path, *a, **k: record("save_weights", path=str(path)))


def install_killer(step: int) -> None:
    import torch.distributed as dist
    from transformers import Trainer, TrainerCallback

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                dist.barrier()  # every rank has written its part of the checkpoint
                if state.is_world_process_zero:
                    os.kill(os.getpid(), signal.SIGKILL)

    original_init = Trainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(KillAfterCheckpoint())

    Trainer.__init__ = init


if RANK is not None and RECORD:
    install_recorder()
if RANK is not None and os.environ.get("TUNELAB_TEST_KILL_AT"):
    install_killer(int(os.environ["TUNELAB_TEST_KILL_AT"]))
