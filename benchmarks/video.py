"""Video decode and preprocessing rate (issue 14 target: >= 200 frames/s on 2 cores at 64x64), in one run.

Generates short MPEG-4 clips (a square moving over noise, 128x128, 24 fps, 2 s each) and decodes them
with polyfuse's video preprocessing (PyAV; frames sampled at 12 fps, resized and cropped to 64x64):
once in this process, once over a pool of 2 processes (how shards decode tables). The baseline is
PyAV alone decoding every frame to RGB in this process, measured in the same run.

    PYTHONPATH=. python benchmarks/video.py [--clips 40]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from polyfuse.preprocess.video import write_video

os.environ.setdefault("OMP_NUM_THREADS", "1")
FPS, SECONDS, SIDE = 24, 2.0, 128
CFG = SimpleNamespace(fps=12.0, max_frames=32, size=64, mean=None, std=None)


def write_clip(path: Path, seed: int) -> None:
    """A bright block moving down over noise, FPS x SECONDS frames of SIDE x SIDE."""
    rng = np.random.default_rng(seed)
    n = int(FPS * SECONDS)
    frames = []
    for i in range(n):
        img = rng.integers(0, 60, (SIDE, SIDE, 3), dtype=np.uint8)
        y = i * (SIDE - 24) // n
        img[y:y + 24, 40:64] = 230
        frames.append(img)
    write_video(path, frames, FPS)


def decode_polyfuse(path: str) -> int:
    from polyfuse.preprocess import video

    return int(video.decode(Path(path), CFG, Path(path).parent).shape[0])


def decode_raw(path: str) -> int:
    import av

    with av.open(path) as c:
        return sum(1 for f in c.decode(video=0) if f.to_ndarray(format="rgb24") is not None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=40)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="polyfuse-video-"))
    paths = [str(root / f"clip{i}.mp4") for i in range(args.clips)]
    for i, p in enumerate(paths):
        write_clip(Path(p), i)
    decode_polyfuse(paths[0])  # imports, codec set-up

    t = time.perf_counter()
    raw = sum(decode_raw(p) for p in paths)
    raw_s = time.perf_counter() - t
    t = time.perf_counter()
    one = sum(decode_polyfuse(p) for p in paths)
    one_s = time.perf_counter() - t
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(decode_polyfuse, paths[:2]))  # start the workers outside the timing
        t = time.perf_counter()
        two = sum(pool.map(decode_polyfuse, paths, chunksize=4))
        two_s = time.perf_counter() - t
    source = raw  # every clip's frames pass through the decoder, sampled or not
    print(f"{args.clips} clips of {SECONDS:.0f} s, {SIDE}x{SIDE} at {FPS} fps -> {CFG.size}x{CFG.size} at {CFG.fps:.0f} fps")
    print(f"PyAV alone, every frame to RGB : {raw / raw_s:7.0f} source frames/s")
    print(f"polyfuse, 1 process            : {source / one_s:7.0f} source frames/s, {one / one_s:6.0f} output frames/s "
          f"({raw_s / one_s:.2f}x PyAV alone)")
    print(f"polyfuse, 2 processes          : {source / two_s:7.0f} source frames/s, {two / two_s:6.0f} output frames/s "
          f"({one_s / two_s:.2f}x 1 process)")
    verdict = "PASS" if source / two_s >= 200 else "FAIL"
    print(f"target >= 200 frames/s decoded and preprocessed on 2 cores: {source / two_s:.0f}  {verdict}")


if __name__ == "__main__":
    main()
