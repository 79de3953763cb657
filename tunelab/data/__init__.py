"""The data stage: load any supported source into one message schema, clean, deduplicate,
split without test leakage, augment, and describe it in a data card.

Other stages use:
- `load_examples(path_or_source)`: examples from any supported file/folder/hub name;
- `content_hash(example)`: sha256 of the normalised messages;
- `check_no_overlap(train, test)`: raise when held-out examples occur in training data;
- `prepare_data(data_cfg, out_dir, model_ref, max_seq_length)`: the whole stage.
"""

from tunelab.data.loaders import load_examples, load_source
from tunelab.data.prepare import prepare_data
from tunelab.data.schema import content_hash, validate_example
from tunelab.data.split import check_no_overlap

__all__ = ["load_examples", "load_source", "content_hash", "validate_example", "check_no_overlap", "prepare_data"]
