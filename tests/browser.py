"""Drive Debian's headless chromium with Playwright: the browser test's helpers, and the script
that takes the screenshots in docs/ (Playwright's own browser download cannot work offline, so
it launches the system chromium with a fresh profile):

    python tests/browser.py runs/identity-demo --runs runs/identity-demo --message "Who are you?" \\
        --chat-out docs/screenshot-chat.png --compare-out docs/screenshot-side-by-side.png \\
        --evaluate-out docs/screenshot-evaluate.png --rater alice
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

# ENVIRONMENT-NOTES.md: the flags Debian's chromium renders a Gradio page with, headless, here
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
# Gradio 6's ChatInterface: its textbox has data-testid "textbox", bot messages "bot", and the
# stop button shows while an answer streams.
CHAT_BOX = 'textarea[data-testid="textbox"]'
BOT = '[data-testid="bot"]'
STOP = '[data-testid="stop-button"]'


def find_chromium() -> str | None:
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        path = shutil.which(name)
        if path:
            return path
    return None


@contextlib.contextmanager
def open_page(url: str, width: int = 1280, height: int = 860) -> Iterator[Page]:
    """A page of a fresh headless chromium (its own temporary profile) showing `url`, loaded."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError("no chromium binary found (Debian: apt-get install chromium)")
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="tunelab-chromium-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=binary, headless=True, args=CHROMIUM_FLAGS, viewport={"width": width, "height": height}
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(90_000)
            page.goto(url)
            page.locator(CHAT_BOX).first.wait_for(state="visible")
            yield page
        finally:
            context.close()


def wait_until_stable(read, seconds: float = 3.0, timeout: float = 300) -> object:
    """Poll `read()` until its value has not changed for `seconds` (a stream that ended)."""
    last, since, deadline = read(), time.time(), time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.3)
        now = read()
        if now != last:
            last, since = now, time.time()
        elif time.time() - since > seconds:
            return last
    raise TimeoutError(f"still changing after {timeout} s")


def chat(page: Page, message: str, timeout: float = 300) -> str:
    """Send one chat message and wait for the whole streamed answer; returns its text."""
    page.get_by_role("tab", name="Chat").click()
    box = page.locator(CHAT_BOX).first
    box.fill(message)
    box.press("Enter")
    page.locator(BOT).first.wait_for(state="visible", timeout=timeout * 1000)
    expect(page.locator(STOP)).to_have_count(0, timeout=timeout * 1000)  # the stop button goes when the answer ends
    return wait_until_stable(lambda: page.locator(BOT).last.inner_text(), seconds=1.0)


def side_by_side(page: Page, prompt: str, timeout: float = 300) -> tuple[str, str]:
    page.get_by_role("tab", name="Side by side").click()
    page.get_by_placeholder("One prompt, sent to both models").fill(prompt)
    page.get_by_role("button", name="Send to both").click()
    answers = lambda: (page.get_by_label("Left answer").input_value(), page.get_by_label("Right answer").input_value())  # noqa: E731
    deadline = time.time() + timeout
    while not all(a.strip() for a in answers()):
        if time.time() > deadline:
            raise TimeoutError("the side-by-side answers did not arrive")
        time.sleep(0.3)
    return wait_until_stable(answers)


def evaluate_answers(page: Page, rater: str, prompt: str | None = None, timeout: float = 600) -> tuple[str, str]:
    """In the Evaluate tab: the next held-out prompt (or `prompt`), both answers; returns (A, B)."""
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#evaluate-rater textarea, #evaluate-rater input").first.fill(rater)
    box = page.locator("#evaluate-prompt textarea")
    if prompt is None:
        page.get_by_role("button", name="Next held-out prompt").click()
        expect(box).not_to_have_value("")
    else:
        box.fill(prompt)
    page.get_by_role("button", name="Get both answers").click()
    expect(page.get_by_role("button", name="A is better")).to_be_enabled(timeout=timeout * 1000)
    return page.locator("#evaluate-answer-a textarea").input_value(), page.locator("#evaluate-answer-b textarea").input_value()


def vote(page: Page, choice: str) -> str:
    """Click a vote button ("A is better", "B is better", "tie", "both are bad"); returns the reveal."""
    page.get_by_role("button", name=choice, exact=True).click()
    reveal = page.locator("#evaluate-reveal")
    expect(reveal).to_contain_text("was")
    return reveal.inner_text()


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tunelab.runs import DEFAULT_RUNS_DIR
    from tunelab.serve.generation import ServeLimits
    from tunelab.serve.registry import build_registry
    from tunelab.serve.run import ServerThread, build_app

    parser = argparse.ArgumentParser(description="Serve models, use the UI in headless chromium, save screenshots.")
    parser.add_argument("models", nargs="*")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS_DIR)
    parser.add_argument("--message", default="What is the capital of France?")
    parser.add_argument("--chat-out", type=Path, default=None)
    parser.add_argument("--compare-out", type=Path, default=None)
    parser.add_argument("--compare-message", default=None, help="Prompt for the side-by-side tab (default: --message)")
    parser.add_argument("--evaluate-out", type=Path, default=None, help="Screenshot of the Evaluate tab after one vote")
    parser.add_argument("--rater", default="screenshot")
    parser.add_argument("--vote", default="A is better")
    parser.add_argument("--max-tokens", type=int, default=128, help="The UI's max-new-tokens cap (and default)")
    args = parser.parse_args(argv)
    registry = build_registry(args.models, runs=args.runs)
    with ServerThread(build_app(registry, ServeLimits(max_tokens=args.max_tokens), ui=True)) as url, open_page(url + "/") as page:
        if args.chat_out:
            print("chat:", chat(page, args.message))
            page.screenshot(path=args.chat_out)
        if args.compare_out:
            print("side by side:", side_by_side(page, args.compare_message or args.message))
            page.screenshot(path=args.compare_out)
        if args.evaluate_out:
            print("evaluate:", evaluate_answers(page, args.rater))
            print(vote(page, args.vote))
            page.screenshot(path=args.evaluate_out, full_page=True)


if __name__ == "__main__":
    main()
