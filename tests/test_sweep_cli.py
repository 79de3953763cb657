"""`tunelab sweep` from the command line: a failing variant does not lose the others' results,
`--shard i/n` splits the runs between workers, `--only` picks variants, bad values are clear errors."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from bench.tiny import write_sweep
from tunelab.cli import app
from tunelab.compare.store import ResultsStore
from tunelab.compare.sweep import store_path

VARIANTS = [
    {"name": "baseline"},
    {"name": "rank-4", "set": {"rank": 4}},
    {"name": "broken", "set": {"target_modules": ["c_attn"]}},  # no such module in a Llama: fails when training starts
]


def statuses(sweep_dir) -> dict[str, tuple[str, str | None]]:
    with ResultsStore(store_path(sweep_dir)) as store:
        return {r["variant"]: (r["status"], r["error"]) for r in store.runs()}


@pytest.fixture
def trained(monkeypatch):
    """The names of the recipes trained in this test (train_recipe spied on, still run)."""
    import tunelab.compare.sweep as sweep_stage

    names: list[str] = []
    real = sweep_stage.train_recipe

    def spy(recipe, resume=False):
        names.append(recipe.name.split("-s")[0])
        return real(recipe, resume=resume)

    monkeypatch.setattr(sweep_stage, "train_recipe", spy)
    return names


def test_failing_variant_shards_and_only(tmp_path, tiny_model_dir, trained):
    path = write_sweep(tmp_path, tiny_model_dir, variants=VARIANTS)
    sweep_dir = tmp_path / "sweeps" / "tiny"
    cli = CliRunner()

    unknown = cli.invoke(app, ["sweep", str(path), "--only", "nope"])
    assert unknown.exit_code == 2 and "no variant named nope" in unknown.output
    for bad in ("2/2", "1", "a/b", "-1/2", "0/0"):
        refused = cli.invoke(app, ["sweep", str(path), "--shard", bad])
        assert refused.exit_code == 2 and "--shard" in refused.output and "INDEX/COUNT" in refused.output, (bad, refused.output)
    assert trained == []

    # --only: the reference row and that variant, nothing else
    only = cli.invoke(app, ["sweep", str(path), "--only", "rank-4"])
    assert only.exit_code == 0, only.output
    assert trained == ["rank-4"]
    done = statuses(sweep_dir)
    assert done["rank-4"][0] == "done" and "baseline" not in done and "broken" not in done

    # --shard 1/2 of [reference, baseline, rank-4, broken]: baseline and broken; broken fails, baseline is kept
    shard = cli.invoke(app, ["sweep", str(path), "--shard", "1/2"])
    assert shard.exit_code == 2 and "1 run(s) failed" in shard.output and "broken" in shard.output, shard.output
    assert "Traceback" not in shard.output
    assert trained == ["rank-4", "baseline", "broken"]
    done = statuses(sweep_dir)
    assert done["baseline"][0] == "done" and done["broken"][0] == "failed" and "c_attn" in done["broken"][1], done

    # --shard 0/2: the reference and rank-4, both already done
    other = cli.invoke(app, ["sweep", str(path), "--shard", "0/2"])
    assert other.exit_code == 0 and "already in the store" in other.output, other.output

    # the whole sweep again: only the failed variant is tried again; fixed, it completes
    again = cli.invoke(app, ["sweep", str(path)])
    assert again.exit_code == 2 and trained[3:] == ["broken"]
    spec = yaml.safe_load(path.read_text())
    spec["variants"][2]["set"] = {"target_modules": ["q_proj"]}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    fixed = cli.invoke(app, ["sweep", str(path)])
    assert fixed.exit_code == 0, fixed.output
    with ResultsStore(store_path(sweep_dir)) as store:
        rows = [(r["variant"], r["status"]) for r in store.runs(kind="variant")]
    assert ("broken", "done") in rows and ("baseline", "done") in rows and ("rank-4", "done") in rows, rows
    assert trained.count("baseline") == 1 and trained.count("rank-4") == 1  # finished variants were never trained again
