"""Stream messages read straight into arrays (serve/stream_parse.py) give exactly what ``json.loads``
gives, and anything that path does not recognise goes through ``json.loads`` unchanged; it is linear."""
from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from polyfuse.serve.stream_parse import _samples_fast, parse_message

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32) | st.integers(-10**6, 10**6)


def _generic(text: str) -> dict:
    body = json.loads(text)
    return {k: np.asarray(v, dtype=np.float32) for k, v in body["samples"].items()}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
                       st.integers(1, 4).flatmap(lambda w: st.lists(st.lists(finite, min_size=w, max_size=w),
                                                                     min_size=1, max_size=30))
                       | st.lists(finite, min_size=1, max_size=30), min_size=1, max_size=3),
       st.sampled_from([None, 1, 2]), st.booleans())
def test_the_fast_path_reads_what_json_reads(samples, indent, as_bytes):
    text = json.dumps({"samples": samples}, indent=indent)
    assert _samples_fast(text) is not None, text[:200]
    kind, body = parse_message(text.encode() if as_bytes else text)
    assert kind == "ok" and set(body["samples"]) == set(samples)
    for name, want in _generic(text).items():
        got = body["samples"][name]
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_what_the_fast_path_does_not_recognise_goes_through_json():
    cases = {'{"samples": {"a": [[1, 2], [3]]}}': "ragged",  # rows of unequal length: left as sent
             '{"samples": {"a": [NaN, 1]}}': "nan", '{"samples": {"a\\u00e9": [1, 2]}}': "escape",
             '{"samples": {"a": [1, 2], "a": [3]}}': "duplicate", '{"samples": {"a": []}}': "empty",
             '{"start": {"hop": 4}}': "start", '{"samples": {"a": [1,, 2]}}': "empty number",
             '{"samples": {"a": [[1, 2] [3, 4]]}}': "no comma", '{"samples": {"a": [[1, 2], 3]}}': "mixed",
             '{"samples": {"a": [[1, 2]], [3]}}': "bracket", '{"samples": {"a": [1e]}}': "exponent"}
    for text, why in cases.items():
        assert _samples_fast(text) is None, why
    assert parse_message('{"samples": {"a": [[1, 2], [3]]}}')[1]["samples"]["a"] == [[1, 2], [3]]
    assert np.isnan(parse_message('{"samples": {"a": [NaN, 1]}}')[1]["samples"]["a"][0])
    assert parse_message('{"samples": {"a": [1, 2], "a": [3]}}')[1]["samples"]["a"].tolist() == [3.0]
    assert parse_message('{"samples": {"a": [1,, 2]}}') == ("error", "not a JSON message")
    assert parse_message(b"\xff\xfe") == ("error", "not a JSON message")
    assert parse_message("[" * 100_000) == ("error", "not a JSON message (nested too deeply)")


def test_reading_a_message_is_linear_in_its_size():
    """10x the readings costs well under 100x the time (a quadratic reading would), recognised or not."""
    import gc
    import time

    def best(text: str) -> float:
        times = []
        gc.disable()  # a full collection walks the whole test process's heap: its cost is not the reading's
        try:
            for _ in range(3):
                t = time.perf_counter()
                parse_message(text)
                times.append(time.perf_counter() - t)
        finally:
            gc.enable()
        return min(times)

    rows = lambda n: '{"samples": {"m": [' + ",".join(["[1.5,-0.25]"] * n) + "]}}"  # noqa: E731
    ragged = lambda n: '{"samples": {"m": [' + "[1,0]," * n + "[1]]}}"  # noqa: E731
    assert best(rows(200_000)) < 30 * best(rows(20_000)) + 0.1
    assert best(ragged(200_000)) < 30 * best(ragged(20_000)) + 0.1  # refused late, then json.loads
