"""The playground page in a real browser (Playwright driving Debian's chromium) against a real server with two
served model names: key handling, a streamed answer equal to the API's greedy answer, stop, side by side,
hostile model output shown as text, and no request to any other host; the keys people expect of a chat page
(Enter sends, Shift+Enter adds a line, an IME composition is not cut short, Esc stops, focus back in the input
after an answer, the whole flow from the keyboard) and axe-core's accessibility rules."""

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
from tests.tools import ROOT, missing

KEY = "ui-test-key-42"
QUESTION = "What is the capital of France?"
AXE = ROOT / "tests" / "schemas" / "node_modules" / "axe-core" / "axe.min.js"  # `make install-node-tools`
CHAT = "/v1/chat/completions"
CONTROLS = {"button", "checkbox", "combobox", "spinbutton", "switch", "textbox"}


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


@pytest.fixture
def page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    # The page's Content-Security-Policy forbids eval, which Playwright's wait_for_function uses: bypass it
    # here (the renderer must be safe on its own) and check the header separately.
    context = browser.new_context(bypass_csp=True)
    pg = context.new_page()
    pg.requests = []
    pg.posts = []
    pg.on("request", lambda r: record(pg, r))
    pg.goto(server.base + "/")
    yield pg
    context.close()


def record(page: Any, request: Any) -> None:
    page.requests.append(request.url)
    if request.method == "POST":
        page.posts.append(urlsplit(request.url).path)


def use_key(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#key-form button")


def connect(page: Any) -> None:
    use_key(page, KEY)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Connected')")


def focused(page: Any) -> str:
    element_id: str = page.evaluate("document.activeElement ? document.activeElement.id : ''")
    return element_id


def tab_to(page: Any, element_id: str, key: str = "Tab", limit: int = 20) -> None:
    """Press Tab (or Shift+Tab) until the focus reaches #element_id: it is reachable from the keyboard."""
    for _ in range(limit):
        page.keyboard.press(key)
        if focused(page) == element_id:
            return
    raise AssertionError(f"#{element_id} is not reachable with {key}")


def press_to_send(page: Any, key: str = "Enter") -> None:
    """Press `key` and see the chat request leave at once (not after a click on Send)."""
    with page.expect_request(lambda r: r.method == "POST" and urlsplit(r.url).path == CHAT, timeout=10_000):
        page.keyboard.press(key)


def wait_answers(page: Any, count: int = 1, done: str = "true") -> None:
    page.wait_for_function(
        f"Array.from(document.querySelectorAll('.turn.answer')).filter(a => a.dataset.done === '{done}')"
        f".length === {count}",
        timeout=300_000,
    )


def read_stream(page: Any) -> tuple[list[str], str]:
    """Poll the first answer while it streams in: the texts seen on the way, and the final one."""
    seen: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = page.evaluate("(document.querySelector('.turn.answer') || {dataset: {}}).dataset.text || ''")
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        if page.evaluate("(document.querySelector('.turn.answer') || {dataset: {}}).dataset.done") == "true":
            break
        time.sleep(0.02)
    return seen, page.evaluate("document.querySelector('.turn.answer').dataset.text")


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (axe from npm, not a CDN)."""
    if not AXE.is_file():
        missing("axe-core", "make install-node-tools")
    if not page.evaluate("typeof window.axe === 'object'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations.map(v => ({
               id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}))"""
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


def answers(page: Any) -> list[Any]:
    turns: list[Any] = page.query_selector_all(".turn.answer")
    return turns


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
    seen, final = read_stream(page)
    assert len([s for s in seen if s != final]) >= 2, seen  # it grew while streaming
    assert all(final.startswith(s) for s in seen)
    assert final == greedy(server, "base", 32)
    assert "TTFT" in page.inner_text(".stats") and "tok/s" in page.inner_text(".stats")
    assert server.log_path is not None
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


def test_page_is_served_with_a_strict_policy_and_can_be_switched_off(
    server: ServerProcess, tmp_path: Path
) -> None:
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


def test_enter_sends_and_the_answer_streams_in(page: Any, server: ServerProcess) -> None:
    connect(page)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "16")
    page.click("#prompt")
    page.keyboard.type(QUESTION)
    press_to_send(page)  # Enter, not a click on Send
    seen, final = read_stream(page)
    assert page.posts == [CHAT]
    assert all(final.startswith(s) for s in seen) and final == greedy(server, "base", 16)
    assert page.inner_text(".turn.user") == QUESTION and page.input_value("#prompt") == ""  # no stray newline
    assert focused(page) == "prompt"


def test_shift_enter_adds_a_line_and_sends_nothing(page: Any) -> None:
    connect(page)
    page.fill("#max-tokens", "4")
    page.click("#prompt")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    time.sleep(0.5)
    assert page.input_value("#prompt") == "first line\nsecond line"
    assert page.posts == [] and answers(page) == []
    press_to_send(page)
    wait_answers(page)
    assert page.posts == [CHAT] and page.inner_text(".turn.user") == "first line\nsecond line"


def test_enter_that_ends_an_ime_composition_does_not_send(page: Any) -> None:
    connect(page)
    page.fill("#max-tokens", "4")
    page.click("#prompt")
    page.keyboard.type("tokyo ")
    # The events an IME sends while the user picks 東京 and confirms it with Enter: Chrome and Firefox flag
    # the Enter with isComposing; Safari sends it after compositionend with keyCode 229; some send a plain
    # Enter between compositionstart and compositionend.
    page.eval_on_selector(
        "#prompt",
        """el => {
             const key = (init) => el.dispatchEvent(new KeyboardEvent('keydown',
                 Object.assign({key: 'Enter', code: 'Enter', bubbles: true, cancelable: true}, init)));
             el.dispatchEvent(new CompositionEvent('compositionstart', {data: ''}));
             key({keyCode: 13});
             key({keyCode: 13, isComposing: true});
             el.value += '東京';
             el.dispatchEvent(new CompositionEvent('compositionend', {data: '東京'}));
             key({keyCode: 229});
           }""",
    )
    time.sleep(0.5)
    assert page.posts == [] and answers(page) == []
    assert page.input_value("#prompt") == "tokyo 東京"
    press_to_send(page)  # once the composition is over, Enter sends
    wait_answers(page)
    assert page.posts == [CHAT] and page.inner_text(".turn.user") == "tokyo 東京"


def test_the_whole_flow_works_from_the_keyboard(page: Any, server: ServerProcess) -> None:
    page.wait_for_function("document.getElementById('status').textContent.includes('Wrong or missing')")
    assert focused(page) == "api-key"  # no key yet: the page starts where the user has to type
    page.keyboard.type(KEY)
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Connected')")
    assert focused(page) == "prompt"
    # "Side by side" is a labelled switch, grouped with the second model's picker and just before it.
    toggle = page.get_by_role("switch", name="Side by side")
    second = page.get_by_role("combobox", name="Second model")
    group = page.get_by_role("group", name="Compare two models")
    assert group.get_by_role("switch").count() == 1 and group.get_by_role("combobox").count() == 1
    tab_to(page, "compare", key="Shift+Tab")
    page.keyboard.press("Space")
    assert toggle.is_checked()
    page.wait_for_function("document.querySelectorAll('.column').length === 2")
    page.keyboard.press("Tab")
    assert focused(page) == "model-b" and second.input_value() == "tuned"
    tab_to(page, "temperature")
    page.keyboard.press("Control+A")
    page.keyboard.type("0")
    page.keyboard.press("Tab")
    assert focused(page) == "max-tokens"
    page.keyboard.press("Control+A")
    page.keyboard.type("8")
    tab_to(page, "prompt")
    page.keyboard.type(QUESTION)
    tab_to(page, "send")
    press_to_send(page)  # Send from the keyboard: it is disabled while answering, focus leaves it
    wait_answers(page, 2)
    assert focused(page) == "prompt"  # back in the input, ready for the next question
    assert page.evaluate("document.getElementById('announce').textContent") == "Answer complete."
    texts = [a.get_attribute("data-text") for a in answers(page)]
    assert texts[0] == greedy(server, "base", 8) and texts[1]
    # Esc stops an answer midway, and the focus is back in the input.
    page.fill("#max-tokens", "400")
    page.focus("#prompt")
    page.keyboard.type("Write a long story about a lighthouse keeper.")
    press_to_send(page)
    page.wait_for_function("document.querySelectorAll('.turn.answer')[2].dataset.text")
    page.keyboard.press("Escape")
    wait_answers(page, 2, done="stopped")
    assert focused(page) == "prompt" and page.is_enabled("#send")


def control_names(page: Any) -> list[tuple[str, str, str]]:
    """(role, name, what the name comes from) of every control in Chromium's own accessibility tree: stricter
    than axe, which takes a <label> around two controls as naming both."""
    cdp = page.context.new_cdp_session(page)
    try:
        nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    finally:
        cdp.detach()
    found = []
    for node in nodes:
        role = node.get("role", {}).get("value")
        if role in CONTROLS and not node.get("ignored"):
            name = node.get("name", {})
            used = [s["type"] for s in name.get("sources", []) if s.get("value") and not s.get("superseded")]
            found.append((role, name.get("value", ""), used[0] if used else ""))
    return found


def test_every_control_has_a_name_and_axe_finds_no_serious_violation(page: Any) -> None:
    page.wait_for_function("document.getElementById('status').textContent.includes('Wrong or missing')")
    before = axe_violations(page)  # the first view, with the key error showing
    connect(page)
    page.check("#compare")
    page.fill("#max-tokens", "8")
    page.fill("#prompt", "Say **hello** and show `code`.")
    page.click("#send")
    wait_answers(page, 2)
    after = axe_violations(page)  # two columns with questions, answers and their figures
    assert before == [] and after == [], (before, after)
    names = control_names(page)
    assert len(names) >= 10 and CONTROLS - {"checkbox"} <= {role for role, _, _ in names}, names  # a switch
    unnamed = [(role, name, source) for role, name, source in names if not name or source == "placeholder"]
    assert unnamed == [], f"controls without a name of their own (a placeholder is no label): {unnamed}"
