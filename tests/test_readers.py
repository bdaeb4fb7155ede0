"""Tables in every format, media as paths or bytes, and bad rows named by row and column."""
import shutil

import numpy as np
import pandas as pd
import pytest

from polyfuse.data.io import read_table
from polyfuse.errors import BadInputError
from polyfuse.preprocess.audio_file import write_wav
from polyfuse.preprocess.pipeline import decode_table
from polyfuse.spec.schema import load_spec
from tests.conftest import toy_spec


def _spec(csv):
    return load_spec(toy_spec(csv))[0]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl", "dataframe", "records"])
def test_formats_decode_identically(toy_csv, tmp_path, fmt):
    frame = pd.read_csv(toy_csv).head(6)
    if fmt == "csv":
        src = toy_csv
    elif fmt == "parquet":
        src = toy_csv.with_name("t.parquet")
        frame.to_parquet(src)
    elif fmt == "jsonl":
        src = toy_csv.with_name("t.jsonl")
        frame.to_json(src, orient="records", lines=True)
    elif fmt == "dataframe":
        src = frame
    else:
        src = frame.to_dict("records")
    table = read_table(src, base=toy_csv.parent)
    decoded = decode_table(_spec(toy_csv), table, with_targets=True)
    ref = decode_table(_spec(toy_csv), read_table(toy_csv), with_targets=True)
    for i in range(6):
        assert np.array_equal(decoded.inputs["photo"][i], ref.inputs["photo"][i])
        assert np.array_equal(decoded.inputs["sound"][i], ref.inputs["sound"][i])
        assert decoded.inputs["note"][i] == ref.inputs["note"][i]
    assert decoded.targets["label"][:6] == ref.targets["label"][:6]


def test_bytes_in_cells(toy_csv):
    frame = pd.read_csv(toy_csv).head(3)
    frame["photo"] = [(toy_csv.parent / p).read_bytes() for p in frame["photo"]]
    frame["sound"] = [(toy_csv.parent / p).read_bytes() for p in frame["sound"]]
    decoded = decode_table(_spec(toy_csv), read_table(frame), with_targets=True)
    ref = decode_table(_spec(toy_csv), read_table(toy_csv), with_targets=True)
    assert np.array_equal(decoded.inputs["photo"][2], ref.inputs["photo"][2])
    assert np.array_equal(decoded.inputs["sound"][2], ref.inputs["sound"][2])


def _broken_copy(toy_csv, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(toy_csv.parent, folder)
    frame = pd.read_csv(folder / "toy.csv").head(12)
    (folder / "img" / "corrupt.png").write_bytes(b"garbage")
    write_wav(folder / "wav" / "silent.wav", np.zeros(4000, np.float32), 8000)
    full = (folder / "wav" / "1.wav").read_bytes()
    (folder / "wav" / "cut.wav").write_bytes(full[: len(full) // 2])
    frame.loc[1, "photo"] = "img/does_not_exist.png"
    frame.loc[3, "photo"] = "img/corrupt.png"
    frame.loc[5, "sound"] = "wav/silent.wav"
    frame.loc[7, "sound"] = "wav/cut.wav"
    frame["weight"] = frame["weight"].astype(object)
    frame.loc[9, "weight"] = "heavy"
    frame.loc[10, "photo"] = None  # missing is not an error: a presence mask
    frame.loc[11, "note"] = ""
    frame.to_csv(folder / "bad.csv", index=False)
    return folder / "bad.csv"


def test_bad_rows_are_skipped_and_listed(toy_csv, tmp_path):
    bad_csv = _broken_copy(toy_csv, tmp_path)
    decoded = decode_table(_spec(toy_csv), read_table(bad_csv), with_targets=True, on_bad_row="skip")
    listed = {(b.row, b.column): b.message for b in decoded.bad}
    assert set(listed) == {(1, "photo"), (3, "photo"), (5, "sound"), (7, "sound"), (9, "weight")}
    assert "not found" in listed[(1, "photo")]
    assert "could not be decoded" in listed[(3, "photo")]
    assert "silent" in listed[(5, "sound")]
    assert "truncated" in listed[(7, "sound")]
    assert "expected a number, got text of 5 characters" in listed[(9, "weight")]
    assert decoded.rows == [0, 2, 4, 6, 8, 10, 11]
    assert decoded.inputs["photo"][5] is None and decoded.inputs["note"][6] is None


def test_on_bad_row_error_names_row_and_column(toy_csv, tmp_path):
    bad_csv = _broken_copy(toy_csv, tmp_path)
    with pytest.raises(BadInputError) as err:
        decode_table(_spec(toy_csv), read_table(bad_csv), with_targets=True, on_bad_row="error")
    assert err.value.row == 1 and err.value.column == "photo"
    assert str(err.value).startswith("row 1, column 'photo': file 'img/does_not_exist.png' not found")


def test_missing_column_and_missing_table(toy_csv):
    frame = pd.read_csv(toy_csv).drop(columns=["sound"])
    with pytest.raises(BadInputError, match="has no column 'sound'.*Rename the column or set `column:`"):
        decode_table(_spec(toy_csv), read_table(frame), with_targets=True)
    with pytest.raises(BadInputError, match="table 'nope.csv' not found"):
        read_table("nope.csv")


def test_missing_label_is_a_bad_row(toy_csv):
    frame = pd.read_csv(toy_csv).head(4)
    frame.loc[2, "label"] = None
    decoded = decode_table(_spec(toy_csv), read_table(frame, toy_csv.parent), with_targets=True)
    assert [(b.row, b.column) for b in decoded.bad] == [(2, "label")]
    assert "target value is missing" in decoded.bad[0].message


def test_all_inputs_missing_is_an_error_not_a_prior(toy_csv):
    from polyfuse.preprocess.pipeline import Preprocessor

    spec = _spec(toy_csv)
    frame = pd.read_csv(toy_csv).head(3)
    for col in ("photo", "sound", "note", "weight", "color"):
        frame.loc[1, col] = None
    decoded = decode_table(spec, read_table(frame, toy_csv.parent), with_targets=True)
    assert [(b.row, b.column) for b in decoded.bad] == [(1, "*")] and "every input is missing" in decoded.bad[0].message
    pre = Preprocessor.fit(spec, decode_table(spec, read_table(toy_csv), with_targets=True))
    with pytest.raises(BadInputError, match="row 0: every input is missing"):
        pre.transform([{"photo": None, "note": ""}])
