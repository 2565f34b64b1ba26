"""A headless Chromium driven from Python (Selenium and Debian's ``chromium-driver``), for the
dashboard's benchmark and its browser tests.

Reading a page that re-draws itself every second element by element races the re-drawing (an
element found, then replaced before it is read); :func:`read` runs one script in the page and
returns what it returns, so what is read is one consistent drawing.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING = "needs Debian's chromium and chromium-driver"  # why a run without them is skipped


@contextlib.contextmanager
def chromium(*, width: int = 1400, height: int = 1000) -> Iterator[WebDriver]:
    """A headless Chromium window of ``width`` × ``height`` pixels, quit on the way out.

    Raises:
        RuntimeError: Chromium or its driver is not installed.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if CHROMIUM is None or CHROMEDRIVER is None:
        raise RuntimeError(MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def read(browser: WebDriver, script: str) -> Any:
    """What ``script`` (a function body ending in ``return``) returns, run once in the page."""
    return browser.execute_script(script)
