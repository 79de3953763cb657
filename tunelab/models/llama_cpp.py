"""The llama.cpp runtime: a GGUF file behind tunelab's ChatModel interface.

`LlamaCppChatModel` formats prompts with the chat template stored in the GGUF (llama-cpp-python's
Jinja2ChatFormatter, the same jinja settings as transformers) and stops on the model's
end-of-generation tokens; with `lora`, a LoRA adapter GGUF is applied to the model (its base) through
llama-cpp-python's `lora_path`, once `check_lora_fits` has found its architecture and tensor shapes to fit.
The export stage (tunelab/export/llama_cpp.py) writes GGUF files; this module only reads and runs
them, so serving and evaluation do not depend on export.

llama-cpp-python is an optional dependency (the `gguf` extra, built once by `make setup-gguf`):
it is imported where a GGUF is opened, never when this module is imported.
"""

from __future__ import annotations

import codecs
import ctypes
import functools
import itertools
import logging
import sys
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path

from gguf import GGUFReader
from gguf.constants import GGUFValueType

from tunelab.cpu import cpu, default_threads
from tunelab.errors import TunelabError
from tunelab.models.gguf_likelihood import SCORING_CONTEXT, TemplateTokenizer
from tunelab.models.gguf_likelihood import continuation_logprobs as gguf_logprobs
from tunelab.models.interface import GenerationSettings
from tunelab.models.templates import DEFAULT_CHAT_TEMPLATE

LLAMA_CPP_VERSION = "0.3.36"
# Answers generate_many decodes together: Qwen2.5-Coder-0.5B's 164 HumanEval answers took 357 s at 16, 412 s at 8
# and 677 s one by one (idle Xeon with AMX, 2026-12-07).
BATCH_SLOTS = 16
SCORING_MEMORY = 512 * 2**20  # the scoring Llama's logits array: about 2048 positions for SmolLM2, 512 for Gemma-3


class LlamaCppMissing(TunelabError):
    pass


def require_llama_cpp():
    """Import llama_cpp, or explain how to get it. With a portable build (ggml's CPU backend built
    for every x86 level, loaded at run time: see the Makefile) it also loads the CPU backend that
    fits this CPU, before llama.cpp would look for it beside the Python executable."""
    try:
        import llama_cpp  # the optional `gguf` extra
    except ImportError:
        raise LlamaCppMissing(
            f"llama-cpp-python is not installed, and GGUF export, quantization and GGUF generation need it. "
            f"Run `make setup-gguf` (builds llama-cpp-python {LLAMA_CPP_VERSION} once and caches "
            f"the wheel in ~/.cache/tunelab/wheels), or `pip install llama-cpp-python=={LLAMA_CPP_VERSION}`. "
            f"The `merged` format works without it."
        ) from None
    _load_cpu_backend(Path(llama_cpp.__file__).parent / "lib")
    _log_by_ggml_levels(llama_cpp)
    return llama_cpp


# ggml's log levels (ggml.h in llama-cpp-python 0.3.36's llama.cpp) as Python logging levels. The
# package's own callback maps them by an older numbering, so a warning was shown as an error and an
# error as debug: every Gemma-3 context printed "llama_kv_cache_iswa: using full-size SWA cache".
GGML_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
GGML_LOG_CONTINUE = 5  # a continued line: the level of the line before


@functools.cache
def _log_by_ggml_levels(llama_cpp) -> None:
    """Replace llama-cpp-python's log callback by one with ggml's real levels, shown as its logger's level
    allows (Llama(verbose=False) sets it to ERROR: errors only)."""
    logger = logging.getLogger("llama-cpp-python")
    last = [logging.CRITICAL]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data) -> None:
        last[0] = last[0] if level == GGML_LOG_CONTINUE else GGML_LOG_LEVELS.get(level, logging.ERROR)
        if logger.level <= last[0]:
            print(text.decode("utf-8", errors="replace"), end="", flush=True, file=sys.stderr)

    _log_by_ggml_levels.callback = callback  # the C side keeps only a pointer: keep the object alive
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


@functools.cache
def _load_cpu_backend(lib_dir: Path) -> None:
    """In a build with backends as loadable modules (`libggml-cpu-<level>.so` in llama_cpp/lib),
    load the best one for this CPU from there (ggml scores each against the CPU's features)."""
    if not any(lib_dir.glob("libggml-cpu-*.so")):
        return  # one CPU backend linked in: nothing to load
    # The file libllama itself loaded (its DT_NEEDED name, libggml.so.0): the wheel holds copies
    # under each name, and a second copy would be a second registry that llama.cpp never sees.
    ggml = ctypes.CDLL(str(next(p for p in (lib_dir / "libggml.so.0", lib_dir / "libggml.so") if p.is_file())))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    if ggml.ggml_backend_reg_count() == 0:
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        log = logging.getLogger("llama-cpp-python")  # its log callback prints everything while this level is unset
        level = log.level
        log.setLevel(logging.ERROR)  # not "load_backend: loaded CPU backend from ..." on every start
        try:
            ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())
        finally:
            log.setLevel(level)
    if ggml.ggml_backend_reg_count() == 0:
        raise LlamaCppMissing(f"llama.cpp found no CPU backend it can run on this CPU in {lib_dir} ({cpu().describe()})")


_OPEN_LOCK = threading.Lock()


def open_llama(path: str | Path, *, n_ctx: int, n_threads: int | None = None, repack: bool | None = None, **kwargs):
    """A llama_cpp.Llama for `path`: the one place tunelab (its benches and tests too) opens a GGUF.

    The model parameters follow tunelab.cpu's decisions: weight repacking into llama.cpp's extra
    buffer types only where it is safe (off on AMX CPUs, where the first decode segfaults);
    `repack` overrides that decision (bench/llama_cpp_builds.py measures both, in child processes).
    llama-cpp-python has no argument for it, so its default model parameters are adjusted for
    the moment this model is made (under a lock: two threads may open models at once).
    """
    llama_cpp = require_llama_cpp()
    import llama_cpp.llama as llama_module  # optional dependency: see the module docstring

    threads = n_threads or default_threads()
    low_level = llama_module.llama_cpp
    defaults = low_level.llama_model_default_params
    repack = cpu().llama_extra_buffers if repack is None else repack

    def tunelab_model_params():
        params = defaults()
        params.use_extra_bufts = repack
        return params

    with _OPEN_LOCK:
        low_level.llama_model_default_params = tunelab_model_params
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False, **kwargs)
        finally:
            low_level.llama_model_default_params = defaults
    if bool(llm.model_params.use_extra_bufts) != repack:
        raise TunelabError(f"{path}: llama.cpp ignored tunelab's weight-repacking setting ({repack}); refusing to run it")
    return llm


def gguf_metadata(path: Path) -> dict:
    """The key/value metadata of a GGUF file (strings, numbers; arrays left out), read with gguf-py."""
    return _metadata(GGUFReader(str(path)))


def _metadata(reader: GGUFReader) -> dict:
    meta = {}
    for key, field in reader.fields.items():
        if not field.types or field.types[0] == GGUFValueType.ARRAY:
            continue
        value = field.parts[field.data[0]]
        if field.types[0] == GGUFValueType.STRING:
            meta[key] = bytes(value).decode("utf-8", errors="replace")
        else:
            meta[key] = value.tolist()[0] if hasattr(value, "tolist") else value
    return meta


def scoring_llama(path: str | Path, n_ctx: int = SCORING_CONTEXT, n_threads: int | None = None, lora: Path | None = None):
    """A llama_cpp.Llama for scoring: logits kept for every position, `n_ctx` tokens at most."""
    return open_llama(path, n_ctx=n_ctx, n_threads=n_threads, logits_all=True, **_lora_args(lora))


def _lora_args(lora: Path | None) -> dict:
    """llama-cpp-python's argument applying a LoRA adapter GGUF at scale 1 (it then reads the base into
    memory instead of mapping it)."""
    return {"lora_path": str(lora)} if lora else {}


# ---------------------------------------------------------------- LoRA adapters as GGUF files
def is_lora_adapter(path: str | Path) -> bool:
    """A GGUF file holding a LoRA adapter (llama.cpp's convert_lora_to_gguf.py writes general.type 'adapter')."""
    return gguf_metadata(Path(path)).get("general.type") == "adapter"


def lora_pair(folder: str | Path) -> tuple[Path, Path] | None:
    """(base GGUF, adapter GGUF) of a folder holding a LoRA adapter GGUF and its base model's GGUF
    (`tunelab export --format gguf-lora` writes export/gguf-lora/); None for a folder with no adapter GGUF."""
    folder = Path(folder)
    ggufs = sorted(folder.glob("*.gguf"))
    adapters = [p for p in ggufs if is_lora_adapter(p)]
    bases = [p for p in ggufs if p not in adapters]
    if not adapters:
        return None
    if not bases:
        raise TunelabError(
            f"{folder}: the LoRA adapter {adapters[0].name} has no base model GGUF beside it, and llama.cpp applies an "
            f"adapter to the base it was trained on: put that base's .gguf in the folder (`tunelab export RUN --format gguf-lora` writes both)"
        )
    if len(adapters) > 1 or len(bases) > 1:
        raise TunelabError(
            f"{folder}: a LoRA GGUF folder holds one adapter and one base model GGUF; it has adapters "
            f"{', '.join(p.name for p in adapters)} and bases {', '.join(p.name for p in bases)}"
        )
    return bases[0], adapters[0]


def check_lora_fits(base: Path, adapter: Path) -> None:
    """Refuse, naming both files, an adapter that llama.cpp would not apply to `base`: not a LoRA adapter,
    made for another architecture, or adapting a tensor the base lacks or holds in another shape. These are
    llama.cpp's own rules, read here from the two files' headers before the base is loaded. A base of the
    same architecture and shapes but other weights cannot be told apart from the files (nor by llama.cpp)."""
    adapter_reader, base_reader = GGUFReader(str(adapter)), GGUFReader(str(base))
    adapter_meta, base_meta = _metadata(adapter_reader), _metadata(base_reader)
    if adapter_meta.get("general.type") != "adapter" or adapter_meta.get("adapter.type") != "lora":
        raise TunelabError(f"{adapter}: not a LoRA adapter GGUF (general.type {adapter_meta.get('general.type')!r})")
    if base_meta.get("general.type") == "adapter":
        raise TunelabError(f"{base}: a LoRA adapter, not a base model to apply {adapter.name} to")
    arch, base_arch = adapter_meta.get("general.architecture"), base_meta.get("general.architecture")
    if arch != base_arch:
        raise TunelabError(
            f"{adapter} adapts a '{arch}' model and {base} is a '{base_arch}' model: an adapter for another base model; "
            f"give the base it was trained on"
        )
    shapes = {t.name: [int(n) for n in t.shape] for t in base_reader.tensors}  # llama.cpp's ne: [inputs, outputs]
    for tensor in adapter_reader.tensors:
        name, _, part = tensor.name.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            continue
        shape, target = [int(n) for n in tensor.shape], shapes.get(name)
        # lora_a is [inputs, rank] and lora_b [rank, outputs]: they must meet the base tensor's inputs and outputs
        if target is None or (shape[0] != target[0] if part == "lora_a" else shape[1] != target[1]):
            held = f"holds it as {target}" if target else "has no such tensor"
            raise TunelabError(
                f"{adapter} does not fit {base}: its {tensor.name} is {shape} and the base {held}: "
                f"an adapter for another base model; give the base it was trained on"
            )


class LlamaCppChatModel:
    """A GGUF file served by llama.cpp behind tunelab's ChatModel interface."""

    backend = "llama.cpp"

    def __init__(
        self, path: str | Path, n_threads: int | None = None, n_ctx: int = 4096, name: str | None = None, lora: str | Path | None = None
    ):
        """`lora`: a LoRA adapter GGUF applied to the model at `path` (its base), through llama-cpp-python's `lora_path`."""
        llama_cpp = require_llama_cpp()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # optional dependency: see the module docstring

        self.path = Path(path)
        self.lora = Path(lora) if lora else None
        self.name = name or (self.lora or self.path).stem
        threads = n_threads or default_threads()
        meta = gguf_metadata(self.path)
        if meta.get("general.type") == "adapter":
            raise TunelabError(
                f"{self.path} is a LoRA adapter, not a model: llama.cpp applies it to its base model. Load the folder "
                f"holding the adapter and its base GGUF (`tunelab export RUN --format gguf-lora` writes RUN/export/gguf-lora/)"
            )
        if self.lora:
            check_lora_fits(self.path, self.lora)
        trained_ctx = meta.get(f"{meta.get('general.architecture')}.context_length")
        if trained_ctx:
            n_ctx = min(n_ctx, int(trained_ctx))
        self.llm = open_llama(self.path, n_ctx=n_ctx, n_threads=threads, **_lora_args(self.lora))
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))  # what the tokenizer does by default
        self.n_ctx = self.llm.n_ctx()
        self.eos_id = self.llm.token_eos()
        self.bos_id = self.llm.token_bos()
        self.chat_template = self.llm.metadata.get("tokenizer.chat_template") or DEFAULT_CHAT_TEMPLATE
        self.formatter = Jinja2ChatFormatter(
            template=self.chat_template,
            eos_token=self._token_text(self.eos_id),
            bos_token=self._token_text(self.bos_id),
            add_generation_prompt=True,
        )
        self._lock = threading.Lock()  # one generation at a time per llama.cpp context
        self._batch_ctx, self._batch_slots = None, 0  # generate_many's context, made on first use
        self.threads = threads
        self._scorer = None  # the log-likelihood Llama, made on first use
        self._tokenizer = None

    def _token_text(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def prompt_text(self, messages: list[dict]) -> str:
        return self.formatter(messages=messages).prompt

    def prompt_tokens(self, messages: list[dict]) -> list[int]:
        # The template writes every special token itself (as transformers' apply_chat_template
        # does), so no BOS is added here: the same ids as tokenizer(text, add_special_tokens=False).
        return self.tokenize(self.prompt_text(messages))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special-token text parsed, no BOS added (as transformers' add_special_tokens=False)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.adds_bos, special=False)

    @property
    def tokenizer(self) -> TemplateTokenizer:
        """The two transformers-tokenizer calls scoring makes (chat template, text → ids), from the GGUF."""
        if self._tokenizer is None:
            self._tokenizer = TemplateTokenizer(self.llm, self.chat_template, self._token_text(self.bos_id), self._token_text(self.eos_id))
        return self._tokenizer

    def loglikelihood(
        self, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8, on_batch=None, bf16: bool = False
    ) -> list[tuple[float, int]]:
        """Through a second Llama that keeps every position's logits (n_ctx × vocabulary floats: its
        context is kept under SCORING_MEMORY); batch_size and bf16 do not apply to llama.cpp."""
        with self._lock:
            if self._scorer is None:
                fits = SCORING_MEMORY // (4 * self.llm.n_vocab())
                n_ctx = max(256, min(SCORING_CONTEXT, self.n_ctx, fits))
                self._scorer = scoring_llama(self.path, n_ctx=n_ctx, n_threads=self.threads, lora=self.lora)
            return gguf_logprobs(self._scorer, pairs, on_batch)

    def is_end(self, token: int) -> bool:
        return token == self.eos_id or bool(self._is_eog(self._vocab, token))

    def token_budget(self, prompt_ids: list[int], settings: GenerationSettings) -> int:
        """The new tokens an answer to `prompt_ids` may have: max_new_tokens, or what the context has room for."""
        if len(prompt_ids) >= self.n_ctx:
            raise TunelabError(f"{self.path.name}: the prompt has {len(prompt_ids)} tokens, more than the context of {self.n_ctx}")
        return min(settings.max_new_tokens, self.n_ctx - len(prompt_ids))

    def generate_ids(self, prompt_ids: list[int], settings: GenerationSettings | None = None) -> Iterator[int]:
        """Token ids after `prompt_ids`, stopping at end-of-generation or max_new_tokens (greedy at temperature 0)."""
        s = settings or GenerationSettings()
        budget = self.token_budget(prompt_ids, s)
        with self._lock:
            self.llm.reset()  # no prefix reuse: each generation starts from the same state
            self.llm.set_seed(s.seed)
            gen = self.llm.generate(prompt_ids, **sampling(s), reset=True)
            try:
                for n, token in enumerate(gen):
                    if self.is_end(token):
                        break
                    yield token
                    if n + 1 >= budget:
                        break
            finally:
                gen.close()

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def generate(self, conversations: list[list[dict]], settings=None, batch_size: int = 8) -> list[str]:
        """One answer per conversation, `batch_size` of them decoding together (`generate_many`)."""
        s = settings or GenerationSettings()
        requests = ((i, self.prompt_tokens(messages), s) for i, messages in enumerate(conversations))
        answers = dict(self.generate_many(requests, lambda key, text: False, slots=batch_size))
        return [answers[i].strip() for i in range(len(conversations))]

    def stream(self, messages: list[dict], settings=None) -> Iterator[str]:
        """An answer's pieces, without the whitespace a chat answer starts with."""
        started = False
        pieces = self.stream_ids(self.prompt_tokens(messages), settings)
        try:
            for piece in pieces:
                if not started:
                    piece = piece.lstrip()
                    started = bool(piece)
                if piece:
                    yield piece
        finally:
            pieces.close()

    def generate_many(
        self,
        requests: Iterable[tuple[Hashable, list[int], GenerationSettings]],
        finished: Callable[[Hashable, str], bool],
        slots: int = BATCH_SLOTS,
    ) -> Iterator[tuple[Hashable, str]]:
        """(key, text) for each request (key, prompt ids, settings), as each ends: at end-of-generation, at its
        max_new_tokens, or as soon as `finished(key, text)`. Up to `slots` answers decode together, each its own
        sequence in one llama.cpp batch (a new prompt takes the place of an answer that ended), because a
        one-token step reads every weight for one token: on 2 cores a step of 8 tokens costs about 2.2x one.
        Each answer has its own cache (`_batch_context`) and sampler chain (the one `generate_ids` gets, with its
        own seed), so it is the answer `generate_ids` gives: byte for byte on all 164 greedy HumanEval answers of
        Qwen2.5-Coder-0.5B and SmolLM2-135M and the 24 first of Gemma-3-270m (docs/evaluate.md)."""
        llama_cpp = require_llama_cpp()
        with self._lock:  # the whole generator holds this model: no other generation until it is closed
            ctx = self._batch_context(slots)
            memory = llama_cpp.llama_get_memory(ctx)
            capacity = self.n_ctx + slots  # every answer's next token, and one prompt or more
            batch = llama_cpp.llama_batch_init(capacity, 0, 1)
            pending, live, free = iter(requests), {}, set(range(slots))
            try:
                while True:
                    n_tokens = len(live)  # each live answer decodes the token it sampled last
                    while free and (request := next(pending, None)) is not None:
                        answer = _Answer(self, min(free), *request)
                        if n_tokens + len(answer.to_decode) > capacity:
                            answer.close()
                            pending = itertools.chain([request], pending)  # its turn comes in the next step
                            break
                        free.remove(answer.slot)
                        live[answer.slot] = answer
                        n_tokens += len(answer.to_decode)
                    if not live:
                        return
                    batch.n_tokens = 0
                    for slot in sorted(live):  # llama.cpp batches together only sequences with consecutive ids
                        live[slot].add_to(batch)
                    if llama_cpp.llama_decode(ctx, batch) != 0:
                        raise TunelabError(f"{self.path.name}: llama.cpp could not decode a batch of {batch.n_tokens} tokens")
                    for slot, answer in list(live.items()):
                        if answer.take(llama_cpp.llama_sampler_sample(answer.sampler.sampler, ctx, answer.logits_at), finished):
                            llama_cpp.llama_memory_seq_rm(memory, slot, -1, -1)
                            live.pop(slot).close()
                            free.add(slot)
                            yield answer.key, answer.text
            finally:
                for answer in live.values():
                    answer.close()
                llama_cpp.llama_memory_clear(memory, True)
                llama_cpp.llama_batch_free(batch)

    def _batch_context(self, slots: int):
        """A second llama.cpp context on the same weights, one sequence of n_ctx tokens per slot (made once per slot count).

        Each sequence keeps its own cache, so an answer attends over its own tokens alone, in the cells a
        one-sequence context gives them, and its answer is the one `generate_ids` gives (a cache shared by
        the sequences, 1.3x faster a step, changed 33 of 164 greedy HumanEval answers of Qwen2.5-Coder-0.5B)."""
        llama_cpp = require_llama_cpp()
        if self._batch_slots != slots:
            params = llama_cpp.llama_context_params.from_buffer_copy(self.llm.context_params)  # the model's own context's settings
            params.n_ctx = self.n_ctx * slots
            params.n_batch = self.n_ctx + slots
            params.n_seq_max = slots
            params.kv_unified = False
            ctx = llama_cpp.llama_init_from_model(self.llm.model, params)
            if ctx is None:
                raise TunelabError(f"{self.path.name}: llama.cpp could not make a context of {slots} sequences of {self.n_ctx} tokens")
            if self.llm._lora_adapter is not None:  # the adapter the Llama applied to its own context, on this one too
                adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.llm._lora_adapter)
                if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(self.llm.lora_scale)):
                    llama_cpp.llama_free(ctx)
                    raise TunelabError(f"{self.lora}: llama.cpp could not apply the adapter to a context of {slots} sequences")
            if self._batch_ctx is not None:
                llama_cpp.llama_free(self._batch_ctx)
            else:  # freed before the model it uses, when the Llama closes
                self.llm._stack.callback(lambda: llama_cpp.llama_free(self._batch_ctx))
            self._batch_ctx, self._batch_slots = ctx, slots
        return self._batch_ctx

    def stream_ids(self, prompt_ids: list[int], settings=None) -> Iterator[str]:
        """The text after `prompt_ids` as it is produced, exactly (a code completion's indentation included)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in self.generate_ids(prompt_ids, settings):
            piece = decoder.decode(self.llm.detokenize([token]))
            if piece:
                yield piece
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail


class _Answer:
    """One answer of `generate_many`: its sequence (slot), sampler, text so far and the tokens it decodes next."""

    def __init__(self, model: LlamaCppChatModel, slot: int, key: Hashable, prompt_ids: list[int], settings: GenerationSettings):
        self.budget = model.token_budget(prompt_ids, settings)
        self.model, self.slot, self.key, self.text = model, slot, key, ""
        self.to_decode = list(prompt_ids)  # the prompt, then each new token
        self.position, self.logits_at, self.generated = 0, -1, 0
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        model.llm.set_seed(settings.seed)  # the chain's draw takes the Llama's seed
        self.sampler = model.llm._init_sampler(**sampling(settings))  # the chain llm.generate builds: one owner

    def add_to(self, batch) -> None:
        """Put the tokens to decode into `batch` as this answer's sequence, logits at the last."""
        start, tokens = batch.n_tokens, self.to_decode
        for i, token in enumerate(tokens):
            at = start + i
            batch.token[at], batch.pos[at], batch.n_seq_id[at], batch.logits[at] = token, self.position + i, 1, i == len(tokens) - 1
            batch.seq_id[at][0] = self.slot
        batch.n_tokens = start + len(tokens)
        self.position += len(tokens)
        self.logits_at = batch.n_tokens - 1
        self.to_decode = []

    def take(self, token: int, finished) -> bool:
        """Take the token sampled after this step; True when the answer has ended."""
        if not self.model.is_end(token):
            self.text += self.decoder.decode(self.model.llm.detokenize([token]))
            self.generated += 1
            self.to_decode = [token]
            if self.generated < self.budget and not finished(self.key, self.text):
                return False
        self.text += self.decoder.decode(b"", final=True)
        return True

    def close(self) -> None:
        self.sampler.close()


def sampling(settings: GenerationSettings) -> dict:
    """llama-cpp-python's sampling arguments for `settings`: greedy at temperature 0, else top-p and
    temperature (its top-k and min-p off, as transformers' sampling has them)."""
    greedy = not (settings.temperature and settings.temperature > 0)
    return {
        "temp": 0.0 if greedy else settings.temperature,
        "top_p": 1.0 if greedy else settings.top_p,
        "top_k": 0,
        "min_p": 0.0,
        "repeat_penalty": settings.repetition_penalty,
    }
