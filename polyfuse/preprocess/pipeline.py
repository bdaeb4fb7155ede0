"""The one preprocessing pipeline that training, evaluation and serving all use.

Two stages: ``decode_table`` turns cells into decoded values once (file reads, image
resizing, audio resampling — the expensive part, cached for every later epoch), and
``Preprocessor.collate`` turns decoded values into model-ready numpy arrays per batch (cheap;
training-time augmentation lives here). Fitted state (vocabularies, means) is plain JSON.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from polyfuse.data.io import Table, is_missing, read_table, require_columns
from polyfuse.errors import BadInputError
from polyfuse.preprocess import (
    audio,
    hf,
    image,
    tabular,
    targets,
    text,
    timeseries,
    vad,
    video,
)
from polyfuse.preprocess.budget import UNLIMITED, DecodeBudget
from polyfuse.spec.inputs import hf_encoder
from polyfuse.spec.schema import Spec
from polyfuse.threads import usable_cpus


@dataclass(frozen=True)
class Modality:
    """The four plain functions that make up one modality's preprocessing."""

    decode: Callable[[Any, Any, Path, DecodeBudget], Any]  # (value, input config, folder, budget)
    fit: Callable[[list, Any], dict]
    collate: Callable[..., dict[str, np.ndarray]]
    augments: Callable[[Any], bool]


MODALITIES: dict[str, Modality] = {
    "image": Modality(image.decode, image.fit, image.collate, image.augments),
    "audio": Modality(audio.decode, audio.fit, audio.collate, audio.augments),
    "text": Modality(text.decode, text.fit, text.collate, text.augments),
    "number": Modality(tabular.decode_number, tabular.fit_number, tabular.collate_number, tabular.number_augments),
    "category": Modality(tabular.decode_category, tabular.fit_category, tabular.collate_category, tabular.never_augments),
    "timeseries": Modality(timeseries.decode, timeseries.fit, timeseries.collate, timeseries.augments),
    "video": Modality(video.decode, video.fit, video.collate, video.augments),
}

PRETRAINED = Modality(hf.decode, hf.fit, hf.collate, hf.augments)  # any input with `encoder: {hf: ...}`


def modality_of(cfg: Any) -> Modality:
    """The preprocessing of an input: its pretrained model's processor, or its type's own."""
    return PRETRAINED if hf_encoder(cfg) is not None else MODALITIES[cfg.type]


@dataclass
class BadRow:
    row: Any
    column: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, column '{self.column}': {self.message}"


@dataclass
class Decoded:
    """Decoded values of a table: per input a list (None = missing), per output a list of targets."""

    inputs: dict[str, list]
    targets: dict[str, list]
    rows: list[Any]  # the table's row ids of the rows kept, in order
    bad: list[BadRow] = field(default_factory=list)
    # frozen pretrained backbones' outputs per input (polyfuse.training.feature_cache), used instead of the raw values
    features: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, idx: Sequence[int]) -> "Decoded":
        def pick(values: Any) -> Any:  # a packed or on-disk column gives a view; a list, a list
            return values.take(idx) if hasattr(values, "take") else [values[i] for i in idx]

        return Decoded({k: pick(v) for k, v in self.inputs.items()}, {k: pick(v) for k, v in self.targets.items()},
                       pick(self.rows), self.bad, {k: pick(v) for k, v in self.features.items()})


def _decode_cell(mod: Modality, value: Any, cfg: Any, folder: Path, budget: DecodeBudget) -> Any:
    return None if is_missing(value) else mod.decode(value, cfg, folder, budget)


CHUNK_ROWS = 64  # rows decoded per thread-pool task


def _map_rows(one: Callable[[int], Any], n: int, workers: int | None,
              progress: Callable[[int], None] | None) -> list:
    """``[one(i) for i in range(n)]`` on a thread pool (decoders release the GIL), reporting progress."""
    if n <= 8:  # a few records (serving): a thread pool would cost more than it saves
        out = [one(i) for i in range(n)]
        if progress:
            progress(n)
        return out
    # a task per chunk of rows, not per row: ThreadPoolExecutor.map ignores chunksize, and a submit per
    # row cost 33 of the 39 s decoding I-94's 40,000 rows (5 columns) here
    chunks = [range(a, min(a + CHUNK_ROWS, n)) for a in range(0, n, CHUNK_ROWS)]
    with ThreadPoolExecutor(max_workers=workers or usable_cpus()) as pool:
        out = []
        for values in pool.map(lambda rows: [one(i) for i in rows], chunks):
            out.extend(values)
            if progress:
                progress(len(values))
    return out


def decode_table(spec: Spec, table: Table, *, with_targets: bool, on_bad_row: str = "skip",
                 progress: Callable[[int], None] | None = None, workers: int | None = None,
                 budget: DecodeBudget = UNLIMITED) -> Decoded:
    """Decode every input (and target) cell of a table; bad rows are skipped and listed, or raised.

    ``budget`` limits each media value (from its header, before decoding) and carries the deadline,
    checked before every cell: work for a request that has been answered stops there.
    """
    require_columns(table, [spec.column(n) for n in spec.inputs])
    if with_targets:
        require_columns(table, [spec.column(n) for n in spec.outputs], what="the spec's outputs")
    n, row_ids = len(table), table.rows
    bad: dict[int, BadRow] = {}

    def run_column(name: str, fn: Callable[[Any], Any]) -> list:
        column = spec.column(name)
        cells = table.columns[column]

        def one(i: int) -> Any:
            budget.check()
            try:
                return fn(cells[i])
            except BadInputError as e:
                if on_bad_row == "error":
                    raise type(e)(e.reason, row=row_ids[i], column=column) from None  # keeps MediaTooLarge
                bad.setdefault(i, BadRow(row_ids[i], column, e.reason))
                return None

        return _map_rows(one, n, workers, progress)

    inputs = {}
    for name, cfg in spec.inputs.items():
        mod = modality_of(cfg)
        inputs[name] = run_column(name, lambda v, m=mod, c=cfg: _decode_cell(m, v, c, table.folder, budget))
    for i in range(n):  # a record with nothing to go on gets an error, not a silent prior
        if i not in bad and all(inputs[name][i] is None for name in spec.inputs):
            message = (f"every input is missing ({', '.join(spec.column(n_) for n_ in spec.inputs)}); "
                       "the model needs at least one")
            if on_bad_row == "error":
                raise BadInputError(message, row=row_ids[i], column=None)
            bad[i] = BadRow(row_ids[i], "*", message)
    outs = {}
    if with_targets:
        for name, cfg in spec.outputs.items():
            outs[name] = run_column(name, lambda v, c=cfg: targets.decode(v, c))
    keep = [i for i in range(n) if i not in bad]
    decoded = Decoded(inputs, outs, row_ids, sorted(bad.values(), key=lambda b: str(b.row)))
    if len(keep) < n:
        decoded = decoded.subset(keep)
    return decoded


@dataclass
class Preprocessor:
    """Fitted preprocessing for one spec: turns decoded values into model-ready arrays."""

    spec: Spec
    state: dict[str, dict]

    @classmethod
    def fit(cls, spec: Spec, decoded: Decoded) -> "Preprocessor":
        """Fit vocabularies, means and class lists on the training rows only."""
        state = {name: modality_of(cfg).fit(decoded.inputs[name], cfg) for name, cfg in spec.inputs.items()}
        for name, cfg in spec.inputs.items():
            if hf_encoder(cfg) is not None:  # what the network is rebuilt from at load time
                state[name]["backbone"] = cfg.encoder._config
        for name, cfg in spec.outputs.items():
            state[name] = targets.fit(decoded.targets[name], cfg)
        return cls(spec, state)

    def augments(self) -> bool:
        """Whether training batches change between epochs (augmentation on some input)."""
        return any(modality_of(c).augments(c) for c in self.spec.inputs.values())

    def collate(self, decoded: Decoded, idx: Sequence[int] | None = None, *, train: bool = False,
                rng: np.random.Generator | None = None, only: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Model inputs for rows ``idx``: ``name`` plus ``name__present`` (and ``name__length``);
        ``only`` limits it to some inputs (e.g. the text ids the wide half reads, without images)."""
        batch: dict[str, np.ndarray] = {}
        for name, cfg in self.spec.inputs.items():
            if only is not None and name not in only:
                continue
            if name in decoded.features:
                values = decoded.features[name] if idx is None else [decoded.features[name][i] for i in idx]
                arrays = stack_features(values, self.state[name]["_feature_shape"])
            else:
                values = decoded.inputs[name] if idx is None else [decoded.inputs[name][i] for i in idx]
                arrays = modality_of(cfg).collate(values, cfg, self.state[name], train, rng)
            for key, arr in arrays.items():
                batch[f"{name}__{key}" if key else name] = arr
        return batch

    def targets(self, decoded: Decoded, idx: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        out = {}
        for name, cfg in self.spec.outputs.items():
            values = decoded.targets[name] if idx is None else [decoded.targets[name][i] for i in idx]
            out[name] = targets.encode(values, cfg, self.state[name])
        return out

    def transform(self, records: Any, folder: Path | None = None,
                  budget: DecodeBudget = UNLIMITED) -> tuple[dict[str, np.ndarray], Decoded]:
        """Decode and collate records for inference; a bad value raises with its row and column."""
        table = read_table(records, folder)
        if isinstance(records, (dict, list, tuple)):  # a record may omit an input: it is then missing
            for name in self.spec.inputs:
                table.columns.setdefault(self.spec.column(name), [None] * len(table))
        decoded = decode_table(self.spec, table, with_targets=False, on_bad_row="error", budget=budget)
        budget.check()
        return self.collate(decoded), decoded

    def to_json(self) -> str:
        clean = {n: {k: v for k, v in s.items() if not k.startswith("_")} for n, s in self.state.items()}
        return json.dumps({"format": "polyfuse.preprocess/1", "state": clean}, indent=1)

    @classmethod
    def from_json(cls, spec: Spec, text_: str) -> "Preprocessor":
        data = json.loads(text_)
        bind_pretrained(spec, data["state"])
        return cls(spec, data["state"])

    def classes(self, output: str) -> list[str]:
        return list(self.state[output].get("classes", []))


def bind_pretrained(spec: Spec, state: dict[str, dict]) -> None:
    """Give each pretrained encoder of ``spec`` its processor and config, and each VAD its model, from a
    fitted state."""
    for name, cfg in spec.inputs.items():
        enc = hf_encoder(cfg)
        if enc is not None:
            enc._processor, enc._config = state[name]["processor"], state[name].get("backbone")
        if cfg.type == "audio":
            vad.bind(cfg, state.get(name, {}))


def stack_features(values: list[np.ndarray | None], shape: Sequence[int]) -> dict[str, np.ndarray]:
    """Cached backbone outputs as a batch: ``features`` [B, H] (pooled, ``shape`` [H]) or [B, T, H] with
    ``length`` (sequences, ``shape`` [-1, H], padded), and presence; missing rows are zeros."""
    present = np.asarray([v is not None for v in values], dtype=bool)
    if len(shape) == 1:
        x = np.zeros((len(values), shape[0]), dtype=np.float32)
        for i, v in enumerate(values):
            if v is not None:
                x[i] = v
        return {"features": x, "present": present}
    length = np.asarray([0 if v is None else len(v) for v in values], dtype=np.int64)
    x = np.zeros((len(values), max(1, int(length.max(initial=0))), shape[-1]), dtype=np.float32)
    for i, v in enumerate(values):
        if v is not None:
            x[i, : len(v)] = v
    return {"features": x, "length": length, "present": present}
