"""Build the smart-home example's tables: real room sensors (../shared/data/scenarios/occupancy, UCI,
CC BY 4.0) and real voice-command wording (Home Assistant's intent templates, Apache-2.0, from the
`home-assistant-intents` wheel, expanded with `hassil`, Home Assistant's own template library).

    python examples/smarthome/build_data.py --out examples/smarthome/data [--rows N]

One row per minute of an office (Candanedo & Feldheim 2016): `sensors` holds the last WINDOW minutes of
temperature, humidity, light, CO2 and humidity ratio (a JSON array, one row per minute), and `command`
what someone said to the home in that minute, or nothing. The target `action` is what the lights should
do:
- a lighting command decides it: "turn on the office light" -> `on`, "... off" -> `off`, "set the
  brightness to 40%" -> `brightness`, "set the color to red" -> `color`;
- otherwise (no command, or one that is not about the lights: "what's the weather", "pause the music")
  the automation follows the room: `on` while it is occupied, `off` while it is empty (the dataset's
  ground-truth occupancy, recorded by camera).

What is real and what is not: every sensor window and occupancy label is a real recording, and every
command is a real Home Assistant sentence template; pairing a command with a minute is ours (seeded,
COMMAND_SHARE of the minutes get one), because no public set records both. The dataset's own three
files are the splits: training (Feb 4-10 2015), test 1 as validation, test 2 as test.

``--rows N`` keeps the first N minutes of each split (a CI-sized run). Nothing is downloaded: the
templates come from the installed `home-assistant-intents` package (polyfuse[examples]).
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
from importlib import resources
from pathlib import Path

import pandas as pd

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "scenarios" / "occupancy"
SPLITS = {"train": "datatraining.txt", "valid": "datatest.txt", "test": "datatest2.txt"}
SENSORS = ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"]
WINDOW = 16  # minutes of readings per row
COMMAND_SHARE = 0.6  # minutes that come with something said
AREAS = ["office", "study", "living room", "kitchen", "bedroom", "hallway"]
NAMES = ["desk lamp", "ceiling light", "floor lamp", "reading light"]
# intent -> the lights' action; the other intents are commands that are not about the lights
LIGHT_ACTIONS = {"HassTurnOn": "on", "HassTurnOff": "off"}
OTHER_INTENTS = ["HassGetWeather", "HassGetCurrentTime", "HassMediaPause", "HassMediaNext", "HassSetVolume",
                 "HassStartTimer", "HassShoppingListAddItem", "HassClimateGetTemperature", "HassVacuumStart"]
PER_TEMPLATE = 6  # sentences sampled from each template


def commands(seed: int = 0) -> dict[str, list[str]]:
    """Sentences per action ('on', 'off', 'brightness', 'color', 'other'), from the English templates."""
    from hassil.intents import Intents, TextSlotList
    from hassil.sample import sample_expression

    data = json.loads(resources.files("home_assistant_intents").joinpath("data/en.json").read_text("utf-8"))
    intents = Intents.from_dict(data)
    lists = {**intents.slot_lists, "area": TextSlotList.from_strings(AREAS),
             "name": TextSlotList.from_strings(NAMES), "floor": TextSlotList.from_strings(["upstairs", "downstairs"])}
    rng = random.Random(seed)
    found: dict[str, set[str]] = {}
    for intent_name in [*LIGHT_ACTIONS, "HassLightSet", *OTHER_INTENTS]:
        for block in intents.intents[intent_name].data:
            action = _action(intent_name, block)
            if action is None:
                continue
            for template in block.sentences:
                try:
                    expanded = list(itertools.islice(
                        sample_expression(template.expression, lists, intents.expansion_rules, language="en"), 200))
                except Exception:  # noqa: BLE001 - a template needing a list we do not fill (e.g. a wildcard)
                    continue
                expanded = [s for s in expanded if "{" not in s]  # a free-text slot (a timer's name) left open
                picked = rng.sample(expanded, min(PER_TEMPLATE, len(expanded)))
                found.setdefault(action, set()).update(" ".join(s.split()) for s in picked)
    return {action: sorted(s) for action, s in found.items()}


def _action(intent_name: str, block) -> str | None:
    if intent_name in LIGHT_ACTIONS:
        return LIGHT_ACTIONS[intent_name] if (block.slots or {}).get("domain") == "light" else None
    if intent_name == "HassLightSet":
        combination = (block.metadata or {}).get("slot_combination", "")
        return "brightness" if "brightness" in combination else "color"
    return "other"


def minutes(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    table["date"] = pd.to_datetime(table["date"])
    return table.sort_values("date").reset_index(drop=True)


def windows(table: pd.DataFrame) -> list[str]:
    """The last WINDOW minutes of readings up to and including each row's minute."""
    values = table[SENSORS].to_numpy(dtype=float)
    return [json.dumps([[round(float(v), 6) for v in step] for step in values[max(0, i - WINDOW + 1):i + 1]])
            for i in range(len(values))]


def build(path: Path, said: dict[str, list[str]], rng: random.Random) -> pd.DataFrame:
    table = minutes(path)
    rows = []
    kinds = sorted(said)
    for occupied in table["Occupancy"]:
        command, action = "", "on" if occupied else "off"
        if rng.random() < COMMAND_SHARE:
            kind = rng.choice(kinds)
            command = rng.choice(said[kind])
            action = action if kind == "other" else kind
        rows.append((command, action))
    return pd.DataFrame({"time": table["date"].astype(str), "sensors": windows(table),
                         "command": [c for c, _ in rows], "action": [a for _, a in rows]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rows", type=int, default=None, help="keep the first N minutes of each split")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the occupancy folder")
    args = parser.parse_args()
    missing = [f for f in SPLITS.values() if not (args.source / f).is_file()]
    if missing:
        raise SystemExit(f"{args.source / missing[0]} not found: the occupancy copy lives in ../shared/data/scenarios")
    said = commands()
    print("command sentences per action: " + ", ".join(f"{k} {len(v)}" for k, v in said.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (name, file) in enumerate(SPLITS.items()):
        part = build(args.source / file, said, random.Random(i))
        part = part.head(args.rows) if args.rows else part
        part.to_csv(args.out / f"{name}.csv", index=False)
        print(f"{name}.csv: {len(part)} minutes, actions {part['action'].value_counts().to_dict()}")


if __name__ == "__main__":
    main()
