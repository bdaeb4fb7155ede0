"""The prediction web page, as a person uses it: headless Chromium (Debian's, driven by Selenium and
Debian's chromedriver) on the real page served by a real `polyfuse serve` subprocess on 127.0.0.1.

Chromium, chromedriver and Selenium come from .ci/setup-browser.sh; without them the test skips."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import toy_spec

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,1400"]
KEY = "web-test-key-7f3a"


def _browser(*extra_flags: str):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: run .ci/setup-browser.sh")
    if not chromium or not driver:
        pytest.skip("Debian's chromium / chromium-driver are not installed: run .ci/setup-browser.sh as root")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*FLAGS, *extra_flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given: Selenium Manager (which would go online for drivers) is never consulted.
    return webdriver.Chrome(service=Service(driver), options=options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _start_server(model_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "polyfuse", "serve", str(model_dir), "--port", str(port),
           "--api-key-env", "POLYFUSE_WEBPAGE_TEST_KEY"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "POLYFUSE_WEBPAGE_TEST_KEY": KEY})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _get(base + "/v2/health/ready")[0] == 200:
                return proc, base
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server not ready within 40 s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, f"{path} is not a real PNG screenshot"


def test_webpage_predicts_and_reports_errors(toy_csv, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    import polyfuse

    browser = _browser()  # skips before any training when there is no browser
    proc = None
    try:
        model_dir = tmp_path / "model"
        polyfuse.train(toy_spec(toy_csv, epochs=2), out=model_dir, show_progress=False)
        proc, base = _start_server(model_dir, tmp_path / "server.log")
        schema = json.loads(_get(base + "/schema")[1])
        classes = next(o for o in schema["outputs"] if o["name"] == "label")["classes"]
        assert sorted(classes) == ["cat", "dog", "owl"]

        wait = WebDriverWait(browser, 15)
        css = lambda sel: browser.find_element(By.CSS_SELECTOR, sel)  # noqa: E731
        browser.get(base + "/")
        wait.until(lambda b: css("#predict").is_enabled())
        assert css("#title").text == schema["name"]
        # one labelled control per input, the category with a "(missing)" choice
        for spec_input in schema["inputs"]:
            node = css(f"[name={spec_input['name']}]")
            assert css(f"label[for={node.get_attribute('id')}]").text.startswith(spec_input["name"])
        assert css("select[name=color] option").text == "(missing)"

        # a good record: image + audio + text; weight and color left out (missing)
        css("input[name=photo]").send_keys(str(toy_csv.parent / "img/0.png"))
        css("input[name=sound]").send_keys(str(toy_csv.parent / "wav/0.wav"))
        css("[name=note]").send_keys("a small catish thing")
        wait.until(lambda b: b.execute_script("const i = document.querySelector('.field[data-field=photo] img');"
                                              "return i.complete && i.naturalWidth > 0"))
        wait.until(lambda b: b.execute_script("const a = document.querySelector('.field[data-field=sound] audio');"
                                              "return a.readyState >= 1 && a.duration > 0.1"))

        # the server wants a key: the page says so and opens the key box; with the key it answers
        css("#predict").click()
        wait.until(lambda b: css("#error").is_displayed())
        assert "API key" in css("#error").text and css("#api-key").is_displayed()
        css("#api-key").send_keys(KEY)
        css("#predict").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#result .bar")))
        assert not css("#error").is_displayed()

        label = css("#result [data-output=label] .label").get_attribute("data-value")
        assert label in classes and css("#result [data-output=label] .label").text.startswith(label)
        bars = browser.find_elements(By.CSS_SELECTOR, "#result [data-output=label] .bar")
        assert sorted(b.get_attribute("data-class") for b in bars) == sorted(classes)
        probs = [float(b.get_attribute("data-p")) for b in bars]
        assert probs == sorted(probs, reverse=True) and bars[0].get_attribute("data-class") == label
        assert abs(sum(probs) - 1) < 1e-3
        widths = browser.execute_script(
            "return [...document.querySelectorAll('#result .bar')].map(b => "
            "b.querySelector('.fill').getBoundingClientRect().width / b.querySelector('.track').getBoundingClientRect().width)")
        assert abs(sum(widths) - 1) < 0.02, widths
        assert css(f".bar[data-class={label}]").is_displayed()
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"  # no script error, no 404
                  and "/predict - Failed to load resource: the server responded with a status of 401" not in e["message"]]
        assert not severe, severe
        assert browser.save_screenshot(str(tmp_path / "result.png"))
        _png(tmp_path / "result.png")

        # phone width: nothing sticks out sideways
        browser.set_window_size(390, 1000)
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        browser.save_screenshot(str(tmp_path / "phone.png"))
        browser.set_window_size(1000, 1400)

        # a corrupt image: the error box names the field and the stale result goes away
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"not a png")
        css("input[name=photo]").send_keys(str(broken))
        css("#predict").click()
        wait.until(lambda b: css("#error").is_displayed())
        error = css("#error")
        assert error.get_attribute("role") == "alert"
        assert "photo" in error.text and error.get_attribute("data-field") == "photo", error.text
        assert css("input[name=photo]").get_attribute("aria-invalid") == "true"
        assert not css("#result").is_displayed()
        shot = tmp_path / "error.png"
        assert browser.save_screenshot(str(shot))
        _png(shot)
        _png(tmp_path / "phone.png")
    finally:
        browser.quit()
        if proc is not None:
            _stop(proc)
