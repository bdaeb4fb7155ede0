"""De-identification under attack, against a real `polyfuse serve` on 127.0.0.1: texts built to make
the redaction rules backtrack (149 bytes once froze the server, probes included, for 17 s) are
answered at once, the liveness probe answers within 0.5 s throughout, and memory stays flat."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from polyfuse import artifact
from tests.serving import Server, as_json, toy_records

ATTACKS = {
    "Calle della x40": "Calle " + "della" * 40 + "1",
    "a. to the body": "a." * 50_000,
    "+1...1 repeated": ("+" + "1" * 30 + " ") * 3_000,
    "www.a.a.a": "www." + "a." * 40_000,
    "digits and spaces": "1 " * 50_000,
    "Chinese road endings": ("市" * 29 + "路1号") * 2_000,
}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def deid_server(toy_dir, tmp_path_factory):
    """The toy model with de-identification switched on for its text input, served by torch (the spec
    change would not match the ONNX export's recorded spec digest)."""
    folder = tmp_path_factory.mktemp("deid") / "model"
    shutil.copytree(toy_dir, folder)
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    spec["inputs"]["note"]["deidentify"] = True
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    artifact.refresh_manifest(folder)
    server = Server(folder, ["--runtime", "torch", "--max-batch", "1"], tmp_path_factory.mktemp("deid-logs"))
    yield server
    server.stop()


def _probe(url: str, stop: threading.Event, worst: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        try:
            httpx.get(url + "/v2/health/live", timeout=5)
        finally:
            worst.append(time.perf_counter() - t)
        time.sleep(0.05)


@pytest.mark.parametrize("name", ATTACKS)
def test_adversarial_text_is_answered_and_liveness_holds(deid_server, toy_csv, name):
    record = {**as_json(toy_records(toy_csv, 1)[0]), "note": ATTACKS[name]}
    url = deid_server.url
    with httpx.Client(base_url=url, timeout=30) as c:  # warm: the first request pays lazy imports
        c.post("/predict", json={"records": [as_json(toy_records(toy_csv, 1)[0])]})
    before = _rss_mb(deid_server.proc.pid)
    stop, latencies = threading.Event(), []
    probe = threading.Thread(target=_probe, args=(url, stop, latencies))
    probe.start()
    try:
        t = time.perf_counter()
        with httpx.Client(base_url=url, timeout=30) as c:
            statuses = [c.post("/predict", json={"records": [record] * 4}).status_code for _ in range(3)]
        took = time.perf_counter() - t
    finally:
        stop.set()
        probe.join()
    assert statuses == [200] * 3, statuses
    assert took < 10, f"{name}: 3 requests took {took:.1f} s"
    assert max(latencies) <= 0.5, f"{name}: liveness took {max(latencies):.2f} s during the attack"
    assert _rss_mb(deid_server.proc.pid) < before + 150
