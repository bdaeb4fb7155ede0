"""De-identification of text inputs: recall on a synthetic PII corpus, false positives on clean
text, no raw PII in a trained artifact or its logs, and the same placeholders at training and
inference time."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyfuse.preprocess.pipeline import Preprocessor
from polyfuse.privacy import pii
from polyfuse.privacy.corpus import bank_card, clean_corpus, cn_id, cued, pii_corpus
from polyfuse.spec.schema import load_spec


def test_recall_per_type_on_english_and_chinese_corpus():
    corpus = pii_corpus(per_type=60)
    assert len(corpus) >= 200 and any("请" in t for t, _, _ in corpus)
    hit, total = Counter(), Counter()
    for text, kind, value in corpus:
        redacted = pii.redact(text)
        kind = "person (no cue)" if kind == "person" and not cued(text) else kind
        total[kind] += 1
        hit[kind] += value not in redacted and pii.PLACEHOLDER[kind.split()[0]] in redacted
    recall = {k: hit[k] / total[k] for k in total}
    print("recall per type:", recall)
    assert set(recall) == set(pii.ENTITIES) | {"person (no cue)"}
    assert all(r >= 0.95 for k, r in recall.items() if k != "person (no cue)"), recall
    # a name nothing marks as one is found only when its given name is a common one
    assert 0.1 <= recall["person (no cue)"] < 0.9, recall


@pytest.mark.parametrize("text, expected", [
    ("Dr. Jane Roe will call.", "Dr. <PERSON> will call."),
    ("My name is John Smith, I live at 221B Baker Street, London NW1 6XE.",
     "My name is <PERSON>, I live at <ADDRESS>."),
    ("Regards, Peter", "Regards, <PERSON>"),
    ("Ship to 350 5th Ave, Apt 4, New York, NY 10118 today.", "Ship to <ADDRESS> today."),
    ("Wohnt in Hauptstraße 5, 10115 Berlin.", "Wohnt in <ADDRESS>."),
    ("我叫李明，住在北京市朝阳区建国路88号3号楼2单元501室。", "我叫<PERSON>，住在<ADDRESS>。"),
    ("请联系王经理，或寄到幸福小区3栋2单元501室", "请联系<PERSON>经理，或寄到<ADDRESS>"),
    ("王芳女士和张先生已到", "<PERSON>女士和<PERSON>先生已到"),
    # no name or address: cue words, titles as plain nouns, organisations, places, streets without a number
    ("Dear Customer, contact Apple Support or visit the New York office.", None),
    ("Turn left on Main Street and park near Victoria Station.", None),
    ("一语文老师直播上课，项目经理们和平安好医生都在北京大学。", None),
])
def test_names_and_addresses(text: str, expected: str | None):
    assert pii.redact(text) == (text if expected is None else expected)


def test_false_positives_on_clean_text_are_rare():
    clean = clean_corpus(n=600)
    long_ref = [t for t in clean if re.search(r"\d{13}", t)]  # reference numbers of card/ID length
    ordinary = [t for t in clean if t not in long_ref]
    flagged = [t for t in ordinary if pii.find(t)]
    flagged_long = [t for t in long_ref if pii.find(t)]
    print(f"false positives: {len(flagged)}/{len(ordinary)} ordinary sentences; "
          f"{len(flagged_long)}/{len(long_ref)} with 13-19 digit reference numbers")
    assert len(ordinary) >= 200 and len(flagged) / len(ordinary) <= 0.01
    # a random 13-19 digit number passes Luhn one time in ten: two per sentence, so about 19 % by chance
    assert len(long_ref) >= 20 and len(flagged_long) / len(long_ref) <= 0.3


def test_checksums_reject_random_numbers():
    rng = np.random.default_rng(3)
    ids = [cn_id(rng) for _ in range(50)]
    assert all(pii.valid_cn_id(i) for i in ids)
    broken = [i[:17] + ("0" if i[17] != "0" else "1") for i in ids]  # wrong check character
    assert not any(pii.find(f"ID {b}.", ["cn_id"]) for b in broken)
    cards = [bank_card(rng).replace(" ", "") for _ in range(50)]
    assert all(pii.luhn_ok(c) for c in cards)
    assert not any(pii.find(f"card {c[:-1]}{(int(c[-1]) + 1) % 10}", ["bank_card"]) for c in cards)


def test_examples_and_type_selection():
    text = "Mail bob@example.com, call +44 20 7946 0958 or (555) 123-4567, 手机13812345678, see https://x.org/a."
    assert pii.redact(text) == "Mail <EMAIL>, call <PHONE> or <PHONE>, 手机<PHONE>, see <URL>."
    assert pii.redact(text, pii.entity_types(["email"])).startswith("Mail <EMAIL>, call +44 20 7946 0958")
    assert pii.entity_types(False) == () and pii.entity_types(True) == pii.ENTITIES
    assert pii.redact("hosts 10.0.0.1 and 2001:db8::1 at 12:30:45") == "hosts <IP> and <IP> at 12:30:45"


def test_pii_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; from polyfuse.privacy import pii; "
            "import polyfuse.preprocess.text; print(pii.redact('a@b.co'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "<EMAIL>"


def _email_table(folder: Path, n: int = 48) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = ["refund", "delivery"][i % 2]
        rows.append({"msg": f"{label} please, write to zqxuser{i}@example.com or call 138{rng.integers(10**7, 10**8)}; "
                            f"my name is Quxley Vantrobe, I live at {i + 1} Zorblatt Road", "label": label})
    path = folder / "mail.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _spec(csv: Path, deidentify: bool) -> dict:
    return {"data": {"train": str(csv), "split": {"valid": 0.25, "seed": 0}},
            "inputs": {"msg": {"type": "text", "encoder": "cnn", "max_length": 40, "dim": 16, "deidentify": deidentify}},
            "outputs": {"label": {"type": "category"}},
            "train": {"epochs": 1, "batch_size": 16, "seed": 0, "threads": 1}}


def _grep(folder: Path, needle: str) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def deid_run(tmp_path_factory):
    import polyfuse

    folder = tmp_path_factory.mktemp("pii")
    csv = _email_table(folder)
    return polyfuse.train(_spec(csv, True), out=folder / "model", show_progress=False), folder / "model", csv


def test_no_raw_email_in_artifact_or_stderr(tmp_path, capfd):
    import polyfuse

    csv = _email_table(tmp_path)
    polyfuse.train(_spec(csv, False), out=tmp_path / "plain", show_progress=False)
    for needle in ("zqxuser", "quxley", "zorblatt"):  # the vocabulary is lowercased
        assert _grep(tmp_path / "plain", needle), f"control: without deidentify the vocabulary holds {needle}"
    capfd.readouterr()
    polyfuse.train(_spec(csv, True), out=tmp_path / "deid", show_progress=False)
    captured = capfd.readouterr()
    for needle in ("zqxuser", "@example.com", "quxley", "vantrobe", "zorblatt"):
        assert _grep(tmp_path / "deid", needle) == [] and needle not in (captured.err + captured.out).lower()
    assert "email" in (tmp_path / "deid" / "preprocess.json").read_text()  # the placeholder's token is learned


def test_training_and_inference_decode_the_same_placeholders(deid_run):
    model, folder, _ = deid_run
    spec, _ = load_spec(folder / "spec.yaml")
    runtime_pre = Preprocessor.from_json(spec, (folder / "preprocess.json").read_text())  # what Runtime/serve use
    raw = [{"msg": "refund please, write to new.person@mail.org or call +86 139 1234 5678"}]
    placeholder = [{"msg": "refund please, write to <EMAIL> or call <PHONE>"}]
    for pre in (model.preprocessor, runtime_pre):
        a, _ = pre.transform(raw)
        b, _ = pre.transform(placeholder)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    reloaded = __import__("polyfuse").load(folder)
    assert reloaded.predict(raw).equals(model.predict(placeholder))


def test_unknown_entity_type_is_named_alone():
    """A list with an unknown type gets one line naming it and the types allowed, not pydantic's
    complaint that a list is not a boolean (the other branch of ``true | [types]``)."""
    from polyfuse.errors import SpecError

    spec = {"data": {"train": "t.csv"}, "outputs": {"label": {"type": "category"}},
            "inputs": {"msg": {"type": "text", "deidentify": ["email", "name"]}}}
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("  inputs.msg.deidentify.1: expected one of")
    assert "'person'" in lines[0] and "(got 'name')" in lines[0]
