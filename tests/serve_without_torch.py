"""Serve a GGUF file in a process where torch, transformers and the metric libraries cannot be
imported, as in a Space folder's virtual environment: tests/test_serve.py runs this script.

    python tests/serve_without_torch.py FILE.gguf

It builds the registry, the chat UI with the API mounted (as `tunelab serve --api`) and the
Space's entry module, asks the API one question at temperature 0, and prints one JSON line:
the answer, and every import of a blocked package that was tried (and refused).
"""

from __future__ import annotations

import importlib.abc
import json
import sys

# What serving GGUF files must do without: the training and evaluation stack. pyarrow is here
# because a Space's venv has none (pandas only tries it), so its attempts are expected.
BLOCKED = {"torch", "transformers", "peft", "accelerate", "datasets", "sklearn", "scipy", "matplotlib", "nltk"}
BLOCKED |= {"sacrebleu", "rouge_score", "bert_score", "pyarrow"}


class Unimportable(importlib.abc.MetaPathFinder):
    """Refuses the BLOCKED packages as if they were not installed, and remembers every attempt."""

    def __init__(self):
        self.refused: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in BLOCKED:
            self.refused.add(top)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: serving a GGUF must not need it)", name=name)
        return None


def main(gguf: str) -> None:
    finder = Unimportable()
    sys.meta_path.insert(0, finder)
    import httpx

    import tunelab.serve.space_app  # noqa: F401  (the Space's entry module imports without them too)
    from tunelab.serve.generation import ServeLimits
    from tunelab.serve.registry import build_registry
    from tunelab.serve.run import ServerThread, build_app

    registry = build_registry([gguf], runs=None, n_threads=1)
    entry = next(iter(registry.entries.values()))
    app = build_app(registry, ServeLimits(), ui=True, api=True)
    # not "What is the capital of France?": there SmolLM2's first answer token is a near tie ("The" 24.14 against
    # "La" 24.05 in fp32), and llama.cpp's AVX2 kernels (an AMD EPYC without AVX-512) round it to "La femme de
    # France..."; this prompt keeps a margin of 1.6 logits or more at every token of "The capital of France is Paris."
    question = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name the capital of France."},
    ]
    with ServerThread(app) as url:
        body = {"model": entry.id, "messages": question, "max_tokens": 24, "temperature": 0}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        reply.raise_for_status()
        ui = httpx.get(f"{url}/config", timeout=30).status_code
    answer = reply.json()["choices"][0]["message"]["content"]
    loaded = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED)
    print(json.dumps({"answer": answer, "ui_status": ui, "refused": sorted(finder.refused), "loaded": loaded}))


if __name__ == "__main__":
    main(sys.argv[1])
