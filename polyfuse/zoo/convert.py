"""A zoo name to a transformers folder: the package's own folder, or one converted from its file once into
the cache, named by the file's sha256 so that another version converts afresh and a finished conversion
is never redone. Apart from :mod:`polyfuse.zoo.catalog` because converting needs torch, and the catalog
is read by `polyfuse init`, which must not.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from polyfuse.artifact import sha256
from polyfuse.errors import SpecError
from polyfuse.zoo.catalog import RECORD, cache_root, describe, entry, model_file


def _convert_e5(source: Path, folder: Path) -> None:
    from polyfuse.zoo import e5_packed

    e5_packed.write_folder(e5_packed.read(source), folder)


def _convert_efficientnet_lite(source: Path, folder: Path) -> None:
    from polyfuse.zoo import efficientnet_lite

    efficientnet_lite.write_folder(source, folder)


def _convert_use(source: Path, folder: Path) -> None:
    from polyfuse.zoo import use_multilingual

    use_multilingual.write_folder(source, folder)


def _convert_whisper(source: Path, folder: Path) -> None:
    from polyfuse.zoo import ct2_whisper

    ct2_whisper.write_folder(source, folder)


CONVERTERS = {"e5-packed": _convert_e5, "efficientnet-lite-pth": _convert_efficientnet_lite,
              "ctranslate2-whisper": _convert_whisper, "use-npz": _convert_use}


def resolve(name: str, download: bool = False) -> Path:
    """The transformers folder of zoo model ``name``, converted into the cache the first time."""
    e = entry(name)
    try:
        source = model_file(name, download)
    except SpecError as missing:
        raise SpecError(f"{missing}, or set `download: true` on the encoder") from None
    if e.format in ("transformers", "onnx"):  # used as they are
        return source
    digest = sha256(source)
    folder = cache_root() / f"{name}-{digest[:16]}"
    if (folder / RECORD).is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    CONVERTERS[e.format](source, tmp)
    record = {**describe(e), "file": str(source), "sha256": digest}
    (tmp / RECORD).write_text(json.dumps(record, indent=1))  # written last: a folder with it is complete
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
