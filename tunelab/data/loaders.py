"""Read any supported data source into the example schema (see schema.py).

Containers: JSON (a list of records), JSONL, CSV/TSV and Parquet (pandas), a folder saved by
`datasets` (`save_to_disk`), and hub dataset names (`owner/name`), which a local mirror folder
answers offline: `$TUNELAB_DATA_MIRROR/<owner>/<name>/` holding data files or a saved dataset.
The hub itself is tried only when it is reachable.

Record formats, detected from the first record's keys when `format: auto`:
- alpaca: `instruction`, optional `input`, `output`, optional `system`, `history` ([[q, a], ...]);
- sharegpt: `conversations` (or `messages`) of `{from, value}` with human/gpt/system roles;
- messages: `messages` of `{role, content}` (OpenAI style; the prepared splits use it);
- prompt_completion: `prompt` and `completion` (strings, or lists of messages);
- preference: a prompt with a better and a worse answer, `chosen` and `rejected`. The prompt is
  ShareGPT `conversations` (LLaMA-Factory's form, the answers `{from, value}` turns) or `prompt`
  (TRL's form: a string or a list of messages; the answers strings or one-message lists).
  The pair becomes an example whose messages end with the chosen answer and whose `rejected`
  holds the other (schema.py); prepared splits keep that form (`messages` plus `rejected`).
`columns` maps these field names to the table's own (`{instruction: question}`).
A table with no instruction (two columns `english`, `german`) says how a row becomes a
conversation with a `template`: `{user: "Translate into German: {english}", assistant: "{german}"}`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import string
from collections.abc import Callable
from pathlib import Path

from tunelab.config import DataSource, RowTemplate
from tunelab.data.python_functions import passing_answer_records, python_function_records
from tunelab.data.schema import InvalidRecord, validate_example
from tunelab.errors import DataError
from tunelab.io import parse_json
from tunelab.models.resolve import hub_reachable
from tunelab.progress import console

RECORD_FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "preference")
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")
ROLE_ALIASES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
}
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


# ---------------------------------------------------------------- containers: files → records


def read_utf8(path: Path) -> str:
    """A text file's contents. A UTF-8 byte-order mark (as Windows editors write) is dropped; a
    file in another encoding is refused, naming the first bad byte's line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        bad = raw[err.start : err.start + 1]
        raise DataError(path.name, None, None, f"not UTF-8 text (byte {bad!r} on line {line}); save the file as UTF-8") from None


def read_json_records(path: Path) -> list:
    data = parse_json(read_utf8(path), path.name)
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1 and len(data) <= 2:  # {"data": [...]} style wrappers
            data = lists[0]
        else:
            data = [data]
    if not isinstance(data, list):
        raise DataError(path.name, None, None, "expected a JSON list of records")
    return data


def read_jsonl_records(path: Path) -> list:
    records = []
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):  # not splitlines(): JSON text may hold U+2028
        if line.strip():
            records.append(parse_json(line, path.name, lineno))
    return records


def read_table_records(path: Path, kind: str | None = None) -> list:
    """Rows of a CSV/TSV/Parquet table; `kind` ("csv"/"parquet") overrides the extension."""
    import pandas as pd  # ~1 s to import (measured): paid by tables only, not by JSON/JSONL sources

    kind = kind or ("parquet" if path.suffix.lower() == ".parquet" else "csv")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except Exception as err:  # pandas/pyarrow raise many types for unreadable tables
        raise DataError(path.name, None, None, f"cannot read the table: {err}") from None
    return [_plain(r) for r in frame.to_dict(orient="records")]


def _plain(value):
    """numpy arrays and scalars from Parquet/datasets rows → lists, str, numbers."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_file_records(path: Path, format: str = "auto") -> list:
    suffix = path.suffix.lower()
    if format in ("csv", "parquet"):
        return read_table_records(path, format)
    if suffix == ".json":
        return read_json_records(path)
    if suffix == ".jsonl":
        return read_jsonl_records(path)
    if suffix in (".csv", ".tsv", ".parquet"):
        return read_table_records(path)
    raise DataError(path.name, None, None, f"unsupported file type '{suffix}' (use .json, .jsonl, .csv, .tsv or .parquet)")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def read_saved_dataset(path: Path, split: str) -> list:
    from datasets import DatasetDict, load_from_disk  # ~2 s to import (measured): saved datasets and hub names only

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(path.name, None, None, f"no split '{split}' (it has: {', '.join(ds)})")
        ds = ds[split]
    return [_plain(r) for r in ds.to_list()]


def data_mirror_dir() -> Path | None:
    """`TUNELAB_DATA_MIRROR`: a folder where `<owner>/<name>/` stands in for hub dataset `owner/name`."""
    env = os.environ.get("TUNELAB_DATA_MIRROR")
    return Path(env) if env else None


def read_folder_of_files(folder: Path, split: str, label: str) -> list[tuple[str, list]]:
    """[(file label, records)] for the data files of a mirror folder, preferring files named after the split."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in DATA_FILE_SUFFIXES and p.name not in ("dataset_info.json", "state.json", "dataset_dict.json")
    )
    chosen = [p for p in files if split in p.relative_to(folder).as_posix()]
    if not chosen and split == "train":
        chosen = files
    if not chosen:
        raise DataError(label, None, None, f"the mirror folder {folder} has no data files for split '{split}'")
    return [(f"{label}/{p.relative_to(folder).as_posix()}", read_file_records(p)) for p in chosen]


def read_hub_dataset(name: str, split: str) -> list[tuple[str, list]]:
    mirror = data_mirror_dir()
    if mirror is not None and (mirror / name).is_dir():
        folder = mirror / name
        if is_saved_dataset(folder):
            return [(name, read_saved_dataset(folder, split))]
        return read_folder_of_files(folder, split, name)
    if not hub_reachable():
        where = f"{mirror / name}" if mirror else "$TUNELAB_DATA_MIRROR/" + name
        raise DataError(name, None, None, f"not a local file or folder, no mirror at {where}, and the Hugging Face hub is unreachable")
    from datasets import load_dataset  # see read_saved_dataset

    ds = load_dataset(name, split=split)
    return [(name, [_plain(r) for r in ds.to_list()])]


def read_source_records(source: DataSource) -> list[tuple[str, list]]:
    """[(file label, records)] for a source: one entry per file read."""
    path = Path(source.path).expanduser()
    if source.format == "python_functions":
        return [(f"python-{path.name}", python_function_records(source.path))]
    if source.format == "passing_answers":
        return [(f"passing-{path.name}", passing_answer_records(source.path))]
    if source.format != "hub" and path.is_file():
        return [(path.name, read_file_records(path, source.format))]
    if source.format != "hub" and path.is_dir():
        if is_saved_dataset(path):
            return [(path.name, read_saved_dataset(path, source.split))]
        return read_folder_of_files(path, source.split, path.name)
    looks_like_hub_name = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source.path) and path.suffix.lower() not in DATA_FILE_SUFFIXES
    if source.format == "hub" or (source.format == "auto" and looks_like_hub_name):
        return read_hub_dataset(source.path, source.split)
    raise DataError(source.path, None, None, "file not found")


# ---------------------------------------------------------------- record formats → messages


def detect_record_format(record, columns: dict[str, str], file: str) -> str:
    if not isinstance(record, dict):
        raise DataError(file, 0, None, f"a record must be a JSON object, not {type(record).__name__}")
    col = lambda name: columns.get(name, name)  # noqa: E731
    if col("chosen") in record and col("rejected") in record:
        return "preference"
    if col("conversations") in record:
        return "sharegpt"
    if col("messages") in record:
        msgs = record[col("messages")]
        first = msgs[0] if isinstance(msgs, list) and msgs else {}
        return "sharegpt" if isinstance(first, dict) and "from" in first else "messages"
    if col("instruction") in record:
        return "alpaca"
    if col("prompt") in record and col("completion") in record:
        return "prompt_completion"
    raise DataError(
        file,
        0,
        None,
        f"cannot tell the format from the keys {sorted(record)}; set `format` (alpaca, sharegpt, messages, prompt_completion, preference) or map `columns`",
    )


def text_field(record: dict, name: str, file: str, index: int, *, required: bool = True, what: str | None = None) -> str:
    """A string field of a record; None/missing gives '' when optional."""
    if name not in record or record[name] is None:
        if required:
            raise InvalidRecord(file, index, name, "missing field", "bad_record")
        return ""
    value = record[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidRecord(file, index, name, f"expected text, got {type(value).__name__}", "bad_record")
    if required and not value.strip():
        raise InvalidRecord(file, index, name, f"empty {what or name}", "empty_turn")
    return value


def alpaca_messages(record: dict, file: str, index: int, columns: dict[str, str]) -> list[dict]:
    col = lambda name: columns.get(name, name)  # noqa: E731
    instruction = text_field(record, col("instruction"), file, index, what="instruction")
    extra = text_field(record, col("input"), file, index, required=False)
    output = text_field(record, col("output"), file, index, what="answer")
    system = text_field(record, col("system"), file, index, required=False)
    messages = [{"role": "system", "content": system}] if system.strip() else []
    history = record.get(col("history")) or []
    if not isinstance(history, list):
        raise InvalidRecord(file, index, col("history"), "expected a list of [question, answer] pairs", "bad_record")
    for j, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)):
            raise InvalidRecord(
                file, index, f"{col('history')}[{j}]", "expected a [question, answer] pair of non-empty texts", "bad_record"
            )
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def sharegpt_messages(record: dict, file: str, index: int, columns: dict[str, str]) -> list[dict]:
    key = columns.get("conversations", "conversations")
    if key not in record:
        key = columns.get("messages", "messages")
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise InvalidRecord(file, index, key, "expected a non-empty list of turns", "bad_record")
    messages = []
    system = record.get(columns.get("system", "system"))
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise InvalidRecord(file, index, f"{key}[{j}]", "a turn needs 'from' and 'value'", "bad_record")
        role = ROLE_ALIASES.get(str(turn["from"]).lower())
        if role is None:
            raise InvalidRecord(file, index, f"{key}[{j}].from", f"unknown role {turn['from']!r}", "unknown_role")
        if not isinstance(turn["value"], str) or not turn["value"].strip():
            raise InvalidRecord(
                file, index, f"{key}[{j}].value", "empty answer" if role == "assistant" else f"empty {role} turn", "empty_turn"
            )
        messages.append({"role": role, "content": turn["value"]})
    return messages


def message_list(value, file: str, index: int, field: str) -> list[dict]:
    """OpenAI-style messages; `content` may be a list of {type: text, text} parts."""
    if isinstance(value, str):  # a JSON string in a CSV cell
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise InvalidRecord(file, index, field, "expected a list of messages (or its JSON text)", "bad_record") from None
    if not isinstance(value, list) or not value:
        raise InvalidRecord(file, index, field, "expected a non-empty list of messages", "bad_record")
    messages = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidRecord(file, index, f"{field}[{j}]", "a message needs 'role' and 'content'", "bad_record")
        content = m["content"]
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
            if not all(isinstance(t, str) for t in texts):
                raise InvalidRecord(file, index, f"{field}[{j}].content", "a content part's 'text' must be text", "bad_record")
            content = "".join(texts)
        if not isinstance(content, str):
            raise InvalidRecord(file, index, f"{field}[{j}].content", f"expected text, got {type(content).__name__}", "bad_record")
        role = ROLE_ALIASES.get(str(m["role"]).lower())
        if role is None:
            raise InvalidRecord(file, index, f"{field}[{j}].role", f"unknown role {m['role']!r}", "unknown_role")
        if not content.strip():
            raise InvalidRecord(
                file, index, f"{field}[{j}].content", "empty answer" if role == "assistant" else f"empty {role} turn", "empty_turn"
            )
        messages.append({"role": role, "content": content})
    return messages


def messages_messages(record: dict, file: str, index: int, columns: dict[str, str]) -> list[dict]:
    key = columns.get("messages", "messages")
    if key not in record:
        raise InvalidRecord(file, index, key, "missing field", "bad_record")
    return message_list(record[key], file, index, key)


def prompt_completion_messages(record: dict, file: str, index: int, columns: dict[str, str]) -> list[dict]:
    p, c = columns.get("prompt", "prompt"), columns.get("completion", "completion")
    for key in (p, c):
        if key not in record or record[key] is None:
            raise InvalidRecord(file, index, key, "missing field", "bad_record")
    if isinstance(record[p], list):  # TRL's conversational prompt/completion
        return message_list(record[p], file, index, p) + message_list(record[c], file, index, c)
    prompt = text_field(record, p, file, index, what="prompt")
    completion = text_field(record, c, file, index, what="answer")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def preference_prompt(record: dict, file: str, index: int, columns: dict[str, str]) -> list[dict]:
    """The prompt turns of a pair: ShareGPT `conversations` (or `messages`), or `prompt` (text or messages); it ends with the user."""
    col = lambda name: columns.get(name, name)  # noqa: E731
    key = next((col(k) for k in ("conversations", "messages", "prompt") if col(k) in record), None)
    if key is None:
        raise InvalidRecord(file, index, col("prompt"), "a preference pair needs its prompt: `conversations` or `prompt`", "bad_record")
    value = record[key]
    if key == col("prompt") and not isinstance(value, list):
        return [{"role": "user", "content": text_field(record, key, file, index, what="prompt")}]
    first = value[0] if isinstance(value, list) and value else None
    if isinstance(first, dict) and "from" in first:
        prompt = sharegpt_messages(record, file, index, {**columns, "conversations": key})
        role_field = "from"
    else:
        prompt = message_list(value, file, index, key)
        role_field = "role"
    if prompt[-1]["role"] != "user":
        raise InvalidRecord(
            file,
            index,
            f"{key}[{len(value) - 1}].{role_field}",
            f"the prompt ends with a {prompt[-1]['role']} turn; it must end with the user's turn that the two answers reply to",
            "wrong_role",
        )
    return prompt


def preference_answer(value, file: str, index: int, field: str) -> dict:
    """One answer of a pair as an assistant message: a string, a `{from, value}` or `{role, content}` turn, or a list of one."""
    if isinstance(value, list):
        if len(value) != 1:
            raise InvalidRecord(file, index, field, f"expected one answer turn, got a list of {len(value)}", "bad_record")
        value, field = value[0], f"{field}[0]"
    if isinstance(value, dict):
        role_key, text_key = ("from", "value") if "from" in value else ("role", "content")
        if role_key not in value or text_key not in value:
            raise InvalidRecord(file, index, field, "an answer turn needs 'from' and 'value' (or 'role' and 'content')", "bad_record")
        if ROLE_ALIASES.get(str(value[role_key]).lower()) != "assistant":
            raise InvalidRecord(
                file, index, f"{field}.{role_key}", f"the answer comes from {value[role_key]!r}, not the assistant (gpt)", "wrong_role"
            )
        value, field = value[text_key], f"{field}.{text_key}"
        if isinstance(value, list):  # content as a list of {type: text, text} parts
            value = "".join(p.get("text", "") for p in value if isinstance(p, dict))
    if not isinstance(value, str):
        raise InvalidRecord(file, index, field, f"expected text, got {type(value).__name__}", "bad_record")
    if not value.strip():
        raise InvalidRecord(file, index, field, "empty answer", "empty_turn")
    return {"role": "assistant", "content": value}


def preference_messages(record: dict, file: str, index: int, columns: dict[str, str]) -> list[dict]:
    """The prompt followed by the chosen answer (the rejected one: `rejected_answer`)."""
    chosen = columns.get("chosen", "chosen")
    if chosen not in record:
        raise InvalidRecord(file, index, chosen, "missing field", "bad_record")
    return [*preference_prompt(record, file, index, columns), preference_answer(record[chosen], file, index, chosen)]


def rejected_answer(record: dict, file: str, index: int, columns: dict[str, str], record_format: str) -> dict | None:
    """A pair's rejected answer: required in the preference format, kept when a prepared split (messages) has one."""
    key = columns.get("rejected", "rejected")
    if record_format == "preference" and key not in record:
        raise InvalidRecord(file, index, key, "missing field", "bad_record")
    if record_format not in ("preference", "messages") or key not in record:
        return None
    return preference_answer(record[key], file, index, key)


CONVERTERS: dict[str, Callable[[dict, str, int, dict], list[dict]]] = {
    "alpaca": alpaca_messages,
    "sharegpt": sharegpt_messages,
    "messages": messages_messages,
    "prompt_completion": prompt_completion_messages,
    "preference": preference_messages,
}


def template_columns(template: RowTemplate, source: str) -> list[str]:
    """The columns a row template names, in order; positional `{}` and `{a.b}` fields are refused."""
    names: list[str] = []
    for part in ("system", "user", "assistant"):
        text = getattr(template, part)
        if text is None:
            continue
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        except ValueError as err:
            raise DataError(
                source, None, f"template.{part}", f"not a valid template ({err}); write literal braces as {{{{ and }}}}"
            ) from None
        for f in fields:
            if not f.isidentifier() and not f.replace(" ", "_").replace("-", "_").isidentifier():
                raise DataError(source, None, f"template.{part}", f"'{{{f}}}' is not a column name")
            if f not in names:
                names.append(f)
    if not names:
        raise DataError(source, None, "template", "names no column: write e.g. 'Translate into German: {english}'")
    return names


def check_template_columns(template: RowTemplate, first_record, file: str) -> None:
    """Every column the template names must exist in the table (checked once, on its first row)."""
    if not isinstance(first_record, dict):
        raise DataError(file, 0, None, f"a record must be an object with columns, not {type(first_record).__name__}")
    missing = [c for c in template_columns(template, file) if c not in first_record]
    if missing:
        have = ", ".join(map(str, first_record)) or "none"
        raise DataError(
            file, None, missing[0], f"the template names column '{missing[0]}', which this file does not have (its columns: {have})"
        )


def template_messages(record: dict, file: str, index: int, columns: dict[str, str], *, template: RowTemplate) -> list[dict]:
    """A conversation built from one row with the source's template."""
    values = {}
    for column in template_columns(template, file):
        value = record.get(column)
        if isinstance(value, float) and value != value:  # NaN: an empty Parquet/pandas cell
            value = None
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InvalidRecord(file, index, column, "empty value" if column in record else "missing column", "empty_turn")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InvalidRecord(file, index, column, f"expected text, got {type(value).__name__}", "bad_record")
        values[column] = str(value)
    messages = [{"role": "system", "content": template.system.format_map(values)}] if template.system else []
    return messages + [
        {"role": "user", "content": template.user.format_map(values)},
        {"role": "assistant", "content": template.assistant.format_map(values)},
    ]


def record_converter(source: DataSource, records: list, file: str) -> tuple[str, Callable[[dict, str, int, dict], list[dict]]]:
    """(format name, converter) for the records of one file of a source."""
    if source.template is not None:
        check_template_columns(source.template, records[0], file)
        return "template", functools.partial(template_messages, template=source.template)
    record_format = source.format if source.format in RECORD_FORMATS else detect_record_format(records[0], source.columns, file)
    return record_format, CONVERTERS[record_format]


def fill_placeholders(text: str, values: dict[str, str]) -> str:
    if not values or "{{" not in text:
        return text
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


# ---------------------------------------------------------------- sources → examples
def record_example(record, file: str, index: int, source: DataSource, record_format: str, convert, stem: str) -> dict:
    """One record as an example (not yet validated): messages, placeholders filled, the source's system prompt, a pair's rejected answer."""
    if not isinstance(record, dict):
        raise InvalidRecord(file, index, None, f"a record must be a JSON object, not {type(record).__name__}", "bad_record")
    messages = convert(record, file, index, source.columns)
    rejected = rejected_answer(record, file, index, source.columns, record_format)
    for m in messages + ([rejected] if rejected else []):
        m["content"] = fill_placeholders(m["content"], source.placeholders)
    if source.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": source.system_prompt})
    # prepared splits (the messages format) keep their ids and sources
    keep_id = record_format == "messages" and isinstance(record.get("id"), str) and isinstance(record.get("source"), str)
    example = {"id": record["id"] if keep_id else f"{stem}-{index}", "messages": messages}
    if rejected is not None:
        example["rejected"] = rejected
    return {**example, "source": record["source"] if keep_id else f"{file}:{index}"}


def read_source(source: DataSource, strict: bool = False) -> tuple[list[dict], list[InvalidRecord], dict]:
    """(examples, invalid records, info) for one source.

    Invalid records raise at once when `strict`, else they are dropped and returned.
    Bad files (unreadable, not JSON, unknown format) always raise a DataError.
    """
    examples: list[dict] = []
    invalid: list[InvalidRecord] = []
    info = {"path": source.path, "files": [], "records": 0, "format": None}
    for file, records in read_source_records(source):
        if not records:
            raise DataError(file, None, None, "no records")
        record_format, convert = record_converter(source, records, file)
        info["files"].append(file)
        info["format"] = record_format
        info["records"] += len(records)
        stem = str(Path(file).with_suffix("")).replace("/", "_")
        for index, record in enumerate(records):
            try:
                example = record_example(record, file, index, source, record_format, convert, stem)
                validate_example(example)
            except InvalidRecord as err:
                if strict:
                    raise
                invalid.append(err)
                continue
            examples.append(example)
    # `{{name}}` left in the text: a missing placeholder value (code and templates may also use
    # braces, so warn only when the user gave placeholders or the name is in many examples)
    uses: dict[str, int] = {}
    for e in examples:
        for name in {n for m in e["messages"] for n in PLACEHOLDER.findall(m["content"])}:
            uses[name] = uses.get(name, 0) + 1
    unfilled = sorted(n for n, count in uses.items() if source.placeholders or count >= max(2, 0.1 * len(examples)))
    if unfilled:
        info["unfilled_placeholders"] = unfilled
        console.print(
            f"[yellow]warning:[/] {source.path}: placeholders without a value: {', '.join('{{' + n + '}}' for n in unfilled)} (set `placeholders`)"
        )
    if not examples:
        first = f"; first problem: {invalid[0]}" if invalid else ""
        raise DataError(source.path, None, None, f"no valid examples{first}")
    info["loaded"] = len(examples)
    return examples, invalid, info


def load_source(source: DataSource, strict: bool = False) -> list[dict]:
    """The valid examples of a source (invalid records dropped, or raised when `strict`)."""
    return read_source(source, strict=strict)[0]


def load_examples(path_or_source: str | Path | DataSource, *, strict: bool = False) -> list[dict]:
    """Examples from any supported file, folder, hub name or DataSource (e.g. held-out data for eval).

    Prepared splits (`train.jsonl`, `test.jsonl`) keep their ids and sources.
    """
    source = path_or_source if isinstance(path_or_source, DataSource) else DataSource(path=str(path_or_source))
    examples, invalid, _ = read_source(source, strict=strict)
    if invalid:
        console.print(f"[yellow]warning:[/] {source.path}: dropped {len(invalid)} invalid records (first: {invalid[0]})")
    return examples
