"""Drive a real headless Chromium over the DevTools protocol (through a pipe, no extra package):
open the chat UI, type a message, wait for the streamed answer, save a screenshot.

Used by the browser test and to make the screenshot in docs/:

    python -m tunelab.serve.browser runs/demo --message "..." --out docs/screenshot-chat.png
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """`with Chromium() as browser: page = browser.open(url)`; messages are JSON ending in NUL on fds 3/4."""

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 860):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise RuntimeError("no chromium binary found (Debian: apt-get install chromium)")
        self.width, self.height = width, height
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()

    def __enter__(self) -> "Chromium":
        self.profile = tempfile.mkdtemp(prefix="tunelab-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # move the child's ends above 100 so the shell's "3<&N 4>&M" cannot clobber one with the other
        to_browser_r, from_browser_w = (self._high_fd(fd) for fd in (to_browser_r, from_browser_w))
        # Chromium reads commands on fd 3 and writes replies on fd 4; bash (dash allows only fds < 10) puts the pipes there.
        cmd = ["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "bash", self.binary, *CHROMIUM_FLAGS,
               f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}", "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    @staticmethod
    def _high_fd(fd: int) -> int:
        import fcntl

        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(fd)
        return high

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._from_browser, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._replies[-1] = {"error": {"message": "chromium closed the pipe"}}
                    self._cond.notify_all()
                return
            buffer += data
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        with self._cond:
            self._next_id += 1
            msg_id = self._next_id
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        with self._cond:
            while msg_id not in self._replies and -1 not in self._replies:
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
                self._cond.wait(left)
            reply = self._replies.pop(msg_id, None) or self._replies[-1]
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def open(self, url: str) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        page.call("Page.enable")
        page.call("Page.navigate", {"url": url})
        return page


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def call(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"javascript failed: {result['exceptionDetails'].get('text')} in {expression[:80]}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.25):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"waited {timeout} s for: {expression}")

    def type_text(self, text: str) -> None:
        self.call("Input.insertText", {"text": text})

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13, **({"text": "\r"} if kind == "keyDown" else {})})

    def screenshot(self, out: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(base64.b64decode(data))
        os.replace(tmp, out)
        return out


# Gradio 6's ChatInterface: its textbox is the first textarea with data-testid "textbox", bot
# messages carry data-testid "bot", and the stop button shows while an answer streams.
CHAT_BOX = "document.querySelector('textarea[data-testid=\"textbox\"]')"
BOT_TEXT = "Array.from(document.querySelectorAll('[data-testid=\"bot\"]')).map(e => e.innerText).join('\\n')"
STREAMING = "Array.from(document.querySelectorAll('[data-testid=\"stop-button\"]')).some(b => b.offsetParent !== null)"


def chat_in_browser(url: str, message: str, screenshot: Path | None = None, *, timeout: float = 180, click_tab: str | None = None) -> str:
    """Open the UI, send `message`, wait for the whole answer, save a screenshot; returns the answer text."""
    with Chromium() as browser:
        page = browser.open(url)
        page.wait_for(f"document.readyState === 'complete' && !!{CHAT_BOX}", timeout=90)
        page.js(f"{CHAT_BOX}.focus()")
        page.type_text(message)
        page.press_enter()
        page.wait_for(f"{STREAMING} || ({BOT_TEXT}).trim().length > 0", timeout=60)
        page.wait_for(f"!{STREAMING}", timeout=timeout)
        time.sleep(0.5)  # let the last update render
        answer = page.js(BOT_TEXT)
        if screenshot:
            page.screenshot(screenshot)
        return answer or ""


def compare_in_browser(url: str, prompt: str, screenshot: Path, *, timeout: float = 300) -> tuple[str, str]:
    """Open the side-by-side tab, send one prompt to both models, screenshot the two answers."""
    with Chromium() as browser:
        page = browser.open(url)
        page.wait_for(f"document.readyState === 'complete' && !!{CHAT_BOX}", timeout=90)
        page.js("Array.from(document.querySelectorAll('button[role=tab]')).find(b => b.innerText.trim() === 'Side by side').click()")
        box = "Array.from(document.querySelectorAll('textarea')).find(t => t.placeholder.startsWith('One prompt') && t.offsetParent !== null)"
        page.wait_for(f"!!({box})", timeout=30)
        page.js(f"({box}).focus()")
        page.type_text(prompt)
        page.js("Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Send to both').click()")
        answers = "Array.from(document.querySelectorAll('textarea')).filter(t => t.offsetParent !== null && t.closest('label') && /answer/.test(t.closest('label').innerText)).map(t => t.value)"
        page.wait_for(f"({answers}).length === 2 && ({answers}).every(v => v.trim().length > 0)", timeout=timeout)
        last, stable_since = None, time.time()
        deadline = time.time() + timeout
        while time.time() < deadline:  # done when both answers stop changing
            now = page.js(answers)
            if now != last:
                last, stable_since = now, time.time()
            elif time.time() - stable_since > 3:
                break
            time.sleep(0.3)
        page.screenshot(screenshot)
        return tuple(last)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from tunelab.serve.generation import ServeLimits
    from tunelab.serve.registry import build_registry
    from tunelab.serve.run import ServerThread, build_app

    parser = argparse.ArgumentParser(description="Serve models, chat once in headless Chromium, save a screenshot.")
    parser.add_argument("models", nargs="*")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--message", default="What is the capital of France?")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot-chat.png"))
    parser.add_argument("--compare-out", type=Path, default=None, help="Also screenshot the side-by-side tab here")
    parser.add_argument("--compare-message", default=None, help="Prompt for the side-by-side tab (default: --message)")
    parser.add_argument("--max-tokens", type=int, default=128, help="The UI's max-new-tokens cap (and default)")
    args = parser.parse_args(argv)
    registry = build_registry(args.models, runs=args.runs)
    with ServerThread(build_app(registry, ServeLimits(max_tokens=args.max_tokens), ui=True)) as url:
        answer = chat_in_browser(url + "/", args.message, args.out)
        print(f"answer: {answer}\nscreenshot: {args.out}")
        if args.compare_out:
            left, right = compare_in_browser(url + "/", args.compare_message or args.message, args.compare_out)
            print(f"left: {left}\nright: {right}\nscreenshot: {args.compare_out}")


if __name__ == "__main__":
    main()
