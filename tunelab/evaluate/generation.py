"""How `tunelab eval` generates its answers: which backend, which precision, and the check that
keeps the metric what it was.

Greedy answers are the data every text metric is computed on, so a faster path may be the default
only if it gives the same answers as float32 transformers (today's path, `generation_precision:
fp32`). bf16 weights alone do not: on real prompts a few greedy answers change where float32's top
two tokens are nearly tied (docs/evaluate.md, "Generation backend"). So `auto` drafts each answer
with a bf16 copy of the model and has the float32 model check every drafted token in one forward
pass over the whole answer (speculative decoding with a same-model draft): tokens float32 would
also have picked are kept, the first one it would not is replaced by float32's own pick, and the
rest is drafted again from there. The answer is float32's greedy answer. It was meant to be the
default, but measured on the idle 2-core CPU at `tunelab eval`'s batch of 8 it ran at 0.32x
float32's speed (float32 kept a third of the drafted tokens; docs/evaluate.md), so `fp32` is the
default and `auto` an option.

`bf16` (bf16 weights, answers may differ slightly) and `generation_backend: gguf` (the run's GGUF
through llama.cpp, answers differ where quantization moves a near tie) are there to choose.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.errors import TunelabError
from tunelab.models.chat import load_chat_model
from tunelab.models.hf_chat import HFChatModel
from tunelab.models.interface import GenerationSettings
from tunelab.models.llama_cpp import lora_pair
from tunelab.models.load import bf16_supported
from tunelab.runs import RunDir

MAX_ROUNDS = 4  # draft-and-check rounds per batch before float32 finishes the rest itself
GGUF_PREFERENCE = ("f16", "q8_0", "q4_k_m")  # the run's GGUF closest to the trained weights first


@dataclass
class DraftStats:
    """How the draft-and-check path went: drafted tokens, how many float32 kept, rounds."""

    drafted: int = 0
    kept: int = 0
    corrected: int = 0
    rounds: int = 0
    finished_by_fp32: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------- choosing
@dataclass
class GenerationPlan:
    """What generates the answers: `chat` (the model as loaded), optionally a faster `draft` model, a label."""

    chat: object
    label: str
    draft: object | None = None
    stats: DraftStats = field(default_factory=DraftStats)

    def generate(self, conversations: list[list[dict]], settings: GenerationSettings, batch_size: int) -> list[str]:
        if self.draft is None:
            return self.chat.generate(conversations, settings, batch_size=batch_size)
        return verified_generate(self.chat, self.draft, conversations, settings, self.stats)


def run_gguf(ref: str | Path) -> Path | None:
    """The run's exported GGUF model, if `ref` is a run directory that has one: its merged file (f16 before q8_0
    before q4_k_m), or else its gguf-lora folder (the base GGUF with the adapter applied, as `load_chat_model` serves it)."""
    run = RunDir.of_model(ref)
    if run is None:
        return None
    by_quant = run.export_dir.ggufs_by_quant()
    for quant in GGUF_PREFERENCE:
        if quant in by_quant:
            return by_quant[quant]
    files = run.export_dir.gguf_files()
    if files:
        return files[0]
    return run.export_dir.lora if lora_pair(run.export_dir.lora) else None


def plain_fp32(chat) -> bool:
    """A transformers model in float32 with nothing folded on top: no unmerged adapter, no 4-bit base (those cannot be copied to bf16)."""
    if not isinstance(chat, HFChatModel):
        return False
    model = chat.model
    return not hasattr(model, "peft_config") and getattr(model.config, "quantization_config", None) is None and model.dtype == torch.float32


def can_verify(chat, settings: GenerationSettings) -> bool:
    """Draft-and-check gives float32's answers only for plain greedy decoding of a float32 transformers model."""
    greedy = not (settings.temperature and settings.temperature > 0)
    return plain_fp32(chat) and greedy and settings.repetition_penalty == 1.0


def choose_generation(chat, ref: str | Path, backend: str, precision: str, settings: GenerationSettings) -> GenerationPlan:
    """The plan for `eval.generation_backend` and `eval.generation_precision` (see the module docstring)."""
    if backend == "gguf":
        path = Path(ref) if Path(ref).suffix == ".gguf" else run_gguf(ref)
        if path is None:
            raise TunelabError(
                f"eval.generation_backend is 'gguf' but {ref} has no exported GGUF (export/gguf/*.gguf or export/gguf-lora/): "
                "export the run first (`tunelab export`), give the .gguf file itself as the model, or leave the base model out (--no-base)"
            )
        gguf = chat if getattr(chat, "path", None) == path else load_chat_model(path)
        return GenerationPlan(gguf, f"llama.cpp {path.name} (answers may differ from float32 transformers)")
    if not plain_fp32(chat):  # a GGUF, an unmerged (4-bit) adapter: generated as loaded
        return GenerationPlan(chat, chat.backend)
    if precision == "fp32" or (precision == "auto" and not (bf16_supported() and can_verify(chat, settings))):
        return GenerationPlan(chat, "transformers fp32")
    draft = HFChatModel(copy.deepcopy(chat.model).to(torch.bfloat16), chat.tokenizer, chat.name)
    if precision == "bf16":
        return GenerationPlan(draft, "transformers bf16 weights (answers may differ from fp32)")
    return GenerationPlan(chat, "transformers bf16 drafts checked by fp32 (fp32's greedy answers)", draft=draft)


# ---------------------------------------------------------------- draft and check
def left_padded(sequences: list[list[int]], pad: int, device) -> dict:
    """input_ids, attention_mask and position_ids of sequences padded on the left (as batched generate pads), on `device`."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[b, width - len(s) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def draft_tokens(draft: HFChatModel, prefixes: list[list[int]], budgets: list[int], eos: int) -> list[list[int]]:
    """Greedy continuations of `prefixes` by the draft model, each cut after its end-of-sequence token."""
    enc = left_padded(prefixes, draft.tokenizer.pad_token_id, draft.model.device)
    enc.pop("position_ids")  # generate derives them from the mask
    with torch.inference_mode():
        out = draft.model.generate(
            **enc,
            max_new_tokens=max(budgets),
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=draft.tokenizer.pad_token_id,
            eos_token_id=eos,
        )
    drafts = []
    for b, budget in enumerate(budgets):
        tokens = out[b, enc["input_ids"].shape[1] :].tolist()[:budget]
        drafts.append(tokens[: tokens.index(eos) + 1] if eos in tokens else tokens)
    return drafts


def fp32_picks(model, sequences: list[list[int]], n_last: int, pad: int) -> torch.Tensor:
    """float32's greedy pick after each of the last `n_last` tokens of every sequence ([batch, n_last]; one forward pass)."""
    enc = left_padded(sequences, pad, model.device)
    with torch.inference_mode():
        logits = model(**enc, logits_to_keep=n_last, use_cache=False).logits
    return logits.argmax(-1)


def check_drafts(model, prefixes: list[list[int]], drafts: list[list[int]], pad: int) -> list[tuple[int, int | None]]:
    """For each draft: (how many of its tokens float32 also picks, float32's pick at the first it does not, or None).

    Rows are left-padded, so every row ends at the same column: the pick for draft token j of a
    draft of length n sits at column longest - n + j of the last longest + 1 picks.
    """
    longest = max(len(d) for d in drafts)
    picks = fp32_picks(model, [p + d for p, d in zip(prefixes, drafts)], longest + 1, pad)
    out = []
    for b, d in enumerate(drafts):
        mine = picks[b, longest - len(d) : longest].tolist()
        kept = next((j for j, (x, y) in enumerate(zip(d, mine)) if x != y), len(d))
        out.append((kept, mine[kept] if kept < len(d) else None))
    return out


def verified_generate(chat: HFChatModel, draft: HFChatModel, conversations, settings: GenerationSettings, stats: DraftStats) -> list[str]:
    """float32's greedy answers to `conversations`, drafted in bf16 and checked token by token (module docstring)."""
    tok = chat.tokenizer
    eos, pad, budget = tok.eos_token_id, tok.pad_token_id, settings.max_new_tokens
    prompts = [chat.prompt_tokens(c) for c in conversations]
    answers: list[list[int]] = [[] for _ in conversations]
    open_rows = list(range(len(conversations)))
    for _ in range(MAX_ROUNDS):
        if not open_rows:
            break
        stats.rounds += 1
        prefixes = [prompts[i] + answers[i] for i in open_rows]
        drafts = draft_tokens(draft, prefixes, [budget - len(answers[i]) for i in open_rows], eos)
        still_open = []
        for i, d, (kept, pick) in zip(open_rows, drafts, check_drafts(chat.model, prefixes, drafts, pad)):
            stats.drafted += len(d)
            stats.kept += kept
            answers[i] += d[:kept]
            if pick is not None:
                stats.corrected += 1
                answers[i].append(pick)
            if not (answers[i] and answers[i][-1] == eos) and len(answers[i]) < budget and pick is not None:
                still_open.append(i)
        open_rows = still_open
    if open_rows:  # drafts kept missing: float32 finishes these answers itself, as today's path would
        stats.finished_by_fp32 += len(open_rows)
        rest = draft_tokens(chat, [prompts[i] + answers[i] for i in open_rows], [budget - len(answers[i]) for i in open_rows], eos)
        for i, r in zip(open_rows, rest):
            answers[i] += r
    return [tok.decode(a, skip_special_tokens=True).strip() for a in answers]
