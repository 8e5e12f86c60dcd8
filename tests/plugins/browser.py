"""A headless Debian Chromium driven by Playwright, for the tests that look at a page.

``CHROMIUM`` names the binary (default /usr/bin/chromium: Playwright downloads no browser here).
Missing browser or package: the test skips locally and fails under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def browser_missing() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    if not (shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (Debian package chromium)"
    return None


def require_browser() -> None:
    missing = browser_missing()
    if missing:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{missing}; CI=true: the browser tests must run", pytrace=False)
        pytest.skip(missing)


@pytest.fixture
async def chromium():
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield browser
        finally:
            await browser.close()
