"""report.html in headless Chromium: plots draw, the table fills and filters, no console errors.

Uses Debian's `chromium` and `chromium-driver` (installed by `make test`) through Selenium;
no browser is ever downloaded, and the page is opened from a file:// URL with the network
features of the browser turned off. A screenshot goes to test-artifacts/report.png.
"""

import shutil
from pathlib import Path

import pytest

from grpo.record import report
from tests.support.run_dirs import TRICKY, make_synthetic_run

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,2000"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("the report's browser test needs Debian's chromium and chromium-driver: run `make test` "
                    "(it installs them with apt-get), or `apt-get install -y chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would download one) is never run.
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def open_report(driver, run_dir) -> None:
    driver.get(report.write_report(run_dir).resolve().as_uri())
    driver.get_log("browser")  # the log is read-and-clear; errors from here on are this page's


def console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def path_points(driver) -> list[int]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#plots svg path')].map(p => +p.dataset.points)")


def visible_steps(driver) -> list[int]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#samples tbody tr')]"
        ".filter(tr => !tr.hidden && tr.offsetParent !== null).map(tr => +tr.cells[0].textContent)")


def type_into(driver, element_id: str, text: str) -> None:
    box = driver.find_element("id", element_id)
    box.clear()
    box.send_keys(text)


def test_report_of_a_real_run_renders(browser, tiny_run_dir):
    open_report(browser, tiny_run_dir)
    figures = browser.find_elements("css selector", "#plots figure")
    # pass_rate and pools too: the run's accuracy reward gives every prompt an estimate (grpo.tasks.sampling)
    assert len(figures) == len(report.build_data(Path(tiny_run_dir))["plots"]) == 9
    points = path_points(browser)
    assert len(points) >= 7 and all(n >= 1 for n in points)
    assert len(visible_steps(browser)) == 24
    assert console_errors(browser) == []


def test_long_run_report_plots_filters_and_stays_inert(browser, tmp_path):
    run = make_synthetic_run(tmp_path / "run", num_steps=3000)
    open_report(browser, run)
    points = path_points(browser)
    assert max(points) == 2000 and min(points) >= 2  # downsampled; eval has 11 points
    assert len(browser.find_elements("css selector", "#plots figure")) == 7
    steps = visible_steps(browser)
    assert len(steps) == 500 and steps[0] <= 10 and steps[-1] > 2990

    type_into(browser, "step-min", "1000")
    type_into(browser, "step-max", "1999")
    in_range = visible_steps(browser)
    assert 0 < len(in_range) < 500 and all(1000 <= s <= 1999 for s in in_range)
    assert browser.find_element("id", "row-count").text == f"{len(in_range)} of 500 shown"
    type_into(browser, "reward-min", "2")
    correct = visible_steps(browser)
    assert 0 < len(correct) < len(in_range)
    browser.find_element("id", "reset").click()
    assert len(visible_steps(browser)) == 500

    # markup in completions is shown as text and never runs
    type_into(browser, "search", "</script><script>window.__pwned")
    assert len(visible_steps(browser)) >= 1
    cells = browser.execute_script(
        "return [...document.querySelectorAll('#samples tbody tr')].filter(tr => !tr.hidden)"
        ".map(tr => tr.querySelector('pre').textContent)")
    assert all(c.endswith(TRICKY[0]) for c in cells)
    assert browser.execute_script("return window.__pwned === undefined && !document.querySelector('tbody img')")
    browser.find_element("id", "reset").click()

    # hovering a plot reads out the values at a step
    from selenium.webdriver import ActionChains

    ActionChains(browser).move_to_element(browser.find_element("css selector", "#plot-reward svg")).perform()
    assert browser.find_element("css selector", "#plot-reward .readout").text.startswith("step ")
    assert console_errors(browser) == []
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(ARTIFACTS / "report.png"))
