"""Build the traffic example's tables from the Metro Interstate I-94 traffic volume set
(../shared/data/scenarios/traffic_i94, UCI, CC BY 4.0).

    python examples/traffic/build_data.py --out examples/traffic/data [--rows N]

One row per hour on I-94 westbound (Minneapolis-St Paul, ATR station 301), 2012-2018: the weather then
(`temp_c`, `rain_mm`, `snow_mm`, `clouds`, `weather`, the free-text `description`), the calendar
(`hour`, `weekday`, `month`, `holiday`), the previous 24 hours as one time series (`recent`: volume and
temperature per hour, `null` where the station recorded nothing), and the targets: `volume` (vehicles in
the hour) and `level`, its band (see LEVELS). Split by time, never shuffled: train 2012-2016, valid
2017, test 2018, so the model is always judged on hours after the ones it learnt from.

Cleaning, each because the raw file says so:
- several rows share an hour when two weather conditions were reported: one row per hour, the
  descriptions joined ("mist, light rain");
- a holiday is marked only on its midnight row: the name is spread over the whole day;
- `temp` of 0 K and a `rain_1h` of 9,831 mm are broken readings: left empty (a missing number).

``--rows N`` keeps the last N hours of each split (a CI-sized run). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "scenarios" / "traffic_i94"
# Vehicles per hour. I-94 here has three westbound lanes; a freeway lane carries about 2,000 an hour at
# capacity, so >= 5,000 is a road near capacity and < 1,500 a nearly empty one.
LEVELS = [(1500, "low"), (3500, "medium"), (5000, "high"), (np.inf, "peak")]
HISTORY = 24  # hours in `recent`
SPLITS = {"train": (2012, 2016), "valid": (2017, 2017), "test": (2018, 2018)}


def hourly(raw: pd.DataFrame) -> pd.DataFrame:
    raw["date_time"] = pd.to_datetime(raw["date_time"])
    first = raw.groupby("date_time", sort=True).first()
    first["description"] = raw.groupby("date_time")["weather_description"].agg(lambda s: ", ".join(dict.fromkeys(s)))
    day = first.index.normalize()
    named = first["holiday"].where(first["holiday"] != "None").groupby(day).transform("first")
    first["holiday"] = named.fillna("none").str.lower()
    first["temp_c"] = (first["temp"] - 273.15).where(first["temp"] > 200).round(2)
    first["rain_mm"] = first["rain_1h"].where(first["rain_1h"] < 500)
    return first


def history(table: pd.DataFrame) -> list[str]:
    """The previous HISTORY hours of [volume, temp_c] per row, on the full hourly grid (gaps null)."""
    grid = table[["traffic_volume", "temp_c"]].reindex(pd.date_range(table.index[0], table.index[-1], freq="h"))
    values = grid.to_numpy(dtype=float)
    where = grid.index.get_indexer(table.index)
    cells = []
    for i in where:
        past = values[max(0, i - HISTORY):i]
        if len(past) == 0 or np.isnan(past[:, 0]).all():
            cells.append("")  # nothing recorded in the last day: the input is absent for this row
            continue
        cells.append(json.dumps([[None if np.isnan(v) else round(float(v), 2) for v in step] for step in past]))
    return cells


def level(volume: pd.Series) -> pd.Series:
    bounds = [-np.inf] + [b for b, _ in LEVELS]
    return pd.cut(volume, bounds, right=False, labels=[name for _, name in LEVELS]).astype(str)


def build(source: Path) -> pd.DataFrame:
    table = hourly(pd.read_csv(source / "Metro_Interstate_Traffic_Volume.csv"))
    out = pd.DataFrame({
        "temp_c": table["temp_c"], "rain_mm": table["rain_mm"], "snow_mm": table["snow_1h"],
        "clouds": table["clouds_all"], "weather": table["weather_main"].str.lower(),
        "description": table["description"], "holiday": table["holiday"],
        "hour": table.index.hour, "weekday": table.index.day_name().str.lower(), "month": table.index.month,
        "recent": history(table), "volume": table["traffic_volume"], "level": level(table["traffic_volume"]),
    }, index=table.index)
    out.index.name = "time"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=None, help="keep the last N hours of each split")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the traffic_i94 folder")
    args = parser.parse_args()
    if not (args.source / "Metro_Interstate_Traffic_Volume.csv").is_file():
        raise SystemExit(f"{args.source / 'Metro_Interstate_Traffic_Volume.csv'} not found: the I-94 copy lives in "
                         "../shared/data/scenarios")
    table = build(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (first, last) in SPLITS.items():
        part = table[(table.index.year >= first) & (table.index.year <= last)]
        part = part.tail(args.rows) if args.rows else part
        part.to_csv(args.out / f"{name}.csv")
        print(f"{name}.csv: {len(part)} hours, levels {part['level'].value_counts().to_dict()}")


if __name__ == "__main__":
    main()
