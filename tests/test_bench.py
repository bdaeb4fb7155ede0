"""`polyfuse bench` on a tiny toy artifact: schema of bench.json, the chart, the manifest, the table."""
from __future__ import annotations

import json
import numbers

import pytest

import polyfuse
from polyfuse.deploy.bench import BenchError, run_bench
from polyfuse.errors import PolyfuseError
from tests.conftest import toy_spec

FIGURES = ("bytes", "size_mb", "load_ms", "cold_start_s", "cold_start_wall_s", "p50_ms", "p99_ms", "e2e_p50_ms",
           "e2e_p99_ms", "batch32_rows_per_s")
RUNTIMES = ("torch", "onnx-fp32", "onnx-int8-dynamic")


@pytest.fixture(scope="module")
def benched(toy_csv, tmp_path_factory):
    """A 2-epoch toy model with fp32 + dynamic int8 ONNX builds, benchmarked once for every test here."""
    from polyfuse.deploy.exporter import export

    out = tmp_path_factory.mktemp("bench") / "m"
    polyfuse.train(toy_spec(toy_csv, epochs=2), out=out, show_progress=False)
    export(out)
    export(out, quantize="dynamic", force=True)  # a 2-epoch model may miss the int8 gate; speed is what we test
    return out


@pytest.fixture(scope="module")
def result(benched, toy_csv):
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        figures = run_bench(benched, toy_csv, repeats=1, threads=1, rows=8)
    return figures, printed.getvalue()


def test_bench_json_schema(benched, result):
    figures, _ = result
    saved = json.loads((benched / "bench.json").read_text())
    assert saved == json.loads(json.dumps(figures))
    assert {"data", "rows", "repeats", "threads", "runtimes", "ratios", "runtime_footprint_mb",
            "full_footprint_mb"} <= set(saved)
    assert saved["repeats"] == 1 and saved["threads"] == 1 and saved["rows"] > 0
    assert set(saved["runtimes"]) == set(RUNTIMES) == set(saved["ratios"])
    for name, fig in saved["runtimes"].items():
        for key in FIGURES:
            assert isinstance(fig[key], numbers.Real) and fig[key] > 0, (name, key, fig[key])
        assert 0.0 <= fig["accuracy"] <= 1.0
        assert fig["torch_imported_at_cold_start"] == name.startswith("torch"), "ONNX cold start must be torch-free"
        ratio = saved["ratios"][name]
        assert ratio["latency_speedup_vs_torch"] > 0 and ratio["e2e_speedup_vs_torch"] > 0
    assert saved["ratios"]["torch"]["latency_speedup_vs_torch"] == pytest.approx(1.0)
    # the same ONNX graph as torch: identical accuracy on the same rows
    assert saved["runtimes"]["onnx-fp32"]["accuracy"] == pytest.approx(saved["runtimes"]["torch"]["accuracy"])
    assert 0 < saved["runtime_footprint_mb"] < saved["full_footprint_mb"]


def test_chart_and_manifest(benched, result):
    assert (benched / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((benched / "manifest.json").read_text())
    assert {"bench.json", "bench.png"} <= set(manifest["files"])
    assert "exports" in manifest and "polyfuse_version" in manifest  # other keys survive the re-hash
    polyfuse.load(benched)  # verifies every file against the re-written manifest
    assert not list(benched.glob(".*tmp*")), "no temp files left behind"


def test_table_names_every_runtime(result):
    figures, printed = result
    for name in RUNTIMES:
        assert any(line.startswith(name + " ") for line in printed.splitlines()), name
    assert "×" in printed and "footprint" in printed


def test_clear_errors(benched, toy_csv, tmp_path):
    with pytest.raises(BenchError, match="not found"):
        run_bench(benched, tmp_path / "missing.csv", repeats=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BenchError, match="no runtime"):
        run_bench(empty, toy_csv, repeats=1)
    with pytest.raises(PolyfuseError, match="not found"):
        run_bench(tmp_path / "nowhere", toy_csv, repeats=1)
