"""The page's live view, driven in real headless Chromium: a sensor CSV replayed in real time over
/v2/stream, a prediction listed at every hop, each equal to the runtime's answer on that window."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tests.test_timeseries import make_table, spec as ts_spec, wave
from tests.test_webpage import KEY, _browser, _get, _start_server, _stop

LENGTH = 16


def test_live_view_replays_a_sensor_file(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import polyfuse
    from polyfuse.export.exporter import export
    from polyfuse.runtime import Runtime

    browser = _browser()  # skips before any training when there is no browser
    proc = None
    try:
        table = make_table(tmp_path, n=30)
        model_dir = tmp_path / "model"
        polyfuse.train(ts_spec(table, length=LENGTH, epochs=2), out=model_dir, show_progress=False)
        export(model_dir, data=table)
        rng = np.random.default_rng(5)
        series = np.concatenate([wave("slow", rng), wave("fast", rng)])  # 128 steps, 2 channels
        csv = tmp_path / "replay.csv"
        pd.DataFrame(series, columns=["ax", "ay"]).to_csv(csv, index=False)

        proc, base = _start_server(model_dir, tmp_path / "server.log")
        schema = json.loads(_get(base + "/schema")[1])
        motion = next(i for i in schema["inputs"] if i["name"] == "motion")
        assert motion["channels"] == 2 and motion["window"] == LENGTH

        wait = WebDriverWait(browser, 30)
        css = lambda sel: browser.find_element(By.CSS_SELECTOR, sel)  # noqa: E731
        browser.get(base + "/")
        wait.until(lambda b: css("#live").is_displayed())
        browser.execute_script("document.querySelector('.key').open = true")
        css("#api-key").send_keys(KEY)
        css("#live-motion").send_keys(str(csv))
        css("#replay").click()
        hop = LENGTH // 4
        ends = list(range(LENGTH, len(series) + 1, hop))
        wait.until(lambda b: css("#live-status").text == "finished")
        items = browser.find_elements(By.CSS_SELECTOR, "#live-log li")
        got = {int(i.get_attribute("data-end")): i.get_attribute("data-value") for i in items}
        assert sorted(got) == ends, sorted(got)
        want = Runtime(model_dir).predict([{"motion": series[e - LENGTH:e]} for e in ends])
        assert [got[e] for e in ends] == [w["label"] for w in want]
        assert not css("#error").is_displayed()
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        browser.quit()
        if proc is not None:
            _stop(proc)
