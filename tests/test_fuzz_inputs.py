"""Fuzzing every data loader (json, jsonl, csv, tsv, parquet × alpaca, sharegpt, messages,
prompt_completion) and the recipe loader with truncated, mistyped, wrongly nested, wrongly
encoded and enormous inputs. Every case either loads valid examples or ends in a TunelabError
that names the file (and the record and field, for a bad record): never another exception, and
`tunelab data prepare` leaves no output folder behind. Each test prints how many cases it tried."""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.config import DataSource, load_recipe
from tunelab.data.loaders import read_source
from tunelab.data.schema import InvalidRecord, validate_example
from tunelab.errors import TunelabError

CONTAINERS = ("json", "jsonl", "csv", "tsv", "parquet")
VALID = {
    "alpaca": {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "system": "Be brief.", "history": [["Hi", "Hello!"]]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}], "system": "Be brief."},
    "messages": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
        ]
    },
    "prompt_completion": {"prompt": "Hi", "completion": "Hello!"},
}
TRIED: Counter = Counter()
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def report(capsys, what: str) -> None:
    with capsys.disabled():
        print(f"\n[fuzz] {what}: {TRIED[what]} cases tried")


# ---------------------------------------------------------------- writing and checking
def flat(value):
    """A table cell: text as is, anything else as its JSON text (how CSV/Parquet carry nested fields)."""
    return value if isinstance(value, str) else json.dumps(value)


def write_records(path: Path, container: str, records: list) -> Path:
    if container == "json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif container == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        rows = [{k: flat(v) for k, v in r.items()} if isinstance(r, dict) else {"value": flat(r)} for r in records]
        frame = pd.DataFrame(rows or [{"value": ""}])
        if container == "parquet":
            frame.astype(str).to_parquet(path)
        else:
            frame.to_csv(path, sep="\t" if container == "tsv" else ",", index=False)
    return path


def check_load(path: Path, fmt: str = "auto") -> str:
    """Load with and without `strict`; return "loaded" or "refused". Anything else fails the test."""
    outcome = "loaded"
    for strict in (True, False):
        try:
            examples, invalid, _ = read_source(DataSource(path=str(path), format=fmt), strict=strict)
        except TunelabError as err:
            assert path.name in str(err), f"the error does not name the file: {err}"
            if isinstance(err, InvalidRecord):
                whole_record = err.problem.startswith("a record must be")  # not a JSON object: no field to name
                assert isinstance(err.record, int) and (err.field or whole_record), f"a record error without record and field: {err}"
            outcome = "refused"
            continue
        assert examples, "loaded nothing without an error"
        for e in examples:
            validate_example(e)
        for err in invalid:
            assert err.file and isinstance(err.record, int), err
    return outcome


# ---------------------------------------------------------------- structured mutations
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def paths_in(value, prefix=()) -> list[tuple]:
    """Every location inside a nested record (dict keys and list indexes)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_in(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_in(v, (*prefix, i))
    return out


def mutate(record: dict, data) -> object:
    """Replace, delete or rewrap one location of a valid record."""
    record = copy.deepcopy(record)
    where = data.draw(st.sampled_from(paths_in(record)))
    action = data.draw(st.sampled_from(["replace", "delete", "wrap", "retype"]))
    if not where:
        return data.draw(json_values) if action == "replace" else [record] if action == "wrap" else record
    parent = record
    for key in where[:-1]:
        parent = parent[key]
    key = where[-1]
    if action == "delete":
        del parent[key]
    elif action == "wrap":
        parent[key] = [parent[key]]
    elif action == "retype":
        parent[key] = data.draw(st.sampled_from([None, 0, 1.5, True, "", " ", {}, [], {"text": 5}, [{"text": None}], [[]]]))
    else:
        parent[key] = data.draw(json_values)
    return record


@pytest.mark.parametrize("record_format", list(VALID))
@pytest.mark.parametrize("container", CONTAINERS)
def test_fuzz_mistyped_and_wrongly_nested_records(container, record_format, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp(f"{container}-{record_format}")

    @SETTINGS
    @given(data=st.data())
    def case(data):
        records = [VALID[record_format], mutate(VALID[record_format], data), VALID[record_format]]
        path = write_records(folder / f"data.{container}", container, records)
        TRIED["records"] += 1
        check_load(path, data.draw(st.sampled_from(["auto", record_format])))

    case()
    report(capsys, "records")


# ---------------------------------------------------------------- byte-level damage
def valid_for(container: str, record_format: str) -> dict | None:
    """A valid record as this container carries it (tables hold no nested alpaca history or ShareGPT turns)."""
    if container in ("json", "jsonl"):
        return VALID[record_format]
    if record_format == "sharegpt":
        return None
    return {k: v for k, v in VALID[record_format].items() if k != "history"}


def valid_bytes(container: str, record_format: str, tmp: Path) -> bytes:
    record = valid_for(container, record_format) or VALID[record_format]
    path = write_records(tmp / f"valid.{container}", container, [record, {**record}])
    return path.read_bytes()


def damaged(raw: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    text = raw.decode("utf-8", errors="replace")
    cut = rng.randrange(1, max(2, len(raw)))
    flips = bytearray(raw)
    for _ in range(5):
        flips[rng.randrange(len(flips))] = rng.randrange(256)
    return [
        ("empty", b""),
        ("whitespace", b" \n\t\n"),
        ("truncated", raw[:cut]),
        ("truncated half", raw[: len(raw) // 2]),
        ("bytes flipped", bytes(flips)),
        ("invalid utf-8", raw[:cut] + b"\xff\xfe\xfd" + raw[cut:]),
        ("latin-1", text.replace("Hello", "Héllo, ça va").encode("latin-1", errors="replace")),
        ("utf-16", text.encode("utf-16")),
        ("nul bytes", raw.replace(b"H", b"\x00")),
        ("bom", b"\xef\xbb\xbf" + raw),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000),
        (
            "deeply nested field",
            json.dumps({"instruction": "x", "output": "y"}).encode()[:-1] + b', "history": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        ),
    ]


@pytest.mark.parametrize("record_format", list(VALID))
@pytest.mark.parametrize("container", CONTAINERS)
def test_fuzz_damaged_and_wrongly_encoded_files(container, record_format, tmp_path, capsys):
    rng = random.Random(f"{container}-{record_format}")
    raw = valid_bytes(container, record_format, tmp_path)
    reference = check_load(tmp_path / f"valid.{container}")
    assert reference == ("loaded" if valid_for(container, record_format) else "refused")
    for round_ in range(8):
        for label, content in damaged(raw, rng):
            path = tmp_path / f"case-{round_}-{label.replace(' ', '-')}.{container}"
            path.write_bytes(content)
            TRIED["bytes"] += 1
            outcome = check_load(path)
            if label == "bom" and container != "parquet" and reference == "loaded":
                assert outcome == "loaded", "a UTF-8 file with a byte-order mark (as Windows editors save it) must load"
    report(capsys, "bytes")


def test_encoding_errors_say_utf8_and_where(tmp_path):
    for container in ("json", "jsonl"):
        path = write_records(tmp_path / f"d.{container}", container, [VALID["alpaca"]] * 3)
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b"Hello!", "Héllo!".encode("latin-1")))
        with pytest.raises(TunelabError, match=rf"d\.{container}.*UTF-8.*line 1"):
            read_source(DataSource(path=str(path)))


def test_fuzz_enormous_inputs(tmp_path, capsys):
    """A 30 MB answer, 50,000 records, and 50,000 keys in one record: loaded or refused, quickly and clearly."""
    big = "word " * 6_000_000
    cases = {
        "huge field.jsonl": [{"instruction": "Repeat.", "output": big}],
        "many records.json": [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(50_000)],
        "many keys.json": [{**{f"k{i}": i for i in range(50_000)}, "instruction": "Q", "output": "A"}],
        "many turns.jsonl": [{"conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": f"t{i}"} for i in range(20_000)]}],
    }
    for name, records in cases.items():
        path = write_records(tmp_path / name, name.rsplit(".", 1)[1], records)
        TRIED["enormous"] += 1
        assert check_load(path) == "loaded", name
    csv = tmp_path / "huge cell.csv"
    pd.DataFrame([{"prompt": "Q", "completion": big}]).to_csv(csv, index=False)
    TRIED["enormous"] += 1
    assert check_load(csv) == "loaded"
    report(capsys, "enormous")


# ---------------------------------------------------------------- data prepare leaves nothing
PREPARE_CASES = [
    ("a.json", b'[{"instruction": "Q", "output": "A"}, {"instruction": '),
    ("b.jsonl", b'{"prompt": "Q", "completion": "A"}\n{"prompt": \xff\xfe}\n'),
    ("c.json", b"[" * 100_000),
    ("d.csv", b"\xff\xfe\x00q\x00"),
    ("e.parquet", b"PAR1 not really"),
    ("f.json", json.dumps([{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}]).encode()),
    ("g.jsonl", json.dumps({"conversations": {"from": "human", "value": "x"}}).encode()),
    ("h.tsv", b"instruction\toutput\n\t\n"),
]


@pytest.mark.parametrize("name,content", PREPARE_CASES, ids=[c[0] for c in PREPARE_CASES])
def test_data_prepare_refuses_bad_files_and_leaves_no_output(tmp_path, tiny_model_dir, name, content, capsys):
    from typer.testing import CliRunner

    from tunelab.cli import app

    bad = tmp_path / name
    bad.write_bytes(content)
    out = tmp_path / "prepared"
    result = CliRunner().invoke(app, ["data", "prepare", str(bad), "--out", str(out), "--model", str(tiny_model_dir), "--strict"])
    TRIED["prepare"] += 1
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and name in result.output and "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "data prepare left something behind"


# ---------------------------------------------------------------- the recipe loader
VALID_RECIPE = {
    "name": "fuzz",
    "model": "smollm2-135m-instruct",
    "data": {"sources": [{"path": "data.json", "format": "alpaca", "placeholders": {"name": "Tuna"}}], "dedup": "exact"},
    "train": {"weights": "lora", "max_steps": 2, "lora": {"r": 4, "target_modules": ["q_proj"]}},
    "eval": {"metrics": ["bleu"], "max_new_tokens": 8},
    "export": {"formats": ["merged"]},
}


def check_recipe(path: Path) -> None:
    try:
        load_recipe(path)
    except TunelabError as err:
        assert path.name in str(err), f"the error does not name the recipe file: {err}"


@SETTINGS
@given(data=st.data())
def test_fuzz_recipes_mutated(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("recipe", numbered=True)
    (folder / "data.json").write_text("[]")
    recipe = mutate(VALID_RECIPE, data)
    if data.draw(st.booleans()):
        recipe = {**recipe, data.draw(st.text(min_size=1, max_size=8)): data.draw(json_values)} if isinstance(recipe, dict) else recipe
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    TRIED["recipes"] += 1
    check_recipe(path)


def test_fuzz_recipe_files_damaged(tmp_path, capsys):
    raw = yaml.safe_dump(VALID_RECIPE).encode()
    rng = random.Random("recipes")
    extra = [
        ("tab indent", raw.replace(b"  ", b"\t")),
        ("nul in a path", raw.replace(b"data.json", b'"da\\0ta.json"')),
        ("long path", raw.replace(b"data.json", b"x/" * 3000 + b"data.json")),
        (
            "alias bomb",
            b"a: &a [1,2,3,4,5,6,7,8,9]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c]\n",
        ),
        ("python tag", b"name: !!python/object/apply:os.system ['echo hi']\n"),
        ("a list", b"- 1\n- 2\n"),
        ("a scalar", b"42\n"),
        ("deep nesting", b"data: " + b"[" * 20_000 + b"]" * 20_000 + b"\n"),
    ]
    cases = [
        (f"{round_}-{label}", content)
        for round_ in range(6)
        for label, content in damaged(raw, rng)
        if "nested" not in label or round_ == 0
    ]
    for label, content in cases + extra:  # PyYAML parses deep nesting slowly: those cases once
        path = tmp_path / f"recipe-{label.replace(' ', '-')}.yaml"
        path.write_bytes(content)
        TRIED["recipe files"] += 1
        check_recipe(path)
    report(capsys, "recipe files")


def test_fuzz_counts(capsys):
    """Runs last in this file: the totals (with -p no:randomly order)."""
    with capsys.disabled():
        print(f"\n[fuzz] totals: {dict(TRIED)}; all: {sum(TRIED.values())}")
