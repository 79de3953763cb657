"""A real browser (headless Debian chromium) loads the chat UI, sends a message, sees the
streamed answer and saves a screenshot. Skipped when no chromium is installed."""
from __future__ import annotations

import pytest

from tunelab.serve.browser import chat_in_browser, find_chromium
from tunelab.serve.generation import ServeLimits
from tunelab.serve.registry import build_registry
from tunelab.serve.run import ServerThread, build_app

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")


def test_browser_chat_shows_streamed_answer(tiny_model_dir, tmp_path):
    registry = build_registry([str(tiny_model_dir)], runs=None)
    app = build_app(registry, ServeLimits(max_tokens=24), ui=True)  # the slider's default is then 24 tokens
    shot = tmp_path / "chat.png"
    with ServerThread(app) as url:
        answer = chat_in_browser(f"{url}/", "Hello from the browser test", shot, timeout=120)
    assert answer.strip(), "no answer rendered in the chat"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # the model really produced the text shown: generation ran on the tiny model
    assert registry.loaded() == [tiny_model_dir.name.lower()]
