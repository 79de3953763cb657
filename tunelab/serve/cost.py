"""What a GGUF costs to serve on this CPU: generation speed at batch 1, time to first token, peak memory, size.

The lab's question "which model works best with the UI for inference on CPUs" needs these beside each
variant's quality. They are measured through the path `tunelab serve` and `tunelab api` use
(`LlamaCppChatModel`: chat template, tokenizer, greedy generation), in a child process of its own, so
its peak resident memory is the serving process's and nothing the caller loaded counts:

- time to first token: from asking for an answer to its first token, i.e. reading the prompt (the chat
  template applied to a typical prompt) and one decoding step; the median over the prompts;
- generation tokens/s: the tokens after the first over the seconds after it, at batch 1; the median over
  the prompts (an answer shorter than two tokens gives no rate and is left out of it);
- peak RSS: the child's maximum resident set size (`tunelab.cpu.peak_rss_mib`) after loading and answering;
- size: the GGUF file, and for a LoRA pair its base's and its adapter's.

A figure taken while other work runs is worth little: two busy processes on two cores slow each other many
times over. `serving_cost` therefore records the load average before and after, and the sweep that calls it
waits for an idle machine first (`tunelab.cpu.wait_until_idle`).

    python -m tunelab.serve.cost MODEL.gguf [--lora ADAPTER.gguf] --prompts PROMPTS.json [--tokens 128] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tunelab.cpu import peak_rss_mib
from tunelab.errors import TunelabError

DEFAULT_TOKENS = 128  # new tokens per answer: long enough for a steady rate, short enough to measure many variants


def serving_cost(
    gguf: Path, prompts: list[list[dict]], *, lora: Path | None = None, tokens: int = DEFAULT_TOKENS, threads: int | None = None
) -> dict:
    """Measure `gguf` (with the adapter `lora`, if given) on `prompts` (conversations) in a child process; returns
    {ttft_seconds, tokens_per_second, peak_rss_mib, bytes, load_seconds, answers, tokens, threads, load_average}."""
    gguf = Path(gguf)
    for path in (gguf, lora):
        if path is not None and not Path(path).is_file():
            raise TunelabError(f"serving cost: {path} does not exist")
    if not prompts:
        raise TunelabError("serving cost: no prompts to answer")
    cmd = [sys.executable, "-m", "tunelab.serve.cost", str(gguf), "--tokens", str(tokens), "--prompts", json.dumps(prompts)]
    cmd += ["--lora", str(lora)] if lora else []
    cmd += ["--threads", str(threads)] if threads else []
    before = os.getloadavg()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise TunelabError(f"serving cost of {gguf.name}: the measuring process failed (exit {done.returncode}):\n{tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["bytes"] = gguf.stat().st_size + (Path(lora).stat().st_size if lora else 0)
    result["load_average"] = {"before": round(before[0], 2), "after": round(os.getloadavg()[0], 2)}
    return result


def measure(gguf: Path, prompts: list[list[dict]], lora: Path | None, tokens: int, threads: int | None) -> dict:
    """The child's side: load the model once, answer each prompt greedily, time the first token and the rest."""
    # here, in the measuring child only: the process that calls serving_cost (a sweep) never loads the GGUF runtime
    from tunelab.models.interface import GenerationSettings
    from tunelab.models.llama_cpp import LlamaCppChatModel

    start = time.perf_counter()
    model = LlamaCppChatModel(gguf, n_threads=threads, lora=lora)
    load_seconds = time.perf_counter() - start
    settings = GenerationSettings(max_new_tokens=tokens)
    first_token, rates, counts = [], [], []
    for messages in prompts:
        asked = time.perf_counter()
        stamps = [time.perf_counter() for _ in model.generate_ids(model.prompt_tokens(messages), settings)]
        if stamps:
            first_token.append(stamps[0] - asked)
        if len(stamps) >= 2:
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        counts.append(len(stamps))
    if not first_token:
        raise TunelabError(f"serving cost of {gguf.name}: the model ended every answer before its first token")
    return {
        "ttft_seconds": statistics.median(first_token),
        "tokens_per_second": statistics.median(rates) if rates else None,
        "peak_rss_mib": peak_rss_mib(),
        "load_seconds": load_seconds,
        "answers": len(prompts),
        "tokens": counts,
        "threads": model.threads,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tunelab.serve.cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--lora", type=Path)
    ap.add_argument("--prompts", required=True, help="a JSON list of conversations (lists of {role, content})")
    ap.add_argument("--tokens", type=int, default=DEFAULT_TOKENS)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.gguf, json.loads(args.prompts), args.lora, args.tokens, args.threads)), flush=True)


if __name__ == "__main__":
    main()
