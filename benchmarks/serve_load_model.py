"""serve_load.py's model and payloads: the avdigits model (or the demo's) trained and exported once and reused,
the network-bound model of step 1b, and the request bodies built from its test table."""
from __future__ import annotations

import argparse
import base64
import copy
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AVDIGITS, HOST, REPO, cli, log  # noqa: E402

PNG = b"\x89PNG"

def _loads(model_dir: Path) -> bool:
    """Whether the ONNX build there loads with the current code (a stale artifact is retrained)."""
    if not (model_dir / "model.onnx").exists():
        return False
    try:
        from polyfuse.runtime import Runtime

        Runtime(model_dir)
        return True
    except Exception as e:  # noqa: BLE001 - any failure means: rebuild it
        log(f"{model_dir}: does not load ({type(e).__name__}: {str(e)[:160]}); rebuilding it")
        return False


def prepare_model(args: argparse.Namespace) -> tuple[Path, Path, str]:
    """(model dir, test csv, data description): train + export unless a loadable build is there."""
    if args.model_dir:
        data = AVDIGITS / "test.csv" if (AVDIGITS / "test.csv").exists() else None
        if data is None:
            raise SystemExit("--model-dir needs ../shared/data/avdigits for its records")
        if not _loads(Path(args.model_dir)):
            raise SystemExit(f"--model-dir {args.model_dir}: not a loadable polyfuse model directory (train one with "
                             "`polyfuse train avdigits.yaml --out DIR`, then `polyfuse export DIR --to onnx`)")
        return Path(args.model_dir).resolve(), data, "avdigits (../shared/data), model given by --model-dir"
    if (AVDIGITS / "test.csv").exists():
        out, test_csv, what = REPO / "runs" / "bench-serve-av", AVDIGITS / "test.csv", "avdigits (../shared/data)"
        if args.retrain or not _loads(out):
            log(f"{out}: training avdigits.yaml (about a minute) ...")
            cli("train", "avdigits.yaml", "--out", out, "--quiet", cwd=REPO)  # the spec's paths are the repo's
    else:
        import polyfuse
        from polyfuse.cli.demo import default_root
        from polyfuse.data.demo import DEMO_SPEC, build_demo_dataset

        log(f"{AVDIGITS} is absent: falling back to the demo data and DEMO_SPEC")
        csv_path = build_demo_dataset(default_root())
        spec = copy.deepcopy(DEMO_SPEC)
        spec["data"].update(train=str(csv_path), test=str(csv_path.with_name("test.csv")))
        out, test_csv, what = REPO / "runs" / "bench-serve-demo", csv_path.with_name("test.csv"), "DEMO data (fallback)"
        if args.retrain or not _loads(out):
            polyfuse.train(spec, out=out, show_progress=False)
    if args.retrain or not (out / "model.onnx").exists() or not _loads(out):
        cli("export", out, "--to", "onnx", cwd=REPO)
    return out, test_csv, what


NETWORK_BOUND = {"encoder": "bigru", "dim": 512, "max_length": 128}  # the transcript input of the demo spec


def prepare_network_model(args: argparse.Namespace) -> tuple[Path, Path]:
    """A model whose network, not its preprocessing, dominates a request: the demo spec with its transcript
    read by a 512-wide BiGRU over 128 tokens (a few ms per record at batch 1 on one thread, against well
    under 1 ms of preprocessing). Trained for one epoch: step 1 measures throughput, not accuracy, and every
    answer is still checked against this process's prediction of the same record."""
    import polyfuse
    from polyfuse.cli.demo import default_root
    from polyfuse.data.demo import DEMO_SPEC, build_demo_dataset

    csv_path = build_demo_dataset(default_root())
    out = REPO / "runs" / "bench-serve-network"
    if args.retrain or not _loads(out) or not (out / "model.onnx").exists():
        log(f"{out}: training the network-bound model (one epoch, a minute or two) ...")
        spec = copy.deepcopy(DEMO_SPEC)
        spec["data"].update(train=str(csv_path), test=str(csv_path.with_name("test.csv")))
        spec["inputs"]["transcript"].update(NETWORK_BOUND)
        spec["train"]["epochs"] = 1
        polyfuse.train(spec, out=out, show_progress=False)
        cli("export", out, "--to", "onnx", cwd=REPO)
    return out, csv_path.with_name("test.csv")


@dataclass
class Payloads:
    records: list[dict[str, Any]]  # JSON-ready (base64 strings)
    raw_records: list[dict[str, Any]]  # bytes, for the in-process measurement
    labels: list[str]
    target: str = "label"
    expected: list[str] = field(default_factory=list)  # in-process ONNX predictions: what every answer must say
    single: list[bytes] = field(default_factory=list)  # {"records": [one]} bodies, pre-encoded
    multipart: list[tuple[bytes, str]] = field(default_factory=list)  # (body, content-type)
    malformed: list[tuple[str, bytes, str]] = field(default_factory=list)  # (kind, body, content-type)


def load_payloads(model_dir: Path, test_csv: Path, limit: int) -> Payloads:
    from polyfuse.spec.schema import load_spec

    spec, _ = load_spec(model_dir / "spec.yaml")
    inputs = [(spec.column(n), c.type) for n, c in spec.inputs.items()]
    target = next(iter(spec.outputs))
    folder = test_csv.parent
    records, raw_records, labels = [], [], []
    with open(test_csv, newline="") as f:
        for row in list(csv.DictReader(f))[:limit]:
            rec, raw = {}, {}
            for col, kind in inputs:
                value = row.get(col)
                if value in (None, ""):
                    continue
                if kind in ("image", "audio"):
                    data = (folder / value).read_bytes()
                    rec[col], raw[col] = base64.b64encode(data).decode("ascii"), data
                elif kind == "number":
                    rec[col] = raw[col] = float(value)
                else:
                    rec[col] = raw[col] = value
            records.append(rec)
            raw_records.append(raw)
            labels.append(str(row.get(spec.column(target), "")))
    p = Payloads(records, raw_records, labels, target)
    p.single = [json.dumps({"records": [r]}).encode() for r in records]
    for raw in raw_records[:50]:
        files = {k: (k + (".png" if v[:4] == PNG else ".wav"), v) for k, v in raw.items() if isinstance(v, bytes)}
        data = {k: str(v) for k, v in raw.items() if not isinstance(v, bytes)}
        req = httpx.Request("POST", f"http://{HOST}/predict", files=files, data=data or None)
        req.read()
        p.multipart.append((req.content, req.headers["content-type"]))
    media = next((c for c, k in inputs if k in ("image", "audio")), inputs[0][0])
    js = "application/json"
    p.malformed = [
        ("bad json", b'{"records": [', js),
        ("records not a list", b'{"records": "x"}', js),
        ("no records", b'{"records": []}', js),
        ("not an object", b"[1, 2, 3]", js),
        ("unknown field", json.dumps({"records": [{"no_such_input": 1}]}).encode(), js),
        ("bad base64", json.dumps({"records": [{media: "!!not base64!!"}]}).encode(), js),
        ("undecodable media", json.dumps({"records": [{media: base64.b64encode(b"garbage" * 20).decode()}]}).encode(), js),
        ("too many records", json.dumps({"records": [{}] * 65}).encode(), js),
        ("wrong content type", b"hello", "text/plain"),
        ("broken multipart", b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
         "multipart/form-data; boundary=xyz"),
    ]
    return p


def reference_predictions(model_dir: Path, p: Payloads) -> float:
    """Fill ``p.expected`` with this process's ONNX predictions (one record at a time); returns their accuracy."""
    from polyfuse.runtime import Runtime

    rt = Runtime(model_dir)
    p.expected = [str(rt.predict([rec])[0][p.target]) for rec in p.raw_records]
    return sum(e == t for e, t in zip(p.expected, p.labels)) / max(1, len(p.labels))

