"""A real browser (Debian's headless chromium, driven by Playwright) uses the UI: it chats and
sees the streamed answer, then casts a blind vote in the Evaluate tab, which the test reads back
from the run's eval/human_votes.jsonl. Skipped when no chromium is installed, except where
TUNELAB_REQUIRE_BROWSER=1 (CI: .ci/run installs chromium and sets it), where that fails."""

from __future__ import annotations

import os

import pytest
from browser import chat, evaluate_answers, find_chromium, open_page, vote
from conftest import QA
from test_serve import make_run
from test_serve_evaluate import write_test_split

from tunelab.evaluate.human import read_votes
from tunelab.runs import RunDir
from tunelab.serve.generation import ServeLimits
from tunelab.serve.registry import build_registry
from tunelab.serve.run import ServerThread, build_app

if find_chromium() is None:
    if os.environ.get("TUNELAB_REQUIRE_BROWSER") == "1":
        raise RuntimeError("TUNELAB_REQUIRE_BROWSER=1 but no chromium is installed (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)


def test_browser_chats_and_casts_a_blind_vote(tiny_model_dir, tmp_path):
    run = make_run(tmp_path / "runs", "demo", tiny_model_dir, merged=False)
    write_test_split(run)
    registry = build_registry([str(run), str(tiny_model_dir)], runs=None)
    app = build_app(registry, ServeLimits(max_tokens=24), ui=True)  # the slider's default is then 24 tokens
    shot = tmp_path / "evaluate.png"
    with ServerThread(app) as url, open_page(f"{url}/") as page:
        answer = chat(page, "Hello from the browser test")
        answer_a, answer_b = evaluate_answers(page, "browser-rater")
        assert "demo" not in page.locator("#evaluate-reveal").inner_text()  # no names before the vote
        reveal = vote(page, "B is better")
        page.screenshot(path=shot)
    assert answer.strip(), "no answer rendered in the chat"
    assert answer_a.strip() and answer_b.strip()
    (saved,) = read_votes(RunDir(run).human_votes)
    assert saved["vote"] == "B" and saved["rater"] == "browser-rater"
    assert (saved["answer_a"], saved["answer_b"]) == (answer_a, answer_b)  # what the page showed
    assert saved["prompt"][-1]["content"] == QA[0][0] and saved["reference"] == QA[0][1]
    assert f"A was {saved['model_a']}, B was {saved['model_b']}" in reveal
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # the models really generated the text shown: both were loaded
    assert set(registry.loaded()) >= {"demo", tiny_model_dir.name.lower()}
