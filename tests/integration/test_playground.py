"""The playground page in headless Chromium (Debian's `chromium`): pick a task, type an input, click Run, and
the answer streams into the page; a screenshot of each stays in build/test-output/."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from softprompt.data import Example
from softprompt.models import load_model
from softprompt.serve import Server

import _serving

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUTPUT = Path(__file__).resolve().parents[2] / "build" / "test-output"
"""Where the screenshots stay after the run (pytest's own temporary folders are pruned by later runs)."""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=900,900"]


class Page:
    """The Chrome DevTools Protocol over the page's websocket: commands and their answers, nothing else."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    def send(self, method: str, **params) -> dict:
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never got to: {expression}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({selector!r}).focus()")
        self.evaluate(f"document.querySelector({selector!r}).select && document.querySelector({selector!r}).select()")
        self.send("Input.insertText", text=text)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))


@contextlib.contextmanager
def browsing(url: str, profile: Path) -> Iterator[Page]:
    """Headless Chromium showing `url`, driven through its DevTools socket; closed on exit."""
    from websockets.sync.client import connect

    port = _serving.free_port()
    browser = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        pages = []
        while not pages:
            if browser.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not open the page")
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as reply:
                    pages = [t for t in json.load(reply) if t["type"] == "page" and t["url"].startswith(url)]
            except OSError:  # the DevTools port is not open yet
                pass
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=2**26, open_timeout=30) as socket:
            yield Page(socket)
    finally:
        browser.terminate()
        browser.wait(30)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; `make test` does)")
def test_the_playground_streams_an_answer_and_shows_a_classification(tmp_path: Path) -> None:
    model, runs = _serving.gpt2_runs(tmp_path / "runs")
    base, tokenizer = load_model(str(model))
    server = Server(base, tokenizer, "gpt2")
    for name in ("e2e", "sentiment"):
        server.add(name, runs[name])
    collator = _serving.run_collator(runs["e2e"])
    candidates = ["name : acme | food : good", "the movie was very bad", "john lives in paris", "a place", "great film"]
    # An input whose answer is several words long, so that it arrives in several pieces.
    text, answer = next((t, a) for t in candidates
                        if len((a := collator.predict([Example(text=t)], max_new_tokens=64)[0]).split()) >= 3)
    label = _serving.run_collator(runs["sentiment"]).predict([Example(text="the movie was good")])[0]
    with _serving.serving(server) as url:
        with browsing(url + "/", tmp_path / "profile") as page:
            page.send("Runtime.enable")
            page.wait("document.querySelectorAll('#model option').length === 3")
            assert page.evaluate("[...document.querySelectorAll('#model option')].map(o => o.value)") == [
                "gpt2", "e2e", "sentiment"]

            page.evaluate("(() => { const s = document.getElementById('model'); s.value = 'e2e';"
                          " s.dispatchEvent(new Event('change')); })()")
            page.type("#input", text)
            page.evaluate("window.pieces = 0; new MutationObserver((records) => { window.pieces += records.length; }).observe("
                          "document.getElementById('output'), {childList: true, characterData: true, subtree: true})")
            page.click("#run")
            page.wait("document.getElementById('status').dataset.state === 'done'")
            assert page.evaluate("document.getElementById('output').textContent") == answer
            assert page.evaluate("window.pieces") >= len(answer.split())  # a piece per word, as they arrive
            assert page.evaluate("document.getElementById('status').textContent").startswith("done: ")
            OUTPUT.mkdir(parents=True, exist_ok=True)
            first = OUTPUT / "playground-completion.png"
            page.screenshot(first)

            page.evaluate("(() => { const s = document.getElementById('model'); s.value = 'sentiment';"
                          " s.dispatchEvent(new Event('change')); })()")
            page.type("#input", "the movie was good")
            page.click("#run")
            page.wait("document.getElementById('status').textContent.startsWith('done: ') && "
                      "document.querySelectorAll('#output tr').length === 2")
            assert page.evaluate("document.getElementById('status').textContent") == f"done: {label}"
            second = OUTPUT / "playground-classify.png"
            page.screenshot(second)
    for shot in (first, second):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
        print(f"screenshot: {shot}")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; `make test` does)")
def test_the_playground_asks_for_the_key_of_a_guarded_server(tmp_path: Path) -> None:
    model, runs = _serving.gpt2_runs(tmp_path / "runs")
    base, tokenizer = load_model(str(model))
    server = Server(base, tokenizer, "gpt2", api_key="s3cret")
    server.add("e2e", runs["e2e"])
    answer = _serving.run_collator(runs["e2e"]).predict([Example(text="a place")], max_new_tokens=64)[0]
    with _serving.serving(server) as url:
        with browsing(url + "/", tmp_path / "profile") as page:
            page.wait("(document.getElementById('status') || {dataset: {}}).dataset.state === 'error'")
            assert "API key" in page.evaluate("document.getElementById('status').textContent")
            page.type("#key", "s3cret")
            page.type("#input", "a place")  # leaving the key's field reloads the tasks with the key
            page.wait("document.querySelectorAll('#model option').length === 2")
            page.evaluate("(() => { const s = document.getElementById('model'); s.value = 'e2e';"
                          " s.dispatchEvent(new Event('change')); })()")
            # The key edited again: the tasks reload, and e2e stays picked.
            page.evaluate("document.getElementById('status').textContent = ''")
            page.evaluate("document.getElementById('key').dispatchEvent(new Event('change'))")
            page.wait("document.getElementById('status').textContent === 'ready'")
            assert page.evaluate("document.getElementById('model').value") == "e2e"
            page.click("#run")
            page.wait("document.getElementById('status').dataset.state === 'done'")
            assert page.evaluate("document.getElementById('output').textContent") == answer
            assert page.evaluate("document.getElementById('model').value") == "e2e"
            OUTPUT.mkdir(parents=True, exist_ok=True)
            page.screenshot(OUTPUT / "playground-key.png")
