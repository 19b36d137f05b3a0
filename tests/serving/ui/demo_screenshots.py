"""README's pictures from a real `make demo` (`make screenshots`).

It serves what the demo left in artifacts/ (`chatmodel run` of the quickstart with `--with-base`, which reuses
the fine-tuned version instead of training again), asks the fine-tuned version one question so the live
figures are real, opens the playground's Versions view in Debian's chromium and saves it as
docs/img/versions-view.png, and copies the version's own training.png to docs/img/training.png."""

from __future__ import annotations

import shutil
import sys
import time

import httpx

from chatmodel_serving.cli.demo import MANIFEST, QUESTIONS
from chatmodel_serving.cli.run import plan, trained_before
from chatmodel_serving.launch import ServerProcess
from tests.tools import ROOT, need_binary

IMAGES = ROOT / "docs" / "img"


def main() -> int:
    p = plan(MANIFEST)
    if p.train is None or trained_before(p) is None:
        print("no fine-tuned version of the quickstart in artifacts/: run `make demo` first", file=sys.stderr)
        return 2
    version = p.train.output
    from playwright.sync_api import sync_playwright

    with ServerProcess([str(MANIFEST), "--with-base"], subcommand="run", ready_timeout=600) as srv:
        answer = httpx.post(
            srv.url + "/chat/completions",
            json={"model": p.name, "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 32},
            timeout=300,
        )
        answer.raise_for_status()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=need_binary("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(srv.base + "/")
            page.fill("#api-key", "none")  # the demo serves without keys; the page asks once all the same
            page.click("#key-form button")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Connected')")
            page.click("#show-versions")
            page.wait_for_function("document.querySelectorAll('#eval-chart svg path.curve').length >= 1")
            time.sleep(0.2)  # the last live figures' paint
            page.screenshot(path=str(IMAGES / "versions-view.png"), full_page=True)
            browser.close()
    shutil.copyfile(version / "training.png", IMAGES / "training.png")
    print(f"wrote {IMAGES / 'versions-view.png'} and {IMAGES / 'training.png'} (version {version.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
