"""Replay a room's sensor minutes to a served smart-home model over /v2/stream, as the home's hub would.

    polyfuse serve runs/smarthome --port 8000 &
    python examples/smarthome/stream.py --url ws://127.0.0.1:8000/v2/stream --minutes 600 [--command "..."]

The readings of the occupancy set's second test file are sent one minute per message; the server answers
with the lights' action for every minute once its 16-minute window is full. With no `--command` (nobody
said anything) the right answer is the room's real occupancy, `on` or `off`, and the script reports how
often the streamed answers agree with it; a `--command` is the stream's context (said to the hub as the
stream starts) and the answers then follow it. Prints one JSON summary line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_data import SENSORS, SOURCE, SPLITS, minutes  # noqa: E402  (the data step's own reading of the files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v2/stream")
    parser.add_argument("--minutes", type=int, default=600, help="minutes of readings to replay")
    parser.add_argument("--command", default=None, help="what was said as the stream starts (its context)")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the occupancy folder")
    args = parser.parse_args()
    from websockets.sync.client import connect

    table = minutes(args.source / SPLITS["test"]).head(args.minutes)
    readings = table[SENSORS].to_numpy(dtype=float)
    start = {"hop": 1, **({"context": {"command": args.command}} if args.command else {})}
    answers: dict[int, str | None] = {}
    began = time.perf_counter()
    try:
        ws_conn = connect(args.url, max_size=1 << 22)
    except OSError as e:
        raise SystemExit(f"cannot reach {args.url} ({e.strerror or e}): start `polyfuse serve runs/smarthome` first, "
                         "or pass its address with --url") from None
    with ws_conn as ws:
        ws.send(json.dumps({"start": start}))
        for i, minute in enumerate(readings):
            ws.send(json.dumps({"samples": {"sensors": [minute.round(6).tolist()]}}))
            while i >= 15 and len(answers) < i - 14:  # a minute's answer, once the 16-minute window is full
                message = json.loads(ws.recv(timeout=60))
                if "error" in message:
                    raise SystemExit(f"the server refused a message: {message['error']}")
                if "prediction" in message:
                    answers[message["window_end"]] = message["prediction"]["action"]
    truth = pd.Series(table["Occupancy"].to_numpy()).map({1: "on", 0: "off"})
    ends = sorted(answers)
    agree = sum(answers[end] == truth[end - 1] for end in ends)
    print(json.dumps({"minutes": len(readings), "answers": len(ends), "seconds": round(time.perf_counter() - began, 2),
                      "agree_with_occupancy": round(agree / max(len(ends), 1), 4),
                      "actions": pd.Series([answers[e] for e in ends]).value_counts().to_dict()}))


if __name__ == "__main__":
    main()
