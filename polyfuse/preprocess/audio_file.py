"""Audio files and arrays to mono float32 waves at the input's rate: wav/flac/ogg/mp3 through
soundfile (bytes or a path), numpy arrays, resampling with soxr; truncated, empty, silent or
non-finite audio refused with the file named. Shared by the built-in audio features
(:mod:`polyfuse.preprocess.audio`), pretrained audio encoders and video sound tracks; the server's
admission probe reads a file's length here before anything is decoded.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from polyfuse.errors import BadInputError, MediaTooLarge
from polyfuse.preprocess.budget import AUDIO_BLOCK_FRAMES, UNLIMITED, DecodeBudget

SILENCE_PEAK = 1e-4


def _riff_truncation(f) -> tuple[int, int] | None:
    """(declared, present) data bytes when a RIFF/WAVE file is cut short, else None.

    libsndfile silently shrinks the frame count to what is on disk, so a half-copied wav
    would otherwise decode as a shorter, valid clip.
    """
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    total = f.seek(0, io.SEEK_END)
    pos = 12
    while pos + 8 <= total:
        f.seek(pos)
        cid, size = struct.unpack("<4sI", f.read(8))
        if cid == b"data":
            # 0 / 0xFFFFFFFF are what streaming writers leave when the length was unknown.
            if size in (0, 0xFFFFFFFF) or total - pos - 8 >= size:
                return None
            return size, total - pos - 8
        pos += 8 + size + (size & 1)
    return None


def probe_audio(data: bytes, budget: DecodeBudget, label: str) -> int | None:
    """Check a clip's header against ``budget``; returns the samples (frames x channels) it declares,
    or None when the header cannot be read (decoding then reports why)."""
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError):
        return None
    budget.check_audio(info.frames, info.samplerate, info.channels, label)
    return int(info.frames) * int(info.channels)


def _read(opener, label: str, budget: DecodeBudget) -> tuple[np.ndarray, int]:
    """(mono float32, sample rate). Read in blocks that are mixed down at once, so memory is one
    channel's worth whatever the channel count, and the budget (header, frames really read, deadline)
    is checked before and between blocks."""
    try:
        with opener() as fh:
            cut = _riff_truncation(fh)
            if cut is not None:
                raise BadInputError(f"{label} is truncated (header declares {cut[0]} bytes of audio data, "
                                    f"only {cut[1]} present); re-copy or re-export the file, or drop the row")
            fh.seek(0)
            with sf.SoundFile(fh) as snd:
                expected, sr = snd.frames, snd.samplerate
                budget.check_audio(expected, sr, snd.channels, label)
                cap, parts, got = budget.max_audio_frames(sr), [], 0
                while got < expected:  # soundfile reads no further than the header's count
                    budget.check()
                    block = snd.read(min(AUDIO_BLOCK_FRAMES, expected - got), dtype="float32", always_2d=True)
                    if not len(block):
                        break
                    got += len(block)
                    if cap is not None and got > cap:  # the header understated the length
                        raise MediaTooLarge(f"{label} holds more than the {budget.max_audio_seconds:g} s allowed; "
                                            "send a shorter clip")
                    parts.append(block.mean(axis=1, dtype=np.float32))
    except (sf.SoundFileError, RuntimeError, ValueError, EOFError) as e:
        if isinstance(e, BadInputError):
            raise
        reason = getattr(e, "error_string", None) or str(e)
        raise BadInputError(f"{label} could not be decoded ({reason.strip()}); "
                            "check it is a valid wav/flac/ogg file, or drop the row") from None
    if got < expected:
        raise BadInputError(f"{label} is truncated (header declares {expected} frames, only {got} "
                            "could be decoded); re-copy or re-export the file, or drop the row")
    return (parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.float32)), sr


def decode_audio(source: str | Path | bytes | np.ndarray, sample_rate: int, where: str = "",
                 budget: DecodeBudget = UNLIMITED, *, normalize: bool = True) -> np.ndarray:
    """Decode a path / file bytes / array to mono float32 at ``sample_rate``, peak-normalised to 1
    unless ``normalize`` is False (pretrained extractors such as Whisper's log-mel depend on the scale).

    Arrays are taken to be at ``sample_rate`` already; 2-D arrays are [frames, channels]
    (as soundfile returns) unless the first axis is clearly the channel axis (<= 8 and shorter).
    Files are checked against ``budget`` from their header before decoding.
    Raises BadInputError for missing, undecodable, truncated, empty or silent audio.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = f"audio file '{where or path}'"
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise BadInputError(f"{label} {what}; check the path in the table")
        mono, sr = _read(lambda: open(path, "rb"), label, budget)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = f"audio data '{where}'" if where else "audio data (bytes)"
        mono, sr = _read(lambda: io.BytesIO(bytes(source)), label, budget)
    elif isinstance(source, np.ndarray):
        label = f"audio array '{where}'" if where else "audio array"
        data, sr = np.asarray(source, dtype=np.float32), sample_rate
        if data.ndim == 1:
            data = data[:, None]
        elif data.ndim == 2:
            if data.shape[0] <= 8 and data.shape[0] < data.shape[1]:
                data = data.T
        else:
            raise BadInputError(f"{label} has shape {source.shape}; expected [samples] or [samples, channels]")
        mono = data.mean(axis=1, dtype=np.float32)
    else:
        raise BadInputError(f"audio value {where + ' ' if where else ''}has unsupported type "
                            f"{type(source).__name__}; expected a file path, file bytes or a numpy array")
    if mono.size == 0:
        raise BadInputError(f"{label} contains no audio samples; check the recording or drop the row")
    if not np.isfinite(mono).all():  # a NaN or infinity in any channel carries into the mix
        raise BadInputError(f"{label} contains NaN or infinite samples; re-export it or drop the row")
    peak = float(np.abs(mono).max())
    if peak < SILENCE_PEAK:
        raise BadInputError(f"{label} is silent (peak amplitude {peak:.3g}); check the recording or drop the row")
    if sr != sample_rate:
        budget.check()
        mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
    return (mono / np.abs(mono).max() if normalize else mono).astype(np.float32)


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> None:
    """Write mono (or [frames, channels]) audio as 16-bit PCM wav, clipping to [-1, 1]."""
    sf.write(str(path), np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")
