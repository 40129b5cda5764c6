#!/usr/bin/env python3
"""Writes examples/fleet-surge.ndjson: 60 seconds of a small fleet's traffic with a verbosity
surge, in the guard's traffic format (docs/shadow-and-simulate.md). Deterministic: running it
again writes the same file.

  - car-1 .. car-6 upload a telemetry batch every 3 s: info and warn records, an error now
    and then;
  - at 30 s a release switches car-5 and car-6 to debug logging: from then on they upload
    every second, mostly debug and trace records;
  - owners' apps read vehicle state and send commands; one impatient owner honks 12 times
    in a second (the policy's per-vehicle command budget has a burst of 10).
"""
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

START = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
SPAN = 60
SURGE_AT = 30
CARS = [f"car-{i}" for i in range(1, 7)]
SURGING = {"car-5", "car-6"}

rng = random.Random(17)
lines = []


def ts(t):
    return (START + timedelta(seconds=t)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


MESSAGES = {
    "error": "12V battery low",
    "warn": "signal weak",
    "info": "drive state",
    "debug": "CAN 0x3e9",
    "trace": "poll",
}


def record(level, n):
    # `n` makes every record distinct: sampling is by a hash of the record, so identical
    # records would all be sampled alike.
    return json.dumps({"level": level, "msg": MESSAGES[level], "n": n}, separators=(",", ":"))


def batch(car, t, counts):
    body = []
    for level, count in counts:
        body += [record(level, len(lines) * 100 + len(body) + i) for i in range(count)]
    lines.append((t, {
        "ts": ts(t), "method": "POST", "path": "/api/1/telemetry",
        "headers": {"x-vehicle-id": car, "content-type": "application/x-ndjson"},
        "body": "\n".join(body) + "\n",
    }))


for i, car in enumerate(CARS):
    t = i * 0.5
    while t < SPAN:
        if car in SURGING and t >= SURGE_AT:
            batch(car, t, [("warn", 1), ("info", 4), ("debug", 20), ("trace", 10)])
            t += 1
        else:
            errors = 1 if rng.random() < 0.1 else 0
            batch(car, t, [("error", errors), ("warn", 2), ("info", 6)])
            t += 3

for t in range(5, SPAN, 10):
    car = CARS[(t // 10) % len(CARS)]
    lines.append((t + 0.25, {
        "ts": ts(t + 0.25), "method": "GET", "path": f"/api/1/vehicles/{car[4:]}/vehicle_data",
        "headers": {"x-vehicle-id": car},
    }))
for t, car, command in [(12, "car-2", "door_unlock"), (35, "car-3", "auto_conditioning_start"),
                        (52, "car-1", "door_lock")]:
    lines.append((t + 0.1, {
        "ts": ts(t + 0.1), "method": "POST", "path": f"/api/1/vehicles/{car[4:]}/command/{command}",
        "headers": {"x-vehicle-id": car, "content-type": "application/json"}, "body": "{}",
    }))
for i in range(12):
    t = 40 + i * 0.02
    lines.append((t, {
        "ts": ts(t), "method": "POST", "path": "/api/1/vehicles/4/command/honk_horn",
        "headers": {"x-vehicle-id": "car-4", "content-type": "application/json"}, "body": "{}",
    }))

lines.sort(key=lambda l: l[0])
out = Path(__file__).with_name("fleet-surge.ndjson")
out.write_text("".join(json.dumps(l, separators=(",", ":")) + "\n" for _, l in lines))
