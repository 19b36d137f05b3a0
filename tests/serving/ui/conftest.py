"""What the browser tests share: one chromium (Debian's, driven by Playwright) per module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.tools import missing, need_binary


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
