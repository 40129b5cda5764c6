#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/seed-*) from the test fixtures and generated
examples. Deterministic: run it again and the same files come out. See docs/fuzzing.md."""
import gzip, json, os, random, shutil, subprocess, sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"
HEAD = 32  # fuzz/src/spec.rs: HEAD
rng = random.Random(18)

def out(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)

# Settings heads (see fuzz/src/spec.rs): all zeroes keeps everything; the others are fixed
# random draws that `arbitrary` turns into mixed rules.
HEADS = [bytes(HEAD)] + [bytes(rng.randrange(256) for _ in range(HEAD)) for _ in range(3)]

LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "WARNING", "err", "crit", "loud"]

def json_records(n):
    recs = []
    for i in range(n):
        lvl = rng.choice(LEVELS)
        shape = rng.randrange(7)
        if shape == 0:
            r = {"ts": i, "level": lvl, "msg": f"m{i}", "trace_id": f"{rng.randrange(4):032x}"}
        elif shape == 1:
            r = {"log": {"level": lvl}, "msg": "nested"}
        elif shape == 2:
            r = {"severity": rng.choice([3, 4, 6, 7, 10, 30, 50]), "msg": "numeric"}
        elif shape == 3:
            r = {"msg": "\"level\":\"error\"", "ctx": {"level": "fatal"}, "level": lvl}
        elif shape == 4:
            r = {"level": rng.randrange(0, 70)}
        elif shape == 5:
            r = {"msg": "no level é \\ \u2603"}
        else:
            r = {"level": lvl, "a": [1, [2, {"b": None}]], "t": True}
        recs.append(json.dumps(r, ensure_ascii=rng.random() < 0.5))
    return recs

ndjson = [
    "\n".join(json_records(8)) + "\n",
    "\n".join(json_records(3)) + "\n\n  \n{\"level\":\"warn\"\n" + '{"lev\\u0065l":"error"}\n',
    '{"level":"info","msg":"a"}\r\n{"level":"debug"}\r\n',
    '{"level":"w\\u0061rn"}\n{"level":"error","level":"trace"}\n[1,2]\n"x"\n',
]
arrays = [
    "[" + ",".join(json_records(8)) + "]",
    " [ " + " , ".join(json_records(3)) + " , 42 , \"s\" , [1] ] ",
    "[]",
]

def otlp_json_doc(snake=False):
    def rec(i):
        r = {"timeUnixNano": str(i), "severityNumber": rng.choice([0, 1, 5, 9, 13, 17, 21, 24, 25]),
             "severityText": rng.choice(LEVELS), "body": {"stringValue": f"r{i}"}}
        if rng.random() < 0.3:
            r["severityNumber"] = rng.choice(["SEVERITY_NUMBER_WARN2", "SEVERITY_NUMBER_INFO", "9"])
        if rng.random() < 0.5:
            r["traceId"] = f"{rng.randrange(3):032x}"
        return r
    k = (lambda a, b: b) if snake else (lambda a, b: a)
    return json.dumps({k("resourceLogs", "resource_logs"): [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "car"}}]},
         k("scopeLogs", "scope_logs"): [
             {"scope": {"name": "s"}, k("logRecords", "log_records"): [rec(i) for i in range(4)]},
             {"scope": {"name": "empty"}, k("logRecords", "log_records"): []},
             {k("logRecords", "log_records"): None}]},
        {"schemaUrl": "x", k("scopeLogs", "scope_logs"): []}]})

# Protobuf by hand: tag = field << 3 | wire type.
def varint(n):
    b = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        b.append(x | (0x80 if n else 0))
        if not n:
            return bytes(b)

def ld(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload

def vi(field, n):
    return varint(field << 3) + varint(n)

def log_record(i):
    r = vi(2, rng.choice([0, 1, 5, 9, 13, 17, 21, 24, 25])) + ld(3, rng.choice(LEVELS).encode())
    r += ld(5, ld(1, f"body {i}".encode()))  # body: AnyValue{string_value}
    if rng.random() < 0.5:
        r += ld(9, bytes([0] * 15 + [rng.randrange(3)]))
    return r

def otlp_proto_doc():
    scope = ld(1, ld(1, b"scope")) + b"".join(ld(2, log_record(i)) for i in range(4))
    empty_scope = ld(1, ld(1, b"empty"))
    resource = ld(1, ld(1, ld(1, b"service.name") + ld(2, ld(1, b"car"))))
    rl = resource + ld(2, scope) + ld(2, empty_scope) + ld(3, b"https://schema")
    return ld(1, rl) + ld(1, ld(2, ld(2, log_record(9) + b"\xff")))

for target, bodies in [
    ("batch_ndjson", ndjson),
    ("batch_json_array", arrays),
    ("batch_otlp_json", [otlp_json_doc(), otlp_json_doc(snake=True), "{}"]),
    ("batch_otlp_proto", [otlp_proto_doc(), otlp_proto_doc(), b""]),
]:
    for i, body in enumerate(bodies):
        body = body.encode() if isinstance(body, str) else body
        for j, head in enumerate(HEADS[: 2 if i else 4]):
            out(target, f"{i}-{j}", head + body)

# Codec: first byte picks gzip (even) or zstd (odd) and the cap.
plain = ("\n".join(json_records(20)) + "\n").encode()
out("codec", "gzip", bytes([0x80]) + gzip.compress(plain, mtime=0))
out("codec", "gzip-members", bytes([0x40]) + gzip.compress(b"a", mtime=0) + gzip.compress(b"b", mtime=0))
zst = subprocess.run(["zstd", "-q", "-c", "-19"], input=plain, capture_output=True, check=True).stdout
out("codec", "zstd", bytes([0x81]) + zst)
bomb = subprocess.run(["zstd", "-q", "-c", "--no-check"], input=bytes(1 << 20), capture_output=True, check=True).stdout
out("codec", "zstd-bomb", bytes([0x03]) + bomb)
out("codec", "gzip-bomb", bytes([0x02]) + gzip.compress(bytes(1 << 20), mtime=0))
out("codec", "plain", bytes([0xff]) + plain[:200])

# Paths: mode 0 (raw) with the paths the tests and fixtures use.
paths = ["/", "/api/1/vehicles/42/command/honk_horn", "//api///1/./telemetry/../telemetry/batch",
         "/%61pi/1/vehicles/7/wake_up/", "/a%2Fb", "/a%5cb", "/a%00", "/v1/logs/", "/..",
         "/a/b/..", "/%2e%2E/a", "/a%c3%a9/./", "/é/./x", "/api/1/vehicles/1/command/x?y=1"]
har = json.loads((ROOT / "tests/fixtures/fleet-console.har").read_text())
for e in har["log"]["entries"]:
    u = e["request"]["url"]
    paths.append("/" + u.split("://", 1)[-1].split("/", 1)[-1])
for i, p in enumerate(dict.fromkeys(paths)):
    out("path", f"raw-{i}", bytes([2 * (i % 4)]) + p.encode())
for i in range(4):
    out("path", f"spelled-{i}", bytes([2 * i + 1]) + bytes(rng.randrange(256) for _ in range(48)))

# Policies: the shipped ones and every invalid case.
for f in sorted((ROOT / "policies").glob("*.yaml")) + sorted((ROOT / "policies/invalid").glob("*.yaml")):
    out("policy", f.parent.name + "-" + f.name, f.read_bytes())

# Traffic: the HAR fixture, and NDJSON lines as the docs write them.
out("traffic", "fleet-console.har", (ROOT / "tests/fixtures/fleet-console.har").read_bytes())
lines = [
    {"ts": "2026-11-30T12:00:00.123Z", "method": "POST", "path": "/api/1/telemetry?x=1",
     "headers": {"x-vehicle-id": "car-1", "content-type": "application/x-ndjson"},
     "body": "{\"level\":\"info\"}\n{\"level\":\"debug\"}\n"},
    {"ts": 1796040000.5, "method": "POST", "path": "http://api.example/api/1/telemetry",
     "headers": {"x-vehicle-id": ["car-2", "car-3"], "content-encoding": "gzip"},
     "body_base64": "H4sIAAAAAAAA/6tWykvNSVWyUkrOzytOLVLSUcpMTc1JLUotLgEAOp1ShRsAAAA=", "body_size": 40},
    {"ts": "2026-11-30T13:00:01+01:00", "method": "GET", "path": "/api/1/vehicles/7/state", "peer": "10.0.0.7"},
    {"ts": 1796040001, "method": "POST", "path": "/v1/logs",
     "headers": {"content-type": "application/json"}, "body": otlp_json_doc()},
]
out("traffic", "lines.ndjson", ("\n".join(json.dumps(l) for l in lines) + "\n\n").encode())
out("traffic", "bad-line.ndjson", (json.dumps(lines[0]) + "\n{\"ts\":1,\"method\":\"GET\"}\n").encode())

total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
print(f"{sum(1 for f in CORPUS.rglob('*') if f.is_file())} seed files, {total} bytes")
