"""Loaders: every input format into the one message schema, with clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_FILES

from tunelab.config import DataSource
from tunelab.data import content_hash, load_examples, load_source
from tunelab.data.loaders import read_source
from tunelab.errors import DataError


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def roles(example):
    return [m["role"] for m in example["messages"]]


# ---------------------------------------------------------------- formats


def test_alpaca_json_with_input_system_and_history(tmp_path):
    f = write_json(
        tmp_path / "a.json",
        [
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "And now?", "input": "", "output": "Still 5.", "system": "Be brief.", "history": [["Hi", "Hello!"]]},
        ],
    )
    ex = load_source(DataSource(path=str(f)))
    assert ex[0] == {
        "id": "a-0",
        "source": "a.json:0",
        "messages": [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
    }
    assert roles(ex[1]) == ["system", "user", "assistant", "user", "assistant"]
    assert ex[1]["messages"][0]["content"] == "Be brief." and ex[1]["messages"][1]["content"] == "Hi"


def test_alpaca_jsonl_and_wrapped_json(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]
    assert len(load_source(DataSource(path=str(write_jsonl(tmp_path / "a.jsonl", rows))))) == 3
    assert len(load_source(DataSource(path=str(write_json(tmp_path / "w.json", {"data": rows}))))) == 3


def test_sharegpt_multi_turn_roles_and_system(tmp_path):
    f = write_json(
        tmp_path / "s.json",
        [
            {
                "id": "x",
                "system": "You are terse.",
                "conversations": [
                    {"from": "human", "value": "Who are you?"},
                    {"from": "gpt", "value": "A bot."},
                    {"from": "user", "value": "Sure?"},
                    {"from": "assistant", "value": "Yes."},
                ],
            },
            {"conversations": [{"from": "system", "value": "Sys"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        ],
    )
    ex = load_source(DataSource(path=str(f)))
    assert roles(ex[0]) == ["system", "user", "assistant", "user", "assistant"]
    assert ex[0]["messages"][0]["content"] == "You are terse."
    assert roles(ex[1]) == ["system", "user", "assistant"]


def test_messages_jsonl_with_content_parts_and_prepared_ids_kept(tmp_path):
    f = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                    {"role": "assistant", "content": "Hello"},
                ]
            },
            {
                "id": "train-7",
                "source": "orig.json:7",
                "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
            },
        ],
    )
    ex = load_examples(f)
    assert ex[0]["messages"][0]["content"] == "Hi there" and ex[0]["id"] == "m-0"
    assert ex[1]["id"] == "train-7" and ex[1]["source"] == "orig.json:7"


def test_prompt_completion_text_and_conversational(tmp_path):
    f = write_jsonl(
        tmp_path / "pc.jsonl",
        [
            {"prompt": "2+2=", "completion": "4"},
            {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey"}]},
        ],
    )
    ex = load_source(DataSource(path=str(f)))
    assert ex[0]["messages"] == [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    assert roles(ex[1]) == ["user", "assistant"]


def test_csv_and_parquet_with_column_mapping(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"question": ["What is 1+1?", "Capital of France?"], "answer": ["2", "Paris"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        ex = load_source(DataSource(path=str(tmp_path / name), columns={"instruction": "question", "output": "answer"}))
        assert [e["messages"][-1]["content"] for e in ex] == ["2", "Paris"], name
    (tmp_path / "t.txt").write_text((tmp_path / "t.csv").read_text())
    ex = load_source(DataSource(path=str(tmp_path / "t.txt"), format="csv", columns={"prompt": "question", "completion": "answer"}))
    assert ex[1]["messages"] == [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]
    with pytest.raises(DataError, match=r"t\.csv, record 0.*cannot tell the format"):
        load_source(DataSource(path=str(tmp_path / "t.csv")))


def test_saved_datasets_folder_and_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"instruction": "q", "output": "a"}, {"instruction": "q2", "output": "a2"}]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert len(load_source(DataSource(path=str(tmp_path / "saved")))) == 2
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_source(DataSource(path=str(tmp_path / "dd"), split="test"))) == 1
    with pytest.raises(DataError, match="no split 'dev'"):
        load_source(DataSource(path=str(tmp_path / "dd"), split="dev"))


def test_hub_name_answered_by_local_mirror(tmp_path, monkeypatch):
    from datasets import Dataset

    monkeypatch.setenv("TUNELAB_DATA_MIRROR", str(tmp_path / "mirror"))
    files = tmp_path / "mirror" / "someone" / "tiny-chat" / "data"
    files.mkdir(parents=True)
    write_jsonl(files / "train.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}])
    write_jsonl(files / "test.jsonl", [{"prompt": "p", "completion": "c"}] * 2)
    assert len(load_source(DataSource(path="someone/tiny-chat"))) == 1
    assert len(load_source(DataSource(path="someone/tiny-chat", split="test"))) == 2
    Dataset.from_list([{"instruction": "q", "output": "a"}] * 3).save_to_disk(str(tmp_path / "mirror" / "other" / "saved"))
    ex = load_source(DataSource(path="other/saved", format="hub"))
    assert len(ex) == 3 and ex[0]["id"] == "other_saved-0"


def test_hub_name_without_mirror_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TUNELAB_DATA_MIRROR", str(tmp_path))
    with pytest.raises(DataError, match="no mirror at .*hub is unreachable"):
        load_source(DataSource(path="nobody/missing-set"))


def test_placeholders_and_system_prompt(tmp_path):
    f = write_json(
        tmp_path / "id.json",
        [
            {"instruction": "Who are you?", "output": "I am {{name}}, made by {{ author }}."},
            {"instruction": "Hi", "output": "Hello", "system": "Own system"},
        ],
    )
    ex = load_source(DataSource(path=str(f), placeholders={"name": "Ada", "author": "Lab"}, system_prompt="Be kind."))
    assert ex[0]["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Ada, made by Lab."},
    ]
    assert ex[1]["messages"][0] == {"role": "system", "content": "Own system"}


def test_real_identity_placeholders_filled(shared_data):
    ex = load_source(DataSource(path=str(shared_data / "identity.json"), placeholders={"name": "Ada", "author": "Lab"}))
    assert len(ex) == 91
    text = json.dumps(ex)
    assert "{{" not in text and "Ada" in text and "Lab" in text


@pytest.mark.parametrize("name", SHARED_FILES)
def test_every_shared_file_loads(shared_data, name):
    info = read_source(DataSource(path=str(shared_data / name), placeholders={"name": "Ada", "author": "Lab"}))
    examples, invalid, meta = info
    assert meta["records"] == len(json.loads((shared_data / name).read_text()))
    assert len(examples) + len(invalid) == meta["records"]
    assert len(examples) >= 0.99 * meta["records"]
    assert all(e["messages"][-1]["role"] == "assistant" for e in examples)
    assert meta["format"] == ("sharegpt" if "sharegpt" in name else "alpaca")


# ---------------------------------------------------------------- validation and errors


def test_bad_json_names_the_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n{"instruction": "q", "output": "a"},\n{"instruction": "q" "output": "a"}\n]')
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON: .* at line 3"):
        load_source(DataSource(path=str(f)))
    g = tmp_path / "bad.jsonl"
    g.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: not valid JSON"):
        load_source(DataSource(path=str(g)))


def test_error_names_file_record_and_field(tmp_path):
    rows = [{"instruction": "q", "output": "a"}] * 12 + [{"instruction": "q", "output": "  "}]
    f = write_json(tmp_path / "identity.json", rows)
    with pytest.raises(DataError) as err:
        load_source(DataSource(path=str(f)), strict=True)
    assert str(err.value) == "identity.json, record 12, field 'output': empty answer"
    f2 = write_json(tmp_path / "m.json", [{"instruction": "q", "output": "a"}, {"instruction": "q"}])
    with pytest.raises(DataError, match=r"m\.json, record 1, field 'output': missing field"):
        load_source(DataSource(path=str(f2)), strict=True)


@pytest.mark.parametrize(
    "record, message",
    [
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
            r"record 1, field 'conversations\[1\]\.from': unknown role 'bot'",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
            r"record 1, field 'conversations\[1\]\.value': empty answer",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "more?"}]},
            r"record 1, field 'messages\[2\]\.role': the last turn is 'user', not the assistant's answer",
        ),
        ({"conversations": [{"from": "gpt", "value": "a"}]}, r"record 1, field 'messages': no user turn"),
        (
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                    {"from": "system", "value": "s"},
                    {"from": "gpt", "value": "b"},
                ]
            },
            r"record 1, field 'messages\[2\]\.role': a system message may only come first",
        ),
    ],
)
def test_validation_errors_strict_and_dropped(tmp_path, record, message):
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    f = write_json(tmp_path / "c.json", [good, record, good])
    with pytest.raises(DataError, match=r"c\.json, " + message):
        load_source(DataSource(path=str(f)), strict=True)
    examples, invalid, _ = read_source(DataSource(path=str(f)))
    assert [e["id"] for e in examples] == ["c-0", "c-2"]
    assert len(invalid) == 1 and invalid[0].record == 1


def test_missing_file_and_no_valid_examples(tmp_path):
    with pytest.raises(DataError, match="nothing.json: file not found"):
        load_source(DataSource(path=str(tmp_path / "nothing.json")))
    f = write_json(tmp_path / "empty.json", [{"instruction": "q", "output": ""}])
    with pytest.raises(DataError, match="no valid examples; first problem: empty.json, record 0, field 'output': empty answer"):
        load_source(DataSource(path=str(f)))


def test_content_hash_ignores_ids_whitespace_and_case():
    a = {"id": "1", "source": "x:1", "messages": [{"role": "user", "content": "Hello  World"}, {"role": "assistant", "content": "Hi"}]}
    b = {"id": "2", "source": "y:5", "messages": [{"role": "user", "content": "hello world "}, {"role": "assistant", "content": "hi"}]}
    c = {"id": "3", "source": "y:6", "messages": [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "bye"}]}
    assert content_hash(a) == content_hash(b) != content_hash(c)


# ---------------------------------------------------------------- row templates (tables with no instruction)
TRANSLATE = {"system": "You translate English into German.", "user": "Translate into German: {english}", "assistant": "{german}"}


def test_csv_rows_become_conversations_through_a_template(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text('english,german,year\n"Hello, world.",Hallo Welt.,2020\nThank you.,Danke.,2021\n', encoding="utf-8")
    examples, invalid, info = read_source(DataSource(path=str(csv), template=TRANSLATE))
    assert info["format"] == "template" and not invalid and len(examples) == 2
    assert examples[0]["messages"] == [
        {"role": "system", "content": "You translate English into German."},
        {"role": "user", "content": "Translate into German: Hello, world."},
        {"role": "assistant", "content": "Hallo Welt."},
    ]
    # numbers are text too; literal braces are written doubled
    tpl = {"user": "In {year} {{braces}}: {english}", "assistant": "{german}"}
    second = load_source(DataSource(path=str(csv), template=tpl))[1]
    assert second["messages"][0]["content"] == "In 2021 {braces}: Thank you."


def test_template_on_parquet_and_jsonl_records(tmp_path):
    import pandas as pd

    rows = [{"english": "Good night.", "german": "Gute Nacht."}, {"english": "Yes.", "german": "Ja."}]
    pd.DataFrame(rows).to_parquet(tmp_path / "pairs.parquet")
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    for name in ("pairs.parquet", "pairs.jsonl"):
        examples = load_source(DataSource(path=str(tmp_path / name), template={"user": "{english}", "assistant": "{german}"}))
        assert [e["messages"][1]["content"] for e in examples] == ["Gute Nacht.", "Ja."]


def test_template_unknown_column_names_file_and_column(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("english,german\nYes.,Ja.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.csv, field 'deutsch': the template names column 'deutsch'.*its columns: english, german"):
        load_source(DataSource(path=str(csv), template={"user": "{english}", "assistant": "{deutsch}"}))


@pytest.mark.parametrize(
    "template, message",
    [
        ({"user": "Translate: {}", "assistant": "{german}"}, r"field 'template.user': '\{\}' is not a column name"),
        ({"user": "Translate: {english.upper}", "assistant": "{german}"}, r"is not a column name"),
        ({"user": "Translate: {english", "assistant": "{german}"}, r"not a valid template.*literal braces"),
        ({"user": "Translate this", "assistant": "Fixed"}, r"names no column"),
    ],
)
def test_template_bad_templates_are_clear_errors(tmp_path, template, message):
    csv = tmp_path / "pairs.csv"
    csv.write_text("english,german\nYes.,Ja.\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_source(DataSource(path=str(csv), template=template))


def test_template_empty_cell_drops_the_row_or_fails_when_strict(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("english,german\nYes.,Ja.\nNo.,\n", encoding="utf-8")
    source = DataSource(path=str(csv), template={"user": "{english}", "assistant": "{german}"})
    examples, invalid, _ = read_source(source)
    assert len(examples) == 1 and len(invalid) == 1
    assert "pairs.csv, record 1, field 'german': empty value" in str(invalid[0])
    with pytest.raises(DataError, match="record 1, field 'german'"):
        read_source(source, strict=True)


def test_template_in_a_recipe_and_a_missing_template_key(tmp_path):
    from tunelab.config import load_recipe
    from tunelab.errors import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  sources:\n    - path: p.csv\n      template: {user: 'Translate: {english}', assistant: '{german}'}\n")
    assert load_recipe(recipe).data.sources[0].template.assistant == "{german}"
    recipe.write_text("data:\n  sources:\n    - path: p.csv\n      template: {user: 'Translate: {english}'}\n")
    with pytest.raises(ConfigError, match="data.sources.0.template.assistant"):
        load_recipe(recipe)


def test_real_tatoeba_and_flores_through_a_template(shared_data):
    for name in ("tatoeba_en_de.csv", "flores200_devtest_en_de.csv"):
        examples, invalid, _ = read_source(DataSource(path=str(shared_data / name), template=TRANSLATE))
        assert not invalid and len(examples) in (17565, 1012)
        assert examples[0]["messages"][1]["content"].startswith("Translate into German: ")
