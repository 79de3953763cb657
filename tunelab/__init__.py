"""tunelab: fine-tune, measure, export and serve small LLMs.

Third-party noise a tunelab user cannot act on is filtered here, once, at its source, and
precisely (one logger, or one message and category): nothing else is silenced. Three
progress bars of transformers (`HIDDEN_BARS`: loading, saving, and reading a GGUF file) are
switched off in tunelab/models/load.py, because that needs transformers imported.
"""

import logging
import warnings

__version__ = "0.1.0"


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


_NO_KERNELS_WARNING = _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community")
_OFFLINE_TRUST_WARNING = _DropMessage("Skipping publisher trust check for 'kernels-community/")
_NO_AMPERE_WARNING = _DropMessage("The speedups for torchdynamo mostly come with GPU Ampere or higher")


def filter_third_party_noise() -> None:
    """Install the filters (idempotent; done on `import tunelab`)."""
    # bitsandbytes (imported by peft) looks for the optional `kernels` package for a faster 4-bit CPU
    # kernel and logs a warning on every import when it is missing; QLoRA works without it.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NO_KERNELS_WARNING)
    # ...and when the package is there and the Hub is offline (tunelab's default), `kernels` says on
    # every import that it cannot check the publisher of Hugging Face's own kernels-community repository
    logging.getLogger("kernels._internals.hf_hub").addFilter(_OFFLINE_TRUST_WARNING)
    # train.compile on a CPU: transformers warns that torch.compile's speed-ups need an Ampere GPU;
    # bench/train_compile.py measures what it buys on this CPU instead
    logging.getLogger("transformers.training_args").addFilter(_NO_AMPERE_WARNING)
    # peft reads `model.is_gradient_checkpointing`, which transformers 5 deprecates; nothing in tunelab uses it.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # ...and peft's prepare_model_for_kbit_training (QLoRA) calls `gradient_checkpointing_enable`, renamed too
    warnings.filterwarnings("ignore", message=r"`gradient_checkpointing_enable` is deprecated", category=FutureWarning)
    # TRL warns on every import of trl.experimental (where ORPO lives) that its API may change; tunelab
    # pins trl and its tests exercise that API, so the notice is for tunelab's developers, not its users.
    warnings.filterwarnings("ignore", message=r"You are importing from 'trl\.experimental'", category=UserWarning)


filter_third_party_noise()
