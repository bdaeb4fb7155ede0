"""The page's live view, driven in real headless Chromium: a sensor CSV replayed in real time over
/v2/stream, a prediction listed at every hop, each equal to the runtime's answer on that window."""
from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd

from tests.test_timeseries import make_table, wave
from tests.test_timeseries import spec as ts_spec
from tests.test_webpage import KEY, _browser, _get, _start_server, _stop

LENGTH = 16


def test_live_view_replays_a_sensor_file(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import polyfuse
    from polyfuse.deploy.exporter import export
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
        css("#live-start").click()
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


RATE = 8000


def _tone(rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.5 * np.sin(2 * np.pi * rng.uniform(600, 1200) * t + rng.uniform(0, 6))).astype(np.float32)


def test_live_view_listens_to_the_microphone(tmp_path):
    """Chromium's fake microphone plays a tone file; the page streams it at the model's rate and
    lists "tone" at every hop (the same model says "noise" for noise windows, so the tone arrived)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import polyfuse
    from polyfuse.deploy.exporter import export
    from polyfuse.preprocess.audio_file import write_wav
    from polyfuse.runtime import Runtime

    rng = np.random.default_rng(0)
    mic = tmp_path / "mic.wav"
    write_wav(mic, _tone(rng, 3.0), RATE)
    browser = _browser("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                       f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required")
    proc = None
    try:
        rows = []
        for i in range(40):
            label = "tone" if i % 2 else "noise"
            wave = _tone(rng, 0.5) if label == "tone" else rng.uniform(-0.5, 0.5, RATE // 2).astype(np.float32)
            write_wav(tmp_path / f"{i}.wav", wave, RATE)
            rows.append({"voice": f"{i}.wav", "label": label})
        pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
        model_dir = tmp_path / "model"
        polyfuse.train({"data": {"train": str(tmp_path / "train.csv")},
                        "inputs": {"voice": {"type": "audio", "sample_rate": RATE, "max_seconds": 0.5, "n_mfcc": 13,
                                             "n_mels": 32}},
                        "outputs": {"label": {"type": "category"}},
                        "train": {"epochs": 5, "batch_size": 8, "lr": 3e-3, "seed": 0, "baseline": False}},
                       out=model_dir, show_progress=False)
        export(model_dir, data=tmp_path / "train.csv")
        runtime = Runtime(model_dir)
        noise = rng.uniform(-0.5, 0.5, RATE // 2).astype(np.float32)
        assert [p["label"] for p in runtime.predict([{"voice": noise}, {"voice": _tone(rng, 0.5)}])] == ["noise", "tone"]

        proc, base = _start_server(model_dir, tmp_path / "server.log")
        voice = next(i for i in json.loads(_get(base + "/schema")[1])["inputs"] if i["name"] == "voice")
        assert (voice["type"], voice["sample_rate"], voice["window"]) == ("audio", RATE, RATE // 2)

        wait = WebDriverWait(browser, 30)
        css = lambda sel: browser.find_element(By.CSS_SELECTOR, sel)  # noqa: E731
        browser.get(base + "/")
        wait.until(lambda b: css("#live").is_displayed())
        assert css("#live-start").text == "Start listening"
        browser.execute_script("document.querySelector('.key').open = true")
        css("#api-key").send_keys(KEY)
        css("#live-start").click()
        try:
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#live-log li.live-item")) >= 6)
        except TimeoutException:
            raise AssertionError(f"status {css('#live-status').text!r}, log {css('#live-log').text!r}, "
                                 f"error {css('#error').text!r}, console {browser.get_log('browser')}") from None
        css("#live-stop").click()
        wait.until(lambda b: css("#live-status").text == "finished")
        items = browser.find_elements(By.CSS_SELECTOR, "#live-log li.live-item")
        ends = sorted(int(i.get_attribute("data-end")) for i in items)
        hop = RATE // 2 // 4
        assert ends[0] >= RATE // 2 and all(e % hop == 0 for e in ends) and len(set(ends)) == len(ends), ends
        values = [i.get_attribute("data-value") for i in items]
        assert values.count("tone") >= len(values) - 1, values  # the first window may hold the device's start-up
        assert not css("#error").is_displayed()
        metrics = lambda: httpx.get(base + "/metrics", headers={"x-api-key": KEY}, timeout=10).text  # noqa: E731
        wait.until(lambda b: "polyfuse_open_streams 0.0" in metrics())  # the stream's state is freed
    finally:
        browser.quit()
        if proc is not None:
            _stop(proc)
