"""A real `polyfuse serve` subprocess on 127.0.0.1 and the request helpers the server tests share."""

import base64
import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import toy_spec

START_TIMEOUT_S = 120.0  # a loaded 2-core machine can take long to import torch / ONNX Runtime
API_KEY_ENV = "POLYFUSE_TEST_SERVE_KEY"
API_KEY = "s3cret-test-key"


# ---------------------------------------------------------------------------- helpers (shared)
def trained_toy(toy_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 5-input toy model, trained and exported to ONNX once per test session (the protocol
    tests reuse the same folder). The model is named after its folder: ``toy``."""
    import polyfuse
    from polyfuse.deploy.exporter import export

    folder = tmp_path_factory.getbasetemp() / "serve-model" / "toy"
    if not (folder / "model.onnx").exists():
        polyfuse.train(toy_spec(toy_csv, epochs=2), out=folder, show_progress=False)
        export(folder, data=toy_csv)  # data=: the toy split's validation rows are too few
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `polyfuse serve` subprocess; its output goes to a log file (a pipe could fill and block it)."""

    scheme: str = "http"
    verify: Any = True  # a TLS server's tests set https and an SSL context trusting its certificate

    def __init__(self, model_dir: Path, args: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
        self.port = free_port()
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"serve-{self.port}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "polyfuse", "serve", str(model_dir), "--host", "127.0.0.1",
               "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=cwd)
        self.wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} while starting:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server not ready within {START_TIMEOUT_S:g} s:\n{self.log()}")

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, verify=self.verify, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def assert_ready(server: Server) -> None:
    r = httpx.get(server.url + "/v2/health/ready", timeout=10)
    assert r.status_code == 200 and r.json() == {"ready": True}, r.text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def toy_records(toy_csv: Path, n: int = 4) -> list[dict[str, Any]]:
    """The first ``n`` toy rows as records with the image/audio files' bytes (as a client has them)."""
    frame = pd.read_csv(toy_csv).head(n)
    out = []
    for row in frame.to_dict("records"):
        out.append({"photo": (toy_csv.parent / row["photo"]).read_bytes(),
                    "sound": (toy_csv.parent / row["sound"]).read_bytes(),
                    "note": row["note"], "weight": float(row["weight"]), "color": row["color"]})
    return out


def as_json(record: dict[str, Any]) -> dict[str, Any]:
    return {k: b64(v) if isinstance(v, bytes) else v for k, v in record.items()}


def as_multipart(record: dict[str, Any]) -> tuple[dict, dict]:
    files = {k: (f"{k}.bin", v, "application/octet-stream") for k, v in record.items() if isinstance(v, bytes)}
    data = {k: str(v) for k, v in record.items() if not isinstance(v, bytes)}
    return files, data


def png_with_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR is patched (CRC fixed) to declare ``width`` x ``height``: the header
    says huge, the data is tiny and cannot decode to that size, so only a header check gives 413."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def check_prediction(got: dict[str, Any], label: str, proba: pd.Series) -> None:
    assert got["label"] == label
    dist = got["probabilities"]["label"]
    assert list(dist) == list(proba.index)
    assert np.abs(np.array([dist[c] for c in proba.index]) - proba.to_numpy()).max() <= 1e-4
    assert abs(got["label_probability"] - proba.max()) <= 1e-4


GOOD = {"note": "a catish", "weight": 0.5}  # a record with only cheap inputs
