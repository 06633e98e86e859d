"""Golden responses: every /v1 POST body of the test suite with the exact response the service gave.

``python -m tests.golden record`` runs the suite with tests/golden_record.py, replays every recorded request
against a fresh app with the same settings, and keeps those that reproduce byte for byte (which drops the few
whose test monkeypatched the service or depended on time or order), deduplicated, in tests/data/golden.jsonl.gz.
tests/test_golden.py replays them. Problem bodies carry a random request id unless the client sent one; it is
masked on both sides.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden.jsonl.gz"
_REQUEST_ID = re.compile(rb'"request_id":"[0-9a-f]{32}"')


def normalised(body: bytes) -> bytes:
    return _REQUEST_ID.sub(b'"request_id":"*"', body)


def replay(entries: list[dict]):
    """(entry, status, body) for each entry, a fresh app per distinct settings."""
    from service import create_app
    from service.config import Settings

    apps: dict[str, object] = {}
    for e in entries:
        key = json.dumps(e["settings"], sort_keys=True)
        if key not in apps:
            apps[key] = create_app(Settings(**e["settings"])).test_client()
        client = apps[key]
        r = client.post(e["path"], data=base64.b64decode(e["body"]), headers=e["headers"])
        yield e, r.status_code, r.get_data()


def load() -> list[dict]:
    with gzip.open(GOLDEN, "rt") as f:
        return [json.loads(line) for line in f]


def record() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "record.jsonl"
        env = {**os.environ, "GOLDEN_OUT": str(out), "CI": "1"}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.golden_record", "-p", "no:cacheprovider",
                        "--ignore=tests/test_golden.py", "-x", "-q"], cwd=ROOT, env=env, check=False)
        raw = [json.loads(line) for line in out.read_text().splitlines()]
    from service.config import Settings

    default_policy = Settings().model_dump(mode="json")["default_policy"]
    seen, entries = set(), []
    for e in raw:
        if e["settings"].get("policies") or e["settings"].get("default_policy") != default_policy:
            continue  # rate limits and policies depend on the order and timing of a test's requests
        digest = hashlib.sha256(json.dumps([e["path"], e["headers"], e["body"], e["settings"]],
                                           sort_keys=True).encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            entries.append(e)
    kept = [e for e, status, body in replay(entries)
            if status == e["status"] and normalised(body) == normalised(base64.b64decode(e["response"]))]
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(GOLDEN, "wt") as f:
        for e in kept:
            e.pop("app", None)
            f.write(json.dumps(e) + "\n")
    print(f"recorded {len(raw)} requests, {len(entries)} distinct, {len(kept)} reproduce: {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["record"]:
        raise SystemExit("usage: python -m tests.golden record")
    record()
