"""Video inputs: decode (PyAV), sample frames by timestamp, resize/center-crop, masks; audio tracks.

numpy + PyAV + Pillow only: the torch-free runtime imports this (PyAV, the `video` extra, is imported
when a video is decoded). A decoded clip is uint8 [frames, size, size, 3] RGB, at most
``max_frames`` frames taken at ``fps`` by each frame's presentation time (so variable frame rate
video is sampled at the right moments); ``collate`` scales and normalises the frames the way image
inputs are (:func:`polyfuse.preprocess.image.normalise`), pads a shorter clip with zero frames and
marks the real ones in a per-frame ``mask``.

:func:`decode_audio_track` reads the sound of a video for an audio input with ``track: audio``; the
audio input's own preprocessing takes it from there.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from polyfuse.errors import BadInputError
from polyfuse.preprocess.budget import UNLIMITED, DecodeBudget

FILE_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ogv", ".gif")
_FIT_FRAMES_PER_CLIP = 4  # frames per training clip that the normalisation statistics look at


def _av() -> Any:
    from polyfuse.extras import require

    require("video", "a video input (or an audio input with `track: audio`)")
    import av

    return av


def _label(value: Any, source: Any) -> str:
    if isinstance(value, str) and not value.lstrip().startswith("data:"):
        return f"video file '{value}'"
    return "video data (bytes)" if isinstance(source, bytes) else f"video file '{source}'"


def _open(av: Any, source: bytes | Path, label: str) -> Any:
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), mode="r")
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise BadInputError(f"{label} could not be opened as a video ({_reason(e)}); re-encode it (e.g. "
                            "ffmpeg -i IN -c:v libx264 OUT.mp4) or leave the cell empty") from None


def _reason(e: Exception) -> str:
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__).strip()


def _square(img: Any, size: int) -> np.ndarray:
    """A Pillow image -> uint8 [size, size, 3]: the shorter side resized to ``size``, then center-cropped."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _targets(fps: float, max_frames: int, duration: float | None) -> Iterator[float] | np.ndarray:
    """Sample times (seconds from the first frame): every 1/fps, or, when the known duration holds
    more than ``max_frames`` of them, ``max_frames`` spread evenly over it."""
    if duration is not None and duration * fps > max_frames:
        grid = np.arange(0.0, duration, 1.0 / fps)
        return grid[np.linspace(0, len(grid) - 1, max_frames).round().astype(int)]
    return (k / fps for k in range(1 << 30))


def sample_frames(frames: Iterator[tuple[float, Any]], cfg: Any, duration: float | None, label: str,
                  budget: DecodeBudget, to_array: Callable[[Any], np.ndarray] | None = None) -> np.ndarray:
    """Pick from (time, frame) pairs in presentation order the frame showing at each sample time (the
    last one that started at or before it) -> uint8 [n, size, size, 3], n <= max_frames. ``to_array``
    turns a Pillow frame into the stored array (default: resize + center crop to ``size``)."""
    to_array = to_array or (lambda img: _square(img, cfg.size))
    targets = iter(_targets(cfg.fps, cfg.max_frames, duration))
    want = next(targets, None)
    picked: list[np.ndarray] = []
    prev = prev_arr = None
    t0 = None
    last_t = 0.0

    def take(frame: Any) -> np.ndarray:
        arr = to_array(frame.to_image() if hasattr(frame, "to_image") else frame)
        budget.charge(arr.nbytes, label)
        return arr

    for t, frame in frames:
        budget.check()
        t0 = t if t0 is None else t0
        t = t - t0
        while want is not None and want < t - 1e-6:  # the previous frame was on screen at `want`
            if prev_arr is None:
                prev_arr = take(prev if prev is not None else frame)
            picked.append(prev_arr)
            want = next(targets, None)
        if want is None:
            break
        prev, prev_arr, last_t = frame, None, t
    if prev is not None and want is not None and want <= last_t + 1e-6:  # the last frame's own sample time(s)
        arr = take(prev)
        while want is not None and want <= last_t + 1e-6:
            picked.append(arr)
            want = next(targets, None)
    if not picked:
        return np.zeros((0, cfg.size, cfg.size, 3), np.uint8)
    out = np.stack(picked)
    if len(out) > cfg.max_frames:  # unknown duration: spread evenly afterwards
        out = out[np.linspace(0, len(out) - 1, cfg.max_frames).round().astype(int)]
    return out


def _video_frames(av: Any, container: Any, stream: Any, label: str) -> Iterator[tuple[float, Any]]:
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    try:
        for i, frame in enumerate(container.decode(stream)):
            t = frame.time
            yield (float(t) if t is not None else i / rate), frame
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise BadInputError(f"{label} is damaged or truncated ({_reason(e)}); re-encode it or leave the cell empty") \
            from None


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _from_array(value: np.ndarray, cfg: Any, budget: DecodeBudget, to_array: Callable[[Any], np.ndarray] | None
                ) -> np.ndarray:
    """Frames given as an array [frames, height, width, 3] (uint8, or floats in [0, 1]), taken to be at ``fps``."""
    from PIL import Image

    arr = np.asarray(value)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise BadInputError(f"video array has shape {list(arr.shape)}; expected [frames, height, width, 3]")
    if arr.dtype != np.uint8:
        arr = (np.clip(np.nan_to_num(arr.astype(np.float32)), 0, 1) * 255).round().astype(np.uint8)
    frames = ((i / cfg.fps, Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f)) for i, f in enumerate(arr))
    return sample_frames(frames, cfg, len(arr) / cfg.fps, "video array", budget, to_array)


def decode(value: Any, cfg: Any, folder: Path, budget: DecodeBudget = UNLIMITED) -> np.ndarray:
    """One cell (a path relative to the table's folder, file bytes, or a frame array) -> uint8
    [frames, size, size, 3]. Raises BadInputError naming the file and what is wrong: undecodable,
    truncated, no video stream, no frames."""
    from polyfuse.data.io import resolve_media  # local: keeps this module's import light for the runtime

    return decode_source(resolve_media(value, folder), value, cfg, budget)


def decode_source(source: Any, value: Any, cfg: Any, budget: DecodeBudget = UNLIMITED,
                  to_array: Callable[[Any], np.ndarray] | None = None) -> np.ndarray:
    """:func:`decode` of a resolved cell (file path, bytes or frame array; ``value`` names it in errors),
    each sampled frame stored as ``to_array`` makes it (default: ``size`` x ``size`` RGB)."""
    if isinstance(source, np.ndarray):
        out = _from_array(source, cfg, budget, to_array)
    else:
        av = _av()
        label = _label(value, source)
        container = _open(av, source, label)
        with container:
            if not container.streams.video:
                raise BadInputError(f"{label} has no video stream (streams: "
                                    f"{[s.type for s in container.streams] or 'none'}); expected a video file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            out = sample_frames(_video_frames(av, container, stream, label), cfg, _duration(container, stream),
                                label, budget, to_array)
        if len(out) == 0:
            raise BadInputError(f"{label} has no decodable frames (empty or truncated); re-encode it or leave the "
                                "cell empty")
    return out


def decode_audio_track(source: bytes | Path, sample_rate: int, label: str, budget: DecodeBudget = UNLIMITED
                       ) -> np.ndarray:
    """The sound of a video file, mono float32 at ``sample_rate`` (resampled by FFmpeg). Raises
    BadInputError when the file has no audio stream or cannot be decoded."""
    av = _av()
    container = _open(av, source, label)
    chunks: list[np.ndarray] = []
    with container:
        if not container.streams.audio:
            raise BadInputError(f"{label} has no audio track (streams: {[s.type for s in container.streams]}); "
                                "an audio input with `track: audio` needs a video with sound, or leave the cell "
                                "empty")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=int(sample_rate))
        total = 0
        try:
            for frame in container.decode(stream):
                budget.check()
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1).astype(np.float32)
                    total += chunk.nbytes
                    budget.charge(chunk.nbytes, label)
                    chunks.append(chunk)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
        except (av.FFmpegError, OSError, ValueError, EOFError) as e:
            raise BadInputError(f"{label}'s audio track is damaged or truncated ({_reason(e)}); re-encode it or "
                                "leave the cell empty") from None
    if not chunks:
        raise BadInputError(f"{label}'s audio track holds no samples; re-encode it or leave the cell empty")
    return np.concatenate(chunks)


def sound_of(source: Any, cfg: Any, where: str, sample_rate: int, budget: DecodeBudget = UNLIMITED) -> Any:
    """For an audio input with ``track: audio``: a video file's sound as a mono waveform at
    ``sample_rate`` (arrays pass through, taken to be that sound already); otherwise ``source`` as is."""
    if getattr(cfg, "track", None) != "audio" or isinstance(source, np.ndarray):
        return source
    label = f"video file '{where}'" if where and not where.startswith("data:") else "video data (bytes)"
    return decode_audio_track(source, sample_rate, label, budget)


# ----------------------------------------------------------------------------- fitted state, batches
def _as_images(clip: np.ndarray) -> np.ndarray:
    """uint8 [frames, H, W, 3] -> float32 [frames, 3, H, W] in [0, 1]."""
    return clip.transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def fit(values: list[np.ndarray | None], cfg: Any) -> dict:
    """Per-channel mean/std over (a few evenly spread frames of each) training clip, as image inputs do."""
    from types import SimpleNamespace

    from polyfuse.preprocess import image

    def frames() -> Iterator[np.ndarray]:
        for v in values:
            if v is not None and len(v):
                idx = np.unique(np.linspace(0, len(v) - 1, min(len(v), _FIT_FRAMES_PER_CLIP)).round().astype(int))
                yield from _as_images(v[idx])

    return image.fit(frames(), SimpleNamespace(channels=3, mean=cfg.mean, std=cfg.std))


def collate(values: list[np.ndarray | None], cfg: Any, state: dict, train: bool,
            rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """``name`` [B, max_frames, 3, size, size] normalised (padding 0), ``name__mask`` [B, max_frames]
    (1 = a real frame), ``name__length`` and ``name__present``."""
    from polyfuse.preprocess.image import augment, augments, normalise

    def frames_of(clip: np.ndarray, seed: int | None) -> np.ndarray:
        frames = _as_images(clip)
        if seed is not None:  # one draw per clip: every frame gets the same crop, flip and occluder
            frames = np.stack([augment(f, cfg.augment, np.random.default_rng(seed)) for f in frames])
        return normalise(frames, state)

    jitter = train and rng is not None and augments(cfg)
    return pad_clips(values, cfg.max_frames, (cfg.size, cfg.size), frames_of, rng if jitter else None)


def pad_clips(values: list[np.ndarray | None], T: int, shape: tuple[int, int],
              frames_of: Callable[[np.ndarray, int | None], np.ndarray],
              rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Clips -> ``""`` float32 [B, T, 3, H, W] (padding 0), ``mask`` [B, T] (1 = a real frame),
    ``length`` and ``present``. ``frames_of(clip, seed)`` gives a clip's first T frames as model
    pixels; ``seed`` (None without ``rng``) is drawn once per clip, so its frames can share an augment."""
    x = np.zeros((len(values), T, 3, *shape), dtype=np.float32)
    mask = np.zeros((len(values), T), dtype=np.float32)
    for i, v in enumerate(values):
        if v is None or not len(v):
            continue
        n = min(len(v), T)
        seed = int(rng.integers(2**32)) if rng is not None else None
        x[i, :n] = frames_of(v[:n], seed)
        mask[i, :n] = 1.0
    length = mask.sum(1).astype(np.int64)
    return {"": x, "mask": mask, "length": length, "present": length > 0}


def augments(cfg: Any) -> bool:
    from polyfuse.preprocess import image

    return image.augments(cfg)


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 8, times: list[float] | None = None,
                audio: np.ndarray | None = None, sample_rate: int = 16000, audio_codec: str = "mp2") -> Path:
    """Write uint8 [H, W, 3] frames as MPEG-4 video (the container from the file's suffix), with
    ``times`` (seconds) for a variable frame rate and ``audio`` (mono, [-1, 1]) as a sound track in
    ``audio_codec`` (one the container takes: mp2, aac; pcm_s16le in .mkv). For synthetic sets and
    tests, as :func:`polyfuse.preprocess.audio_file.write_wav` is for audio."""
    from fractions import Fraction

    av = _av()
    with av.open(str(path), mode="w") as out:
        v = out.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        if times is not None:
            v.codec_context.time_base = v.time_base = Fraction(1, 1000)
        a = out.add_stream(audio_codec, rate=sample_rate, layout="mono") if audio is not None else None
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times is not None:
                f.pts, f.time_base = int(round(times[i] * 1000)), Fraction(1, 1000)
            out.mux(v.encode(f))
        out.mux(v.encode())
        if a is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]
            af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            af.sample_rate, af.pts = sample_rate, 0
            out.mux(a.encode(af))
            out.mux(a.encode())
    return Path(path)
