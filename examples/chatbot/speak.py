"""The chatbot heard rather than read: a sample of CLINC150's test queries spoken by eSpeak NG (the speech
synthesiser polyfuse bundles; a voice, speed and pitch drawn per query), transcribed by Whisper tiny.en (the
zoo), and answered by the trained model from the transcript: a voice assistant's pipeline, speech to text
to intent, with no retraining.

    python examples/chatbot/speak.py runs/chatbot-serve examples/chatbot/data [--per-intent 5] [--oos 200]

Writes ``spoken/*.wav`` and ``spoken_test.csv`` / ``spoken_oos_test.csv`` into the data folder (``text`` is
the transcript, ``typed`` the query as written, ``audio`` the clip), then prints in-scope accuracy and
out-of-scope recall on the spoken queries beside the same queries typed, at the model's threshold
(``outputs.intent.abstain_below`` of its spec, or ``--abstain-below``), and the transcripts' word error rate.
A JSON report lands beside the model (``<model>.spoken.json``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from abstain import figures, top  # abstain.py, beside this script

import polyfuse
from polyfuse.data.speech import VOICES, synthesise
from polyfuse.errors import PolyfuseError
from polyfuse.preprocess.audio_file import write_wav
from polyfuse.zoo.asr import transcribe

RATE = 16_000
WPM = (150, 175, 210)  # slow, eSpeak's default, brisk
PITCHES = (30, 50, 70)


def word_errors(reference: str, heard: str) -> tuple[int, int]:
    """(word edits from ``reference`` to ``heard``, words in ``reference``): Levenshtein over lowercase words."""
    ref, hyp = (["".join(c for c in w if c.isalnum()) for w in s.lower().split()] for s in (reference, heard))
    ref, hyp = [w for w in ref if w], [w for w in hyp if w]
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def spoken(frame: pd.DataFrame, data: Path, name: str, rng: np.random.Generator) -> pd.DataFrame:
    """Speak and transcribe ``frame``'s queries; the spoken table (its ``text`` is what Whisper heard)."""
    items = [(t, VOICES[rng.integers(len(VOICES))], int(rng.choice(WPM)), int(rng.choice(PITCHES))) for t in frame["text"]]
    began = time.perf_counter()
    waves = synthesise(items, RATE)
    said = time.perf_counter()
    heard = transcribe(waves, RATE)
    done = time.perf_counter()
    (data / "spoken").mkdir(exist_ok=True)
    paths = [f"spoken/{name}-{i:05d}.wav" for i in range(len(waves))]
    for path, wave in zip(paths, waves):
        write_wav(data / path, wave, RATE)
    print(f"{name}: {len(waves)} queries spoken in {said - began:.1f} s, transcribed in {done - said:.1f} s "
          f"({len(waves) / max(done - said, 1e-9):.1f} clips/s)", flush=True)
    out = frame.assign(typed=frame["text"], text=heard, audio=paths, voice=[i[1] for i in items])
    out.to_csv(data / f"spoken_{name}.csv", index=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--per-intent", type=int, default=5, help="test queries spoken per intent")
    parser.add_argument("--oos", type=int, default=200, help="out-of-scope test queries spoken")
    parser.add_argument("--abstain-below", type=float, default=None, help="default: the model's own threshold")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    missing = [n for n in ("test.csv", "oos_test.csv") if not (args.data / n).is_file()]
    if missing:
        raise SystemExit(f"speak.py: {args.data} has no {' or '.join(missing)}: build it with "
                         f"python examples/chatbot/build_data.py --out {args.data}")
    try:  # first: a wrong path should not cost the speaking and the listening
        model = polyfuse.load(args.model)
    except PolyfuseError as e:
        raise SystemExit(f"speak.py: {e}") from None
    rng = np.random.default_rng(args.seed)
    test = pd.read_csv(args.data / "test.csv", keep_default_na=False)
    oos = pd.read_csv(args.data / "oos_test.csv", keep_default_na=False)
    sample = test.groupby("intent").sample(n=min(args.per_intent, test.groupby("intent").size().min()),
                                            random_state=args.seed).reset_index(drop=True)
    oos_sample = oos.sample(n=min(args.oos, len(oos)), random_state=args.seed).reset_index(drop=True)
    heard, heard_oos = spoken(sample, args.data, "test", rng), spoken(oos_sample, args.data, "oos_test", rng)
    threshold = args.abstain_below
    if threshold is None:
        threshold = model.spec.outputs["intent"].abstain_below or 0.0
    edits = [word_errors(t, h) for t, h in zip([*heard["typed"], *heard_oos["typed"]], [*heard["text"], *heard_oos["text"]])]
    answers = {"spoken": (top(model, heard), top(model, heard_oos)[0]), "typed": (top(model, sample), top(model, oos_sample)[0])}
    report = {"abstain_below": threshold, "queries": len(heard), "oos_queries": len(heard_oos),
              "word_error_rate": sum(e for e, _ in edits) / max(sum(n for _, n in edits), 1),
              **{k: figures(threshold, *a, o) for k, (a, o) in answers.items()},
              **{f"{k}_without_threshold": figures(0.0, *a, o)["in_scope_accuracy"] for k, (a, o) in answers.items()}}
    args.model.with_name(f"{args.model.name}.spoken.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
