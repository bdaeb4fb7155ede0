"""Tests for polyfuse.preprocess.audio: decoding, errors, librosa-exact features, batch, augmentation."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from polyfuse.errors import BadInputError, SpecError
from polyfuse.preprocess.audio import (
    AudioFeatureConfig,
    augment_wave,
    features,
    features_batch,
    mel_filterbank,
)
from polyfuse.preprocess.audio_file import decode_audio, write_wav

ROOT = Path(__file__).resolve().parents[1]


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _signals(sr: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sr)
    t = np.arange(int(0.73 * sr)) / sr  # not a multiple of the hop, so the last frame is partial
    pitch = 2 * np.pi * (120 * t + 15 * np.sin(2 * np.pi * 3 * t))  # vibrato "voice" with a formant-ish AM
    return {
        "chirp": np.sin(2 * np.pi * (100 + (sr / 2 - 200) * t / (2 * t[-1])) * t),
        "noise": 0.3 * rng.standard_normal(len(t)),
        "speech": np.sin(pitch) * np.sin(np.pi * t / t[-1]) ** 2 * (1 + 0.5 * np.sin(2 * np.pi * 700 * t)),
    }


# ----------------------------------------------------------------------------- librosa agreement
# Achieved: max |ours - librosa| <= 4e-4 (dB / MFCC units), i.e. <= 7e-6 of max|ref|; float32 rounding only.
ATOL, RTOL_OF_MAX = 2e-3, 5e-5


def test_features_match_librosa():
    librosa = pytest.importorskip("librosa")
    for sr in (16000, 8000):
        for name, y in _signals(sr).items():
            y = y.astype(np.float32)
            for kind in ("mfcc", "logmel"):
                cfg = AudioFeatureConfig(sample_rate=sr, features=kind, deltas=True)
                mel = librosa.feature.melspectrogram(
                    y=y, sr=sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                    window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels,
                    fmin=0.0, fmax=None, htk=False, norm="slaney")
                ref = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)
                if kind == "mfcc":
                    ref = librosa.feature.mfcc(S=ref, n_mfcc=cfg.n_mfcc)
                ref = np.concatenate([ref, librosa.feature.delta(ref, width=9),
                                      librosa.feature.delta(ref, width=9, order=2)]).T
                ours = features(y, cfg)
                assert ours.shape == ref.shape == (1 + len(y) // cfg.hop_length, cfg.n_features)
                assert ours.dtype == np.float32
                err = float(np.abs(ours - ref).max())
                assert err <= ATOL and err <= RTOL_OF_MAX * np.abs(ref).max(), (sr, name, kind, err)
                plain = features(y, AudioFeatureConfig(sample_rate=sr, features=kind))
                np.testing.assert_array_equal(plain, ours[:, : plain.shape[1]])


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(16000, 512, 64, 0.0, None), (8000, 256, 40, 50.0, 3500.0),
                                                       (22050, 1024, 128, 20.0, 8000.0)])
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    np.testing.assert_allclose(mel_filterbank(sr, n_fft, n_mels, fmin, fmax), ref, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- config
def test_config_geometry_and_from_spec():
    cfg = AudioFeatureConfig()
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.max_samples, cfg.max_frames) == (400, 160, 512, 16000, 101)
    assert cfg.n_features == 40 and AudioFeatureConfig(features="logmel", deltas=True).n_features == 192
    assert AudioFeatureConfig(sample_rate=8000).n_fft == 256

    class Spec:  # stands in for the spec's AudioInput, which has no fmin/fmax
        sample_rate, features, n_mels, deltas, max_seconds, augment = 8000, "logmel", 32, True, 2.0, None
    got = AudioFeatureConfig.from_spec(Spec())
    assert (got.sample_rate, got.features, got.n_mels, got.deltas, got.max_seconds, got.fmax) == (8000, "logmel", 32, True, 2.0, None)
    assert AudioFeatureConfig.from_spec({"n_mfcc": 13}).n_features == 13
    with pytest.raises(SpecError, match="'mfcc' or 'logmel'"):
        AudioFeatureConfig(features="stft")
    with pytest.raises(SpecError, match="n_mfcc"):
        AudioFeatureConfig(n_mfcc=80, n_mels=64)


# ----------------------------------------------------------------------------- decoding
def test_resample_keeps_frequency_and_doubles_length(tmp_path):
    path = tmp_path / "tone8k.wav"
    write_wav(path, _sine(1000, 8000, 1.0), 8000)
    y = decode_audio(path, 16000)
    assert y.dtype == np.float32 and y.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.fft.rfftfreq(len(y), 1 / 16000)[spectrum.argmax()] == pytest.approx(1000, abs=1)
    assert np.abs(y).max() == pytest.approx(1.0, abs=1e-6)


def test_path_bytes_array_identical(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, _sine(440, 16000, 0.5, amp=0.3), 16000)
    from_path = decode_audio(path, 16000, where="a.wav")
    from_str = decode_audio(str(path), 16000)
    from_bytes = decode_audio(path.read_bytes(), 16000)
    from_array = decode_audio(sf.read(path)[0], 16000)
    for other in (from_str, from_bytes, from_array):
        np.testing.assert_array_equal(from_path, other)
    assert np.abs(from_path).max() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("fmt,atol", [("FLAC", 1e-3), ("OGG", None)])
def test_flac_and_ogg(tmp_path, fmt, atol):
    ref = _sine(440, 16000, 0.5)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, ref, 16000, format=fmt)
    y = decode_audio(path, 16000)
    assert y.dtype == np.float32 and abs(len(y) - len(ref)) <= 1
    n = min(len(y), len(ref))
    if atol is not None:
        np.testing.assert_allclose(y[:n], ref[:n] / 0.5, atol=atol)
    else:  # lossy: still clearly the same tone
        assert np.corrcoef(y[:n], ref[:n])[0, 1] > 0.95


def test_stereo_mixed_to_mono(tmp_path):
    tone = _sine(300, 16000, 0.25)
    path = tmp_path / "st.wav"
    write_wav(path, np.stack([tone, 0.5 * tone], axis=1), 16000)
    y = decode_audio(path, 16000)
    assert y.ndim == 1 and len(y) == len(tone)
    np.testing.assert_allclose(y, tone / np.abs(tone).max(), atol=2e-4)
    channels_first = decode_audio(np.stack([tone, tone]), 16000)  # [2, N] is recognised
    np.testing.assert_allclose(channels_first, tone / np.abs(tone).max(), atol=1e-6)


def _reason(excinfo) -> str:
    return str(excinfo.value)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match=r"'.*nope\.wav' does not exist; check the path"):
        decode_audio(tmp_path / "nope.wav", 16000)
    with pytest.raises(BadInputError, match="is a directory"):
        decode_audio(tmp_path, 16000)


def test_corrupt_bytes_and_file(tmp_path):
    with pytest.raises(BadInputError) as e:
        decode_audio(b"this is not audio" * 20, 16000, where="clip7.wav")
    assert "'clip7.wav' could not be decoded (Format not recognised" in _reason(e) and "drop the row" in _reason(e)
    path = tmp_path / "junk.wav"
    path.write_bytes(b"\x00\x01" * 100)
    with pytest.raises(BadInputError, match=r"junk\.wav' could not be decoded"):
        decode_audio(path, 16000)
    assert "BytesIO" not in _reason(e)


def test_truncated_wav_detected_from_header(tmp_path):
    good = tmp_path / "good.wav"
    write_wav(good, _sine(440, 16000, 1.0), 16000)
    data = good.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    # libsndfile itself accepts the cut file and just reports fewer frames:
    assert 0 < sf.info(str(cut)).frames < 16000
    with pytest.raises(BadInputError, match=r"'.*cut\.wav' is truncated \(header declares 32000 bytes"):
        decode_audio(cut, 16000)
    with pytest.raises(BadInputError, match=r"'cut\.wav' is truncated"):
        decode_audio(data[: len(data) // 2], 16000, where="cut.wav")


def test_truncated_flac_reported(tmp_path):
    path = tmp_path / "cut.flac"
    buf = io.BytesIO()
    sf.write(buf, _sine(440, 16000, 1.0), 16000, format="FLAC")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadInputError, match=r"cut\.flac' (could not be decoded|is truncated)"):
        decode_audio(path, 16000)


def test_empty_silent_and_bad_arrays(tmp_path):
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(BadInputError, match=r"empty\.wav' contains no audio samples"):
        decode_audio(empty, 16000)
    silent = tmp_path / "silent.wav"
    write_wav(silent, np.zeros(8000, np.float32), 16000)
    with pytest.raises(BadInputError) as e:
        decode_audio(silent, 16000)
    assert "silent.wav' is silent (peak amplitude 0); check the recording or drop the row" in _reason(e)
    with pytest.raises(BadInputError, match=r"'row3' is silent \(peak amplitude 5e-05\)"):
        decode_audio(np.full(100, 5e-5), 16000, where="row3")
    with pytest.raises(BadInputError, match="NaN or infinite"):
        decode_audio(np.array([0.1, np.nan]), 16000)
    with pytest.raises(BadInputError, match="unsupported type int"):
        decode_audio(3, 16000)


# ----------------------------------------------------------------------------- batch / denoise
@pytest.mark.parametrize("kw", [{}, {"features": "logmel", "deltas": True}, {"deltas": True, "denoise": True}])
def test_batch_equals_per_item(kw):
    cfg = AudioFeatureConfig(**kw)
    rng = np.random.default_rng(1)
    sizes = [16000, 9000, 20000, 1000, 100, 0, 15999]  # exact, short, long (cropped), < 9 frames, 1 frame, empty
    waves = [(rng.standard_normal(n) * rng.uniform(0.1, 1)).astype(np.float32) for n in sizes]
    feats, lengths = features_batch(waves, cfg)
    assert feats.shape == (len(waves), cfg.max_frames, cfg.n_features) and feats.dtype == np.float32
    assert lengths.dtype == np.int64 and lengths.min() >= 1
    for i, w in enumerate(waves):
        one = features(w[: cfg.max_samples], cfg)
        assert lengths[i] == len(one) == min(cfg.max_frames, 1 + len(w) // cfg.hop_length)
        np.testing.assert_allclose(feats[i, : lengths[i]], one, atol=1e-4, rtol=1e-5)
        assert not feats[i, lengths[i]:].any()
    assert np.isfinite(feats).all()


def test_denoise_raises_tone_to_background_ratio():
    sr = 16000
    rng = np.random.default_rng(0)
    t = np.arange(sr) / sr
    tone_on = (t > 0.3) & (t < 0.7)  # leaves quiet (noise-only) frames for the floor estimate
    y = (0.05 * np.sin(2 * np.pi * 1000 * t) * tone_on + 0.05 * rng.standard_normal(sr)).astype(np.float32)
    band = int(np.abs(mel_filterbank(sr, 512, 64)[:, round(1000 * 512 / sr)]).argmax())

    def ratio(denoise: bool) -> float:
        f = features(y, AudioFeatureConfig(features="logmel", denoise=denoise))
        on = f[40:60]  # frames fully inside the tone
        return float(on[:, band].mean() - np.median(np.delete(on, [band - 1, band, band + 1], axis=1)))

    assert ratio(True) > ratio(False) + 3.0  # dB


# ----------------------------------------------------------------------------- augmentation
def test_augment_deterministic_and_shapes():
    wave = _sine(440, 16000, 0.8)
    kw = dict(sample_rate=16000, speed=(0.9, 1.1), random_crop=True, max_seconds=1.0, noise_snr_db=(10, 20))
    a = augment_wave(wave, np.random.default_rng(5), **kw)
    b = augment_wave(wave, np.random.default_rng(5), **kw)
    c = augment_wave(wave, np.random.default_rng(6), **kw)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and not np.array_equal(a, c)
    np.testing.assert_array_equal(augment_wave(wave, np.random.default_rng(0), sample_rate=16000), wave)


def test_augment_speed_crop_noise():
    rng = np.random.default_rng(0)
    wave = _sine(440, 16000, 1.0)
    slow = augment_wave(wave, rng, sample_rate=16000, speed=(0.9, 0.9))
    assert len(slow) == round(16000 / 0.9)  # ~1.11x longer
    for n in (40000, 16000, 5000):
        for _ in range(5):
            out = augment_wave(np.ones(n, np.float32), rng, sample_rate=16000, random_crop=True, max_seconds=1.0)
            assert len(out) <= 16000
            if n < 16000:  # shifted right by at most 10 % of max length, never dropped
                assert len(out) - n <= 1600 and out.sum() == n
    noisy = augment_wave(wave, rng, sample_rate=16000, noise_snr_db=(20, 20))
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((noisy - wave).astype(np.float64) ** 2))
    assert snr == pytest.approx(20, abs=0.5)


def test_augment_noise_p_leaves_a_share_of_clips_clean():
    wave = _sine(440, 16000, 0.5)
    rng = np.random.default_rng(1)
    clean = sum(np.array_equal(augment_wave(wave, rng, sample_rate=16000, noise_snr_db=(0, 0), noise_p=0.3), wave)
                for _ in range(400))
    assert 230 < clean < 330  # ~70 % untouched
    rng = np.random.default_rng(1)
    assert not any(np.array_equal(augment_wave(wave, rng, sample_rate=16000, noise_snr_db=(0, 0)), wave)
                   for _ in range(50))


def test_write_wav_roundtrip_clips(tmp_path):
    path = tmp_path / "w.wav"
    write_wav(path, np.array([0.0, 0.5, 2.0, -3.0], np.float32), 8000)
    data, sr = sf.read(path)
    assert sr == 8000 and sf.info(str(path)).subtype == "PCM_16"
    np.testing.assert_allclose(data, [0.0, 0.5, 1.0, -1.0], atol=1e-4)


# ----------------------------------------------------------------------------- torch-free import
def test_imports_without_torch_librosa_scipy():
    code = (
        "import sys\n"
        "for m in ('torch', 'librosa', 'scipy', 'numba'): sys.modules[m] = None\n"
        "import polyfuse.preprocess.audio as a\n"
        "import numpy as np\n"
        "cfg = a.AudioFeatureConfig(deltas=True, denoise=True)\n"
        "f, n = a.features_batch([np.random.default_rng(0).standard_normal(8000)], cfg)\n"
        "assert f.shape == (1, 101, 120), f.shape\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
