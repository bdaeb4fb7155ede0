import json
import subprocess
import sys

import pytest

from polyfuse.errors import SpecError
from polyfuse.spec.schema import json_schema, load_spec

MINIMAL = {"data": {"train": "t.csv"}, "inputs": {"x": {"type": "number"}}, "outputs": {"y": {"type": "category"}}}


def test_three_line_spec_gets_defaults():
    spec, _ = load_spec(MINIMAL)
    assert spec.train.epochs == 20 and spec.fusion.method == "concat" and spec.data.split.valid == 0.1
    assert spec.column("x") == "x"


def test_yaml_file_resolves_relative_to_its_folder(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("data: {train: t.csv}\ninputs: {x: {type: number}}\noutputs: {y: {type: binary}}\n")
    spec, base = load_spec(path)
    assert base == tmp_path and spec.outputs["y"].type == "binary"


@pytest.mark.parametrize("patch, expected", [
    ({"fusion": {"method": "sum"}}, ["fusion.method", "'concat'", "'sum'"]),
    ({"inputs": {"x": {"type": "picture"}}}, ["inputs.x", "unknown type", "'image'", "picture"]),
    ({"inputs": {"x": {"type": "image", "size": [28]}}}, ["inputs.x.size"]),
    ({"inputs": {"x": {"type": "audio", "sample_rate": "fast"}}}, ["inputs.x.sample_rate", "fast"]),
    ({"inputs": {"image": {"type": "image", "encoder": "vgg"}}}, ["inputs.image.encoder", "'cnn'", "'vgg'"]),
    ({"train": {"epochs": 0}}, ["train.epochs", "greater than or equal to 1", "0"]),
    ({"train": {"epoch": 3}}, ["train.epoch", "unknown field"]),
    ({"outputs": {}}, ["outputs", "at least one"]),
    ({"outputs": {"x": {"type": "number"}}}, ["both an input and an output"]),
])
def test_errors_name_path_value_and_allowed(patch, expected):
    with pytest.raises(SpecError) as err:
        load_spec({**MINIMAL, **patch})
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_schema_cli_prints_json_schema():
    out = subprocess.run([sys.executable, "-m", "polyfuse", "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(out.stdout)
    assert schema["title"] == "polyfuse spec"
    assert set(schema["required"]) == {"inputs", "outputs"}
    assert "AudioInput" in schema["$defs"] and "n_mfcc" in schema["$defs"]["AudioInput"]["properties"]
    assert schema == json_schema()
