"""prepare_data: filters, dedup, leak-free deterministic splits, mixing, the card, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_FILES

from tunelab.config import DataConfig, DataSource
from tunelab.data import check_no_overlap, content_hash, prepare_data
from tunelab.data.dedup import exact_dedup, near_dedup
from tunelab.data.prepare import mix_by_weight
from tunelab.data.split import split_examples
from tunelab.errors import DataError, TunelabError
from tunelab.io import read_jsonl

TOPICS = [
    "apples",
    "rivers",
    "engines",
    "violins",
    "glaciers",
    "comets",
    "bridges",
    "forests",
    "deserts",
    "lanterns",
    "volcanoes",
    "harbors",
    "orchids",
    "castles",
    "satellites",
    "pianos",
    "beetles",
    "canyons",
    "lighthouses",
    "tulips",
]


def alpaca_rows(n: int, prefix: str = "") -> list[dict]:
    return [
        {
            "instruction": f"{prefix}Write one fact about {TOPICS[i % 20]} number {i}.",
            "input": "",
            "output": f"Fact {i}: {TOPICS[i % 20]} are interesting in way {i * 7}.",
        }
        for i in range(n)
    ]


def write(path: Path, rows) -> str:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def cfg(*sources, **kw) -> DataConfig:
    return DataConfig(sources=[s if isinstance(s, DataSource) else DataSource(path=str(s)) for s in sources], **kw)


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> str:
    return str(tiny_model_dir)


def read_split(out: Path, name: str) -> list[dict]:
    return read_jsonl(out / f"{name}.jsonl")


def test_prepare_writes_splits_and_card(tmp_path, model):
    src = write(tmp_path / "facts.json", alpaca_rows(60))
    card = prepare_data(cfg(src, test_fraction=0.1, validation_fraction=0.1), tmp_path / "out", model, 512)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "card.md", "lengths.png", "test.jsonl", "train.jsonl", "validation.jsonl"]
    assert card["counts"] == {"train": 48, "validation": 6, "test": 6}
    assert json.loads((out / "card.json").read_text())["counts"] == card["counts"]
    rows = read_split(out, "train")
    assert set(rows[0]) == {"id", "messages", "source"} and rows[0]["source"].startswith("facts.json:")
    for split in ("train", "validation", "test"):
        t = card["tokens"][split]
        assert t["count"] == card["counts"][split] and sum(t["histogram"]["counts"]) == t["count"]
        assert t["min"] <= t["median"] <= t["max"] and len(card["hashes"][split]) == 64
    assert set(card["hashes"]) == {"train", "validation", "test", "all"}
    assert card["sources"][0]["records"] == 60 and card["sources"][0]["train"] == 48
    assert card["config"]["seed"] == 42 and card["max_tokens"] == 512
    md = (out / "card.md").read_text()
    assert "| train | 48 |" in md and "lengths.png" in md
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    ids = [{e["id"] for e in read_split(out, s)} for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_split_is_deterministic_by_seed(tmp_path, model):
    src = write(tmp_path / "facts.json", alpaca_rows(50))
    a = prepare_data(cfg(src, seed=1), tmp_path / "a", model, 512)
    b = prepare_data(cfg(src, seed=1), tmp_path / "b", model, 512)
    c = prepare_data(cfg(src, seed=2), tmp_path / "c", model, 512)
    assert a["hashes"] == b["hashes"]
    assert read_split(tmp_path / "a", "test") == read_split(tmp_path / "b", "test")
    assert a["hashes"]["test"] != c["hashes"]["test"]


def test_split_sizes_and_exact_counts():
    examples = [{"id": str(i), "messages": [], "source": f"x:{i}"} for i in range(20)]
    train, val, test = split_examples(examples, seed=0, test_size=3, validation_size=2)
    assert (len(train), len(val), len(test)) == (15, 2, 3)
    with pytest.raises(TunelabError, match="leaves no training data"):
        split_examples(examples, seed=0, test_size=15, validation_size=5)


def test_drops_counted_by_reason_and_strict_raises(tmp_path, model):
    rows = alpaca_rows(30)
    rows[3]["output"] = ""  # empty answer
    rows[5]["output"] = "\x00\x01 \u200b"  # empty once cleaned
    rows[7] = dict(rows[8])  # exact duplicate of 8
    rows[9]["output"] = "As an AI language model, I cannot have opinions about rivers."
    rows[11]["output"] = " word" * 400  # over-long
    src = write(tmp_path / "mixed.json", rows)
    card = prepare_data(cfg(src, quality_filter=True, max_tokens=200), tmp_path / "out", model, 512)
    drops = card["drops"]
    assert drops["empty_turn"]["count"] == 2 and drops["empty_turn"]["examples"] == ["mixed.json:3", "mixed.json:5"]
    assert "mixed.json, record 3, field 'output': empty answer" == drops["empty_turn"]["first_message"]
    assert drops["exact_duplicate"]["count"] == 1
    assert drops["refusal"]["examples"] == ["mixed-9"]
    assert drops["too_long"]["count"] == 1 and "record 11" in drops["too_long"]["first_message"]
    assert sum(card["counts"].values()) == 30 - 5
    with pytest.raises(DataError, match=r"mixed\.json, record 3, field 'output': empty answer"):
        prepare_data(cfg(src, strict=True), tmp_path / "strict", model, 512)
    rows[3]["output"], rows[5]["output"] = "fine", "fine too"
    with pytest.raises(DataError, match=r"long\.json, record 11: \d+ tokens with the chat template, over the limit of 200"):
        prepare_data(cfg(write(tmp_path / "long.json", rows), strict=True, max_tokens=200), tmp_path / "strict", model, 512)
    assert not (tmp_path / "strict").exists()


def test_cleaning_normalises_text(tmp_path, model):
    rows = alpaca_rows(12)
    rows[0]["instruction"] = "Cafe\u0301 menu?  \r\n\r\n\r\n\r\nList it.\u200b  "
    rows[0]["output"] = "def f():\n    return 1   \n"
    src = write(tmp_path / "c.json", rows)
    prepare_data(cfg(src, test_size=0, validation_size=0), tmp_path / "out", model, 512)
    first = next(e for e in read_split(tmp_path / "out", "train") if e["id"] == "c-0")
    assert first["messages"][0]["content"] == "Café menu?\n\nList it."
    assert first["messages"][1]["content"] == "def f():\n    return 1"


def test_exact_and_near_dedup():
    def ex(i, text, answer="The answer is a long sentence about the topic at hand here."):
        return {"id": str(i), "source": f"x:{i}", "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}

    base = "Explain in simple words how a steam engine turns heat from burning coal into useful motion for trains"
    examples = [
        ex(0, base),
        ex(1, base.upper() + "  "),
        ex(2, base + " please"),
        ex(3, "Name three colours of the rainbow", "Red, orange and yellow."),
    ]
    kept, dropped = exact_dedup(examples)
    assert [e["id"] for e in kept] == ["0", "2", "3"] and dropped[0][0]["id"] == "1" and dropped[0][1] == "0"
    kept, dropped = near_dedup(kept, threshold=0.8)
    assert [e["id"] for e in kept] == ["0", "3"] and [(d["id"], k) for d, k in dropped] == [("2", "0")]
    kept, dropped = near_dedup(examples[2:], threshold=1.0)
    assert len(kept) == 2


def test_near_dedup_in_prepare(tmp_path, model):
    story = "It is a long established fact that a reader will be distracted by the readable content of a page when looking at its layout, so we keep it plain."
    rows = [{**r, "output": f"{r['output']} {story}"} for r in alpaca_rows(20)]
    rows += [{**r, "output": r["output"].replace("plain.", "simple.")} for r in rows[:5]]
    src = write(tmp_path / "n.json", rows)
    near = prepare_data(cfg(src, dedup="near", near_dup_threshold=0.7), tmp_path / "near", model, 512)
    exact = prepare_data(cfg(src, dedup="exact"), tmp_path / "exact", model, 512)
    assert near["drops"]["near_duplicate"]["count"] == 5 and sum(near["counts"].values()) == 20
    assert "near_duplicate" not in exact["drops"] and sum(exact["counts"].values()) == 25


def test_test_data_never_reaches_training(tmp_path, model):
    # dedup off and every example twice: the copies of test examples must leave training
    rows = alpaca_rows(20) * 2
    src = write(tmp_path / "twice.json", rows)
    card = prepare_data(cfg(src, dedup="none", test_size=4, validation_size=2), tmp_path / "out", model, 512)
    train, test = read_split(tmp_path / "out", "train"), read_split(tmp_path / "out", "test")
    check_no_overlap(train, test)
    assert card["drops"]["overlaps_test"]["count"] >= 1
    assert not {content_hash(e) for e in train} & {content_hash(e) for e in test}
    with pytest.raises(TunelabError, match="1 held-out test examples also occur in the training data"):
        check_no_overlap(train + test[:1], test)


def test_eval_source_becomes_test_split(tmp_path, model):
    rows = alpaca_rows(30)
    src = write(tmp_path / "train.json", rows)
    held = write(tmp_path / "held.json", rows[:3] + alpaca_rows(5, prefix="Held out: "))
    card = prepare_data(cfg(src, eval_source=DataSource(path=held), validation_fraction=0.1), tmp_path / "out", model, 512)
    assert card["counts"]["test"] == 8
    assert card["drops"]["overlaps_test"]["count"] == 3
    assert card["counts"]["train"] + card["counts"]["validation"] == 27
    assert all(e["source"].startswith("held.json:") for e in read_split(tmp_path / "out", "test"))
    assert card["sources"][1]["eval"] is True


def test_training_filters_leave_the_eval_source_whole(tmp_path, model):
    """Length and quality filters choose training data; the held-out set a change is measured on stays as it is."""
    short = [{"instruction": f"Say {i}.", "input": "", "output": "Ok."} for i in range(20)]
    long = [{"instruction": f"Tell me a story number {i}.", "input": "", "output": "Once upon a time " * 10} for i in range(20)]
    src = write(tmp_path / "train.json", short + long)
    held = write(tmp_path / "held.json", [{"instruction": f"Hi {i}.", "input": "", "output": "Ok."} for i in range(5)])
    card = prepare_data(
        cfg(src, eval_source=DataSource(path=held), validation_size=0, min_tokens=40, quality_filter=True), tmp_path / "out", model, 512
    )
    assert card["drops"]["too_short"]["count"] == 20 and card["counts"]["train"] == 20  # the short training pairs left
    assert card["counts"]["test"] == 5  # the short held-out examples stayed


def test_mixing_by_weight_and_caps(tmp_path, model):
    a = write(tmp_path / "a.json", alpaca_rows(20))
    b = write(tmp_path / "b.json", alpaca_rows(20, prefix="Other: "))
    kw = dict(test_size=0, validation_size=0, dedup="exact")
    card = prepare_data(cfg(DataSource(path=a, weight=2), DataSource(path=b, weight=0.5), **kw), tmp_path / "w", model, 512)
    assert [s["train"] for s in card["sources"]] == [40, 10] and card["counts"]["train"] == 50
    card = prepare_data(cfg(DataSource(path=a, max_examples=5), b, **kw), tmp_path / "m", model, 512)
    assert [s["train"] for s in card["sources"]] == [5, 20]
    card = prepare_data(cfg(a, b, max_examples=12, **kw), tmp_path / "t", model, 512)
    assert card["counts"]["train"] == 12 and card["drops"]["max_examples"]["count"] == 28
    ones = mix_by_weight([[{"id": "x"}], [{"id": "y"}]], [1.0, 1.0], seed=0)
    assert ones == [{"id": "x"}, {"id": "y"}]


def test_failure_midway_leaves_nothing(tmp_path, model, monkeypatch):
    good = write(tmp_path / "good.json", alpaca_rows(20))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "q", "output": "a"},')
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        prepare_data(cfg(good, bad), tmp_path / "out", model, 512)
    assert not (tmp_path / "out").exists()

    import tunelab.data.prepare as prep

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(prep, "write_card", broken)
    with pytest.raises(OSError, match="disk full"):
        prepare_data(cfg(good), tmp_path / "out", model, 512)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "good.json"]  # no temp folder left either
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "train.jsonl").write_text("old\n")
    with pytest.raises(OSError, match="disk full"):
        prepare_data(cfg(good), previous, model, 512)
    assert [p.name for p in previous.iterdir()] == ["train.jsonl"] and (previous / "train.jsonl").read_text() == "old\n"


def test_cli_prepares_identity_with_placeholders(tmp_path, model, shared_data):
    from typer.testing import CliRunner

    from tunelab.cli import app

    out = tmp_path / "identity"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "prepare",
            str(shared_data / "identity.json"),
            "--placeholder",
            "name=Ada",
            "--placeholder",
            "author=Lab",
            "--out",
            str(out),
            "--model",
            model,
        ],
    )
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert sum(card["counts"].values()) + card["dropped_total"] == 91
    assert "{{name}}" not in (out / "train.jsonl").read_text() and "Ada" in (out / "train.jsonl").read_text()
    bad = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o"), "--model", model])
    # Rich wraps the message at the terminal's width, anywhere in a long temporary path: compare without whitespace
    assert bad.exit_code == 2 and "missing.json:filenotfound" in "".join(bad.output.split())


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARED_FILES)
def test_cli_prepares_every_shared_file(tmp_path, shared_data, name):
    """The documented command, as a user types it, on each real file (default model's tokenizer)."""
    from typer.testing import CliRunner

    from tunelab.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["data", "prepare", str(shared_data / name), "--placeholder", "name=Ada", "--placeholder", "author=Lab", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    records = len(json.loads((shared_data / name).read_text()))
    assert sum(card["counts"].values()) + card["dropped_total"] == records
    assert card["counts"]["test"] > 0 and card["counts"]["train"] > 0.8 * (records - card["dropped_total"])
    check_no_overlap(read_split(out, "train"), read_split(out, "test"))


def test_replay_share_is_that_share_of_the_training_split(tmp_path, model):
    """share 0.25: a quarter of the training split comes from the replay source, which never reaches validation or test."""
    task = write(tmp_path / "task.json", alpaca_rows(40))
    general = write(tmp_path / "general.json", alpaca_rows(60, prefix="General: "))
    kw = dict(test_size=4, validation_size=6, dedup="exact")

    def split_by_source(card_out):
        train = read_split(card_out, "train")
        return [e for e in train if e["source"].startswith("general.json")], [e for e in train if e["source"].startswith("task.json")]

    plain = prepare_data(cfg(task, **kw), tmp_path / "plain", model, 512)
    card = prepare_data(cfg(task, DataSource(path=general, share=0.25), **kw), tmp_path / "replay", model, 512)
    replay, own = split_by_source(tmp_path / "replay")
    assert len(own) == plain["counts"]["train"] == 30 and len(replay) == 10 and card["counts"]["train"] == 40
    assert len(replay) / card["counts"]["train"] == 0.25 and card["sources"][1]["share"] == 0.25
    assert len({e["id"] for e in replay}) == 10  # sampled without repeats: the source has enough
    # validation and test come from the task data alone, the same with and without replay
    for name in ("validation", "test"):
        assert read_split(tmp_path / "replay", name) == read_split(tmp_path / "plain", name)
    assert "(replay, share 0.25)" in (tmp_path / "replay" / "card.md").read_text()

    # max_examples counts the whole split: 20 = 15 task + 5 replay
    card = prepare_data(cfg(task, DataSource(path=general, share=0.25), max_examples=20, **kw), tmp_path / "capped", model, 512)
    replay, own = split_by_source(tmp_path / "capped")
    assert (len(own), len(replay)) == (15, 5) and card["drops"]["max_examples"]["count"] == 15

    # a replay source smaller than its share repeats its examples; share 0 reads it and trains on none of it
    small = write(tmp_path / "small.json", alpaca_rows(4, prefix="Small: "))
    prepare_data(cfg(task, DataSource(path=small, share=0.5), **kw), tmp_path / "repeat", model, 512)
    train = read_split(tmp_path / "repeat", "train")
    repeated = [e for e in train if e["source"].startswith("small.json")]
    assert len(repeated) == 30 == len(train) / 2 and len({e["id"].split("~rep")[0] for e in repeated}) == 4
    card = prepare_data(cfg(task, DataSource(path=general, share=0.0), **kw), tmp_path / "zero", model, 512)
    assert card["counts"]["train"] == 30 and read_split(tmp_path / "zero", "train") == read_split(tmp_path / "plain", "train")
