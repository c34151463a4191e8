"""Debian's Chromium driven by Playwright (Playwright cannot download its own browser here):
the browser of the page tests, with the folder their screenshots go to."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("ETF_TEST_CHROMIUM", "/usr/bin/chromium"))


@contextmanager
def chromium(shots: Path) -> Iterator[Any]:
    """A headless Chromium for the block; fails the test, saying what to install, without it."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make browser` "
                    "(Debian: apt-get install chromium) or set ETF_TEST_CHROMIUM")
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()
