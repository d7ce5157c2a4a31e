"""A real browser for the dashboard tests: headless Chromium driven by Playwright.

- ``chromium``: a launched browser, per test (Playwright's sync API owns an event loop while
  open); ``screenshot(page, name)``: keep what it rendered under the test's tmp_path.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A real headless Chromium (Debian's ``chromium`` package, installed by scripts/setup.sh)
    driven by Playwright; per test, since Playwright's sync API owns an event loop while open."""
    from playwright.sync_api import sync_playwright

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: run scripts/setup.sh (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def screenshot(tmp_path: Path) -> Any:
    """``screenshot(page, name)``: keep what the browser rendered under the test's tmp_path."""

    def take(page: Any, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    return take
