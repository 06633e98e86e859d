"""The TypeScript client (clients/typescript): installed from its lockfile, its types generated from today's
/openapi.json, its node test suite run against a real gunicorn, and its npm package layout.

Needs node >= 20 and npm (the project's machines and CI have them); npm ci reaches the npm registry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service import create_app
from tests.test_gunicorn import start, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "typescript"
NODE, NPM = shutil.which("node"), shutil.which("npm")
API_KEY = "ts-client-test-key-0123456789"


def node_major() -> int:
    if not (NODE and NPM):
        return 0
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout  # "v20.20.2"
    return int(version.strip().lstrip("v").split(".")[0])


pytestmark = pytest.mark.skipif(node_major() < 20, reason="node >= 20 and npm are not installed: the TypeScript "
                                                          "client (clients/typescript) needs them to be tested")

# Tests of the node suite that must be reported as passed, by name: every route, the error class on a 422 and a
# 404, the API key, retries on 503 / 429 (Retry-After) / a dropped connection, and the timeout.
REQUIRED = [
    "health, ready and info",
    "gradients: the published two-layer example gives the README's numbers",
    "gradients: the response obeys the course's formulas",
    "grade: the gradients response fed back scores full marks",
    "grade: the published example with mistakes gets its diagnoses",
    "grade: format gradescope returns a results.json",
    "gradientCheck: the service's own gradients pass central differences",
    "explain: the last layer's story, with the example's cost",
    "a 422 surfaces every located error through ProblemError",
    "a 404 (a wrong base URL) is a ProblemError too",
    "without the API key a secured route is a 401, with it a 200",
    "retries a 503 and then returns the 200, resending the same POST body",
    "waits the Retry-After of a 429 before retrying",
    "retries a dropped connection (network error) and then succeeds",
    "times out an attempt that gets no answer, and does not retry it",
]


def npm(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    environ = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
               "npm_config_audit": "false", **(env or {})}
    return subprocess.run([NPM, *args], cwd=PACKAGE, env=environ, capture_output=True, text=True, timeout=timeout)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed():
    """node_modules exactly as package-lock.json pins it (npm ci refuses a lockfile out of sync with package.json)."""
    proc = npm("ci")
    assert proc.returncode == 0, output(proc)


@pytest.fixture
def spec_file(tmp_path) -> Path:
    path = tmp_path / "openapi.json"
    r = create_app().test_client().get("/openapi.json")
    assert r.status_code == 200
    path.write_bytes(r.data)
    return path


def check_types(spec: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, "scripts/generate.mjs", "--check", "--file", str(spec)], cwd=PACKAGE,
                          capture_output=True, text=True, timeout=120)


def test_committed_types_are_generated_from_todays_openapi(installed, spec_file):
    proc = check_types(spec_file)
    assert proc.returncode == 0, ("clients/typescript/src/schema.ts is out of date with /openapi.json: run "
                                  "`npm run generate` in clients/typescript and commit it.\n" + output(proc))
    assert "up to date" in proc.stdout


def test_the_drift_check_fails_on_a_changed_document(installed, spec_file):
    spec = json.loads(spec_file.read_text())
    spec["components"]["schemas"]["GradientRequest"]["properties"]["dgamma2"] = {"type": "number"}
    spec_file.write_text(json.dumps(spec))
    proc = check_types(spec_file)
    assert proc.returncode == 1, output(proc)
    assert "out of date" in proc.stderr and "npm run generate" in proc.stderr


def passed_and_failed(report: str) -> tuple[set[str], dict[str, int]]:
    """The names of the tests the spec reporter marks passed, and its summary counts."""
    passed = {m.group(1) for m in re.finditer(r"^\s*✔ (.+?) \([\d.]+ms\)$", report, re.M)}
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^ℹ (\w+) (\d+)$", report, re.M)}
    return passed, counts


def test_node_suite_passes_against_live_gunicorn(installed, tmp_path):
    proc, base, log = start(tmp_path, GRADIENT_WORKERS="2", GRADIENT_API_KEYS=API_KEY)
    try:
        wait_ready(proc, base, log)
        result = npm("test", env={"GRADIENT_SERVICE_URL": base, "GRADIENT_SERVICE_API_KEY": API_KEY})
    finally:
        stop(proc)
    assert result.returncode == 0, output(result)
    passed, counts = passed_and_failed(result.stdout)
    assert counts.get("fail") == 0 and counts.get("cancelled") == 0 and counts.get("skipped") == 0, counts
    assert counts.get("pass", 0) == counts.get("tests", -1) >= len(REQUIRED), counts
    missing = [name for name in REQUIRED if not any(p.startswith(name) for p in passed)]
    assert not missing, f"not reported as passed: {missing}\n{output(result)}"


def test_npm_package_layout(installed):
    proc = npm("pack", "--dry-run", "--json")
    assert proc.returncode == 0, output(proc)
    # prepack's build logs on stdout before the JSON report.
    report = json.loads(proc.stdout[proc.stdout.index("[\n"):])[0]
    files = {f["path"] for f in report["files"]}
    assert {"package.json", "README.md", "dist/index.js", "dist/index.d.ts", "dist/schema.d.ts",
            "dist/client.js"} <= files, sorted(files)
    assert not any(f.startswith(("test/", "build-test/", "node_modules/", "scripts/")) for f in files), sorted(files)
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["type"] == "module"
    assert manifest["exports"]["."] == {"types": "./dist/index.d.ts", "import": "./dist/index.js"}
    lock = json.loads((PACKAGE / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"] == manifest["dependencies"]
