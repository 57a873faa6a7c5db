"""The daemon's page in a real browser: headless Chromium (Debian's chromium and chromium-driver,
which .ci/run installs) driven by Selenium opens the page of a running `crystalline run`, sees
the learning curve gain points after files are dropped, types a prompt and sees the completion
stream in. With CRYSTALLINE_SCREENSHOT=PATH the page is saved there as a PNG (docs/images/window.png
comes from this test)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import write_text_file

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
TOKEN = "browser-token"
WAIT = 120  # a failure guard for waits on the page, never reached when the test passes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
                              ".ci/run installs them)"),
]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900",
                 "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_shows_learning_and_talks_to_the_live_model(daemon_factory, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    daemon = daemon_factory(env={"CRYSTALLINE_HTTP_LISTEN": "127.0.0.1:0", "CRYSTALLINE_HTTP_TOKEN": TOKEN})
    port = daemon.wait_for("http_serving")[0]["port"]
    daemon.wait_for("daemon_ready")
    browser.get(f"http://127.0.0.1:{port}/?token={TOKEN}")
    chart = browser.find_element(By.ID, "chart")
    wait = WebDriverWait(browser, WAIT, poll_frequency=0.2)
    wait.until(lambda _: browser.find_element(By.ID, "state").text not in ("connecting", "unreachable"))
    assert browser.current_url.endswith("/"), "the token leaves the address bar"
    before = int(chart.get_attribute("data-train-points"))

    for i in range(6):
        write_text_file(inbox / f"notes-{i}.txt", seed=i, size=15000)
    wait.until(lambda _: int(chart.get_attribute("data-train-points")) > before + 5)
    wait.until(lambda _: int(chart.get_attribute("data-eval-points")) >= 2)
    wait.until(lambda _: "ingested" in browser.find_element(By.ID, "files").text)

    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys("document 3\nriver")
    browser.find_element(By.ID, "send").click()
    completion = browser.find_element(By.ID, "completion")
    wait.until(lambda _: completion.get_attribute("data-done"))
    assert completion.text.startswith("document 3\nriver") and len(completion.text) > len("document 3\nriver")
    assert browser.find_element(By.ID, "error").text == ""
    assert int(chart.get_attribute("data-train-points")) > before + 5
    wait.until(lambda _: browser.find_element(By.ID, "step").text not in ("-", "0"))
    wait.until(lambda _: "bits/byte" in browser.find_element(By.ID, "heldout").text)

    shot = os.environ.get("CRYSTALLINE_SCREENSHOT")
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(shot)
    assert daemon.stop() == 0
