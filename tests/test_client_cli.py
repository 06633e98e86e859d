"""The ``gradient-service`` command (gradient_service_client.cli) against a live gunicorn: gradients, grade, check and
explain from JSON and .npz files, readable output and --json, its exit statuses; and the installed console
script itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from gradient_service_client.cli import main
from tests.live_server import live_url  # noqa: F401  (fixture)
from tests.test_grade import student

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PATH = ROOT / "examples" / "two_layer_sigmoid_bce.json"
EXAMPLE = json.loads(EXAMPLE_PATH.read_text())


def cli(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def npz_body(tmp_path) -> Path:
    """The README's example as an .npz of X, Y, W1, b1, W2, b2."""
    arrays = {"X": np.array(EXAMPLE["X"]), "Y": np.array(EXAMPLE["Y"], dtype=float)}
    for l, layer in enumerate(EXAMPLE["layers"], 1):
        arrays[f"W{l}"], arrays[f"b{l}"] = np.array(layer["W"]), np.array(layer["b"])
    path = tmp_path / "net.npz"
    np.savez(path, **arrays)
    return path


def test_gradients_json_is_the_service_answer_as_it_came(live_url):
    result = cli("gradients", str(EXAMPLE_PATH), "--url", live_url, "--json")
    assert result.exit_code == 0
    raw = httpx.post(live_url + "/v1/gradients", json=EXAMPLE).text
    assert result.stdout.strip() == raw.strip()


def test_gradients_from_npz_prints_readably_and_saves_npz(live_url, npz_body, tmp_path):
    out = tmp_path / "grads.npz"
    acts = ",".join(layer["activation"] for layer in EXAMPLE["layers"])
    result = cli("gradients", str(npz_body), "--activations", acts, "--cost", EXAMPLE["cost"], "--url", live_url,
                 "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "cost  0.676733526293133" in result.stdout and "dW1   (3, 2)" in result.stdout
    reference = httpx.post(live_url + "/v1/gradients", json=EXAMPLE).json()
    with np.load(out) as saved:
        for key, value in reference["gradients"].items():
            assert np.array_equal(saved[key], np.array(value)), key
        assert float(saved["cost"]) == reference["cost"]


def test_npz_bodies_need_their_options(npz_body, live_url):
    result = CliRunner().invoke(main, ["gradients", str(npz_body), "--url", live_url, "--cost", "binary_cross_entropy"])
    assert result.exit_code == 2 and "--activations names 0 activation(s) for 2 layers" in result.output


def test_grade_native_readable_and_every_format(live_url, tmp_path):
    wrong = student(EXAMPLE, "missing_1_over_m", 2)
    sub_npz = tmp_path / "sub.npz"
    np.savez(sub_npz, **{k: np.asarray(v) for k, v in wrong.items() if k in ("dW1", "dW2", "cost")})
    result = cli("grade", str(EXAMPLE_PATH), "--submission", str(sub_npz), "--url", live_url,
                 "--points", '{"dW1": 2, "dW2": 2, "cost": 1}')
    assert result.exit_code == 0, result.output
    assert "score 1 / 5" in result.stdout and "1/m factor is missing" in result.stdout
    assert "errors: power_of_ten" in result.stdout
    sub_json = tmp_path / "sub.json"
    sub_json.write_text(json.dumps({"cost": float(wrong["cost"])}))
    batch = cli("grade", str(EXAMPLE_PATH), "--submission", str(sub_npz), "--submission", str(sub_json),
                "--url", live_url)
    assert "submissions[0]: score" in batch.stdout and "submissions[1]: score 1 / 1" in batch.stdout
    xml = cli("grade", str(EXAMPLE_PATH), "--submission", str(sub_npz), "--url", live_url, "--format", "junit")
    assert xml.stdout.startswith("<?xml") and "<testsuites" in xml.stdout
    for fmt in ("gradescope", "prairielearn"):
        doc = cli("grade", str(EXAMPLE_PATH), "--submission", str(sub_json), "--url", live_url, "--format", fmt)
        assert doc.exit_code == 0 and "cost" in doc.stdout and "score 1" in doc.stdout, fmt
        as_json = json.loads(cli("grade", str(EXAMPLE_PATH), "--submission", str(sub_json), "--url", live_url,
                                 "--format", fmt, "--json").stdout)
        assert as_json["score"] == 1.0, fmt


def test_check_exits_1_when_the_gradients_are_wrong(live_url, tmp_path):
    ok = cli("check", str(EXAMPLE_PATH), "--url", live_url)
    assert ok.exit_code == 0 and ok.stdout.startswith("passed: difference")
    mine = tmp_path / "mine.json"
    wrong = student(EXAMPLE, "missing_1_over_m", 2)
    mine.write_text(json.dumps({k: np.asarray(v).tolist() for k, v in wrong.items() if k[:2] in ("dW", "db")}))
    bad = CliRunner().invoke(main, ["check", str(EXAMPLE_PATH), "--url", live_url, "--gradients", str(mine)])
    assert bad.exit_code == 1 and bad.stdout.startswith("FAILED") and "checked: submission" in bad.stdout


def test_explain_tells_each_step(live_url):
    result = cli("explain", str(EXAMPLE_PATH), "--url", live_url, "--set", "hidden_layer=1")
    assert result.exit_code == 0
    assert "canonical pair: dZ_L = A_L - Y" in result.stdout and "\n1. " in result.stdout
    assert json.loads(cli("explain", "-", "--url", live_url, "--json", input=json.dumps(EXAMPLE)).stdout)["canonical"]


def test_errors_are_printed_located_with_exit_2_and_an_unreachable_service_is_exit_3(tmp_path, live_url):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**EXAMPLE, "l2": -1, "cost": "hinge"}))
    result = CliRunner().invoke(main, ["gradients", str(bad), "--url", live_url])
    assert result.exit_code == 2
    assert "error: 422 Invalid request" in result.stderr
    assert "  l2: " in result.stderr and "  cost: " in result.stderr
    down = CliRunner().invoke(main, ["gradients", str(EXAMPLE_PATH), "--url", "http://127.0.0.1:9", "--retries", "0"])
    assert down.exit_code == 3 and "ConnectError" in down.stderr
    nowhere = CliRunner(env={"GRADIENT_SERVICE_URL": None}).invoke(main, ["gradients", str(EXAMPLE_PATH)])
    assert nowhere.exit_code == 2 and "--local" in nowhere.output


def test_the_console_script_runs_locally():
    script = Path(sys.executable).parent / "gradient-service"
    proc = subprocess.run([str(script), "gradients", str(EXAMPLE_PATH), "--local", "--json"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cost"] == 0.676733526293133
