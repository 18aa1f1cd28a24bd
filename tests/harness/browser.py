"""A real headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium.

Why Selenium: it drives the browser through the chromedriver Debian builds from the
same source as `chromium`, so browser and driver always match, and it downloads
nothing (the driver's path is given, so Selenium Manager never runs); Playwright's
Python package brings its own Node driver and expects browser builds of its own.

Each `open_browser` has a fresh profile and is quit by the caller's `with`. Waits are on
conditions (WebDriverWait), never sleeps. Screenshots go to $MACHA_SCREENSHOT_DIR, or
tests/artifacts/ (gitignored), so a person can look at the pages a test run saw.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.harness.real import unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: the namespace sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
PHONE = (390, 844)
DESKTOP = (1280, 800)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def screenshot_dir() -> Path:
    where = Path(os.environ.get("MACHA_SCREENSHOT_DIR") or ARTIFACTS)
    where.mkdir(parents=True, exist_ok=True)
    return where


def missing() -> str | None:
    """Why a browser cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def _left_the_document(exc: Exception) -> bool:
    """chromedriver's word for an element of a page that is going or gone (beside
    StaleElementReferenceException, it sometimes answers an inspector error)."""
    return "does not belong to the document" in str(exc)


def _gone(element: Any) -> Callable[[Any], bool]:
    """A wait condition: `element`'s page was replaced (selenium's staleness_of, which
    knows only the StaleElementReferenceException form of it)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def check(_driver: Any) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if _left_the_document(exc):
                return True
            raise
        return False

    return check


class Browser:
    """One Chromium window, with the few things the tests do in it."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def open(self, url: str) -> str:
        """Load `url` and return the page's text as a person sees it."""
        self.driver.get(url)
        return self.text()

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    def click(self, css: str) -> str:
        """Click the element and wait for the page it leads to; the new page's text."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        old = self.driver.find_element(By.TAG_NAME, "html")
        try:
            self.driver.find_element(By.CSS_SELECTOR, css).click()
        except WebDriverException as exc:
            # chromedriver's race: the click submitted the form and the page began to go
            # while the driver still looked at the button. The wait below says whether
            # the page really went.
            if not _left_the_document(exc):
                raise
        self.wait(_gone(old))
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete")
        return self.text()

    def type(self, css: str, text: str) -> None:
        from selenium.webdriver.common.by import By

        field = self.driver.find_element(By.CSS_SELECTOR, css)
        field.clear()
        field.send_keys(text)

    def has(self, css: str) -> bool:
        from selenium.webdriver.common.by import By

        return bool(self.driver.find_elements(By.CSS_SELECTOR, css))

    def remove(self, css: str) -> None:
        """Take an element out of the page (a form field an attacker would not have)."""
        self.driver.execute_script(
            "for (const e of document.querySelectorAll(arguments[0])) e.remove();", css
        )

    def wait(self, condition: Callable[[Any], Any], timeout: float = 60) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(condition)

    def new_tab(self, url: str) -> str:
        """Open `url` in a new tab and switch to it; the handle of the tab it left."""
        before = self.driver.current_window_handle
        self.driver.switch_to.new_window("tab")
        self.open(url)
        return str(before)

    def switch(self, handle: str) -> None:
        self.driver.switch_to.window(handle)

    def screenshot(self, name: str, size: tuple[int, int]) -> Path:
        """The page at a viewport of `size` CSS pixels (a phone's is 390x844, as mobile);
        the PNG's path."""
        width, height = size
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )
        path = screenshot_dir() / f"{name}-{width}x{height}.png"
        self.driver.save_screenshot(str(path))
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        return path


@contextlib.contextmanager
def open_browser() -> Iterator[Browser]:
    """A headless Chromium with a fresh profile; skips (fails under CI) without one."""
    why = missing()
    if why is not None:
        unavailable(f"real browser unavailable: {why}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="macha-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
