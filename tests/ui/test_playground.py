"""The playground page in a real browser (Playwright driving Debian's chromium) against a real server with two
served model names: key handling, a streamed answer equal to the API's greedy answer, stop, side by side,
hostile model output shown as text, and no request to any other host."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from chatmodel_serving.launch import ServerProcess
from tests.tools import missing, need_binary

KEY = "ui-test-key-42"
QUESTION = "What is the capital of France?"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("ui")
    keys = d / "keys"
    keys.write_text(KEY + "\n")
    model = "builtin://smollm2-135m"
    args = ["--dtype", "float32", "--api-keys-file", str(keys), "--model", model, "--served-model-name",
            "base", "--model", model, "--served-model-name", "tuned"]  # fmt: skip
    with ServerProcess(args, log_path=d / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = need_binary("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright", "make install")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    # The page's Content-Security-Policy forbids eval, which Playwright's wait_for_function uses: bypass it
    # here (the renderer must be safe on its own) and check the header separately.
    context = browser.new_context(bypass_csp=True)
    pg = context.new_page()
    pg.requests = []  # type: ignore[attr-defined]
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.goto(server.base + "/")
    yield pg
    context.close()


def use_key(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#key-form button")


def answers(page: Any) -> list[Any]:
    return page.query_selector_all(".turn.answer")


def greedy(server: ServerProcess, model: str, max_tokens: int) -> str:
    client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=300)
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=max_tokens
    )
    return r.choices[0].message.content or ""


def test_no_key_or_wrong_key_says_so_plainly(page: Any) -> None:
    page.wait_for_function("document.getElementById('status').textContent.length > 0")
    assert "Wrong or missing API key" in page.inner_text("#status")
    use_key(page, "not-the-key")
    page.wait_for_function("document.getElementById('status').textContent.includes('Wrong or missing')")
    use_key(page, KEY)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Connected')")
    assert page.eval_on_selector_all("#model-a option", "os => os.map(o => o.value)") == ["base", "tuned"]


def test_streams_an_answer_equal_to_the_apis_greedy_answer(page: Any, server: ServerProcess) -> None:
    use_key(page, KEY)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Connected')")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "32")
    page.fill("#prompt", QUESTION)
    page.click("#send")
    seen: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = page.evaluate("(document.querySelector('.turn.answer') || {dataset: {}}).dataset.text || ''")
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        if page.evaluate("(document.querySelector('.turn.answer') || {dataset: {}}).dataset.done") == "true":
            break
        time.sleep(0.02)
    final = page.evaluate("document.querySelector('.turn.answer').dataset.text")
    assert len([s for s in seen if s != final]) >= 2, seen  # it grew while streaming
    assert all(final.startswith(s) for s in seen)
    assert final == greedy(server, "base", 32)
    assert "TTFT" in page.inner_text(".stats") and "tok/s" in page.inner_text(".stats")
    shot = Path(os.environ.get("CHATMODEL_UI_SCREENSHOT", server.log_path.parent / "playground.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert origins(page) == {server.base}


def test_stop_aborts_an_answer_midway(page: Any) -> None:
    use_key(page, KEY)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Connected')")
    page.fill("#max-tokens", "400")
    page.fill("#prompt", "Write a long story about a lighthouse keeper.")
    page.click("#send")
    page.wait_for_function("(document.querySelector('.turn.answer') || {dataset: {}}).dataset.text")
    page.click("#stop")
    page.wait_for_function("document.querySelector('.turn.answer').dataset.done === 'stopped'")
    stopped = page.evaluate("document.querySelector('.turn.answer').dataset.text")
    time.sleep(1.0)
    assert page.evaluate("document.querySelector('.turn.answer').dataset.text") == stopped  # no more text
    assert page.is_enabled("#send")


def test_two_models_side_by_side(page: Any, server: ServerProcess) -> None:
    use_key(page, KEY)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Connected')")
    page.check("#compare")
    page.select_option("#model-b", "tuned")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "16")
    page.fill("#prompt", QUESTION)
    page.click("#send")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.turn.answer')).filter(a => a.dataset.done === 'true')"
        ".length === 2",
        timeout=300_000,
    )
    titles = page.eval_on_selector_all(".column h2", "hs => hs.map(h => h.textContent)")
    assert titles == ["base", "tuned"]
    texts = [a.get_attribute("data-text") for a in answers(page)]
    assert all(texts) and texts[0] == greedy(server, "base", 16)
    if os.environ.get("CHATMODEL_UPDATE_SCREENSHOT") == "1":  # the README's picture
        page.screenshot(path=str(ROOT / "docs" / "img" / "playground.png"))
    assert origins(page) == {server.base}


def test_hostile_model_output_stays_text(page: Any) -> None:
    hostile = (
        '<script>window.pwned = 1</script> <img src=x onerror="window.pwned = 2"> '
        "**bold** [x](javascript:alert(1))"
    )
    html = page.evaluate(
        """text => { const d = document.createElement('div'); d.appendChild(window.chatmodelRender(text));
                     document.body.appendChild(d); return d.innerHTML; }""",
        hostile,
    )
    time.sleep(0.3)
    assert page.evaluate("window.pwned") is None
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
    assert "<strong>bold</strong>" in html and "javascript:" not in page.evaluate(
        "Array.from(document.querySelectorAll('a')).map(a => a.href).join(' ')"
    )


def test_page_is_served_with_a_strict_policy_and_can_be_switched_off(server: ServerProcess, tmp_path) -> None:
    r = httpx.get(server.base + "/")
    assert r.status_code == 200 and "chatmodel playground" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    assert httpx.get(server.base + "/ui/../api.py").status_code == 404
    assert httpx.get(server.url + "/models").status_code == 401  # the page opens no way around the keys
    with ServerProcess(["--dtype", "float32", "--no-ui"], log_path=tmp_path / "no-ui.log") as srv:
        assert httpx.get(srv.base + "/").status_code == 404


def origins(page: Any) -> set[str]:
    return {f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for u in page.requests}
