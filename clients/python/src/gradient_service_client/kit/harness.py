"""The autograder: run each test of a kit's config on the student's module, grade every returned array through
POST /v1/grade (``reveal: false``), and write the platform's results file (Gradescope ``results.json``,
PrairieLearn ``results.json``, or JUnit XML).

The config (JSON)::

    {"module": "dnn.py", "time_limit_seconds": 10, "memory_limit_mb": 512, "rtol": 1e-5, "atol": 1e-8,
     "gradescope": {"stdout_visibility": "hidden"},
     "tests": [{"name": "L_model_backward", "function": "L_model_backward", "kind": "backward",
                "network": {"sizes": [5, 4, 3, 1], "hidden": "relu", "output": "sigmoid", "m": 8, "seed": 3},
                "points": {"dW1": 2, ...}, "visibility": "visible"}, ...]}

``kind`` is one of ``course.KINDS``; ``points`` defaults to 1 per key of the kind; ``visibility`` is Gradescope's
(``hidden`` tests are graded, and left out of the summary the student sees). Each test grades its own seeded
network, and each function runs on the reference's inputs (course.py), so one mistake is not paid twice.

The service's documents are used as they come (the per-key tests, their texts and diagnoses), with the test's
name in front of each key. A failure of the student's code (time, memory, a crash, an exception) fails that
test's keys with the reason. A failure of the service is not the student's: ``GradingUnavailable`` is raised and
no results file is written, so that the platform reports the autograder as failed instead of a zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from gradient_service_client import errors
from gradient_service_client.client import Client
from gradient_service_client.kit import course, sandbox

FORMATS = {"gradescope": "gradescope", "prairielearn": "prairielearn", "junit": "junit"}


class GradingUnavailable(Exception):
    """The grading service failed or could not be reached: not the student's fault, nothing is written."""


@dataclass
class Case:
    """One test of the config, run and graded: ``doc`` is the service's document for it (a dict, or a JUnit
    testsuite element); without one, ``failure`` says why the student's code gave nothing to grade."""

    name: str
    points: dict[str, float]
    visibility: str
    function: str = ""
    kind: course.Kind | None = None
    body: dict | None = None
    args: tuple = ()
    doc: Any = None
    failure: sandbox.Outcome | None = None
    problems: dict[str, str] | None = None


def run(config_path: Path, platform: str, submission_dir: Path, results_file: Path, *, url: str | None = None,
        api_key: str | None = None, local: bool = False, python: str | None = None,
        run_as: str | None = None) -> dict | str:
    """Grade ``submission_dir`` by ``config_path``, write ``results_file``, and return what was written.
    ``python``: the interpreter of the student's code (default: this one); ``run_as``: the user it runs as."""
    config = json.loads(Path(config_path).read_text())
    limits = sandbox.Limits(seconds=float(config.get("time_limit_seconds", 10)),
                            memory_mb=int(config.get("memory_limit_mb", 512)),
                            python=python or sandbox.Limits().python, run_as=run_as or None)
    module = (Path(submission_dir) / config.get("module", "dnn.py")).resolve()
    client = Client(local=True) if local else Client(url, api_key=api_key, timeout=60)
    with client:
        cases = [_prepare(client, test) for test in config["tests"]]
        if module.exists():
            outcomes = sandbox.call_all(module, [(c.function, c.args) for c in cases], limits)
        else:
            outcomes = [sandbox.Outcome(False, kind="import", reason=f"was not found: {module.name} was not "
                                                                     f"submitted") for _ in cases]
        for case, outcome in zip(cases, outcomes):
            _grade(client, case, outcome, config, platform)
    out = {"gradescope": _gradescope, "prairielearn": _prairielearn, "junit": _junit}[platform](cases, config)
    results_file = Path(results_file)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(out if isinstance(out, str) else json.dumps(out, indent=1))
    return out


def _prepare(client: Client, test: dict) -> Case:
    """A test's network, the points of its keys, and the arguments of the student's function (the reference's
    forward pass, from the service, for every kind but ``forward``)."""
    kind = course.KINDS[test["kind"]]
    body = course.network(test["network"])
    L = len(body["layers"])
    points = {k: float(v) for k, v in (test.get("points") or {k: 1 for k in kind.default_keys(L)}).items()}
    reference = _service(client.gradients, body, include_caches=True) if kind.needs_reference else None
    return Case(test.get("name", test["function"]), points, test.get("visibility", "visible"),
                function=test["function"], kind=kind, body=body, args=kind.args(body, reference))


def _grade(client: Client, case: Case, outcome: sandbox.Outcome, config: dict, platform: str) -> None:
    """The student's answer graded by the service (``case.doc``), or the failure that left nothing to grade."""
    if not outcome.ok:
        case.failure = outcome
        return
    sub, case.problems = course.submission(case.kind.answer(outcome.value), list(case.points))
    request = {**case.body, "submission": sub, "points": case.points, "reveal": False, "format": FORMATS[platform],
               "rtol": config.get("rtol", 1e-5), "atol": config.get("atol", 1e-8)}
    if platform == "gradescope":
        request["visibility"] = case.visibility
    doc = _service(client.grade, request)
    case.doc = ET.fromstring(doc).find("testsuite") if platform == "junit" else doc


def _service(method, *args, **kwargs):
    """A call to the service; its failures are not the student's."""
    try:
        return method(*args, **kwargs)
    except errors.GradientServiceError as exc:
        raise GradingUnavailable(f"the grading service failed: {exc}") from exc


def _failure_text(case: Case) -> str:
    out = case.failure
    text = f"{case.name}: your function {out.reason}"
    if out.stdout.strip():
        text += f"\nIts output (the last lines):\n{out.stdout.strip()}"
    return text


def _short(reason: str) -> str:
    """A reason in one line: its first and last lines (the traceback's exception, say)."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    return lines[0].rstrip(":") + (f": {lines[-1]}" if len(lines) > 1 else "")


def _renamed(case: Case, test: dict) -> dict:
    """A test of the service's document under the case's name, with the problem of its key, if any."""
    output = test["output"] + _problem_note(case, test["name"])
    return {**test, "name": f"{case.name}: {test['name']}", "output": output}


def _problem_note(case: Case, key: str) -> str:
    return f"\nNote: {case.problems[key]}" if case.problems and key in case.problems else ""


# --- Gradescope -----------------------------------------------------------------------------------------------

def _gradescope(cases: list[Case], config: dict) -> dict:
    tests, lines, total = [], [], 0.0
    for case in cases:
        if case.doc is None:
            case_tests = [{"name": f"{case.name}: {k}", "score": 0.0, "max_score": p, "status": "failed",
                           "output": _failure_text(case), "visibility": case.visibility}
                          for k, p in case.points.items()]
        else:
            case_tests = [_renamed(case, t) for t in case.doc["tests"]]
        tests += case_tests
        earned = sum(t["score"] for t in case_tests)
        total += earned
        if case.visibility == "visible":
            lines.append(f"{case.name}: {earned:g} / {sum(case.points.values()):g}")
            if case.failure is not None:
                lines.append("  your function " + _short(case.failure.reason))
            else:
                lines += [f"  {line}" for line in case.doc["output"].splitlines()[1:]]  # its diagnoses
    return {"score": total, "output": "\n".join(lines), "tests": tests, **config.get("gradescope", {})}


# --- PrairieLearn ---------------------------------------------------------------------------------------------

def _prairielearn(cases: list[Case], config: dict) -> dict:
    tests, lines = [], []
    for case in cases:
        if case.doc is None:
            reason = _failure_text(case)
            case_tests = [{"name": f"{case.name}: {k}", "description": f"{k} from {case.name}", "points": 0.0,
                           "max_points": p, "message": "your function " + _short(case.failure.reason), "output": reason}
                          for k, p in case.points.items()]
        else:
            case_tests = [_renamed(case, t) for t in case.doc["tests"]]
        tests += case_tests
        earned = sum(t["points"] for t in case_tests)
        lines.append(f"{case.name}: {earned:g} / {sum(case.points.values()):g}")
        if case.failure is not None:
            lines.append("  your function " + _short(case.failure.reason))
        else:
            lines += [f"  {line}" for line in case.doc["message"].splitlines()[1:]]
    worth = sum(t["max_points"] for t in tests)
    score = sum(t["points"] for t in tests) / worth if worth else 0.0
    return {"gradable": True, "score": score, "message": "\n".join(lines), "tests": tests}


# --- JUnit XML ------------------------------------------------------------------------------------------------

def _junit(cases: list[Case], config: dict) -> str:
    root = ET.Element("testsuites", name=config.get("name", "autograder"))
    for case in cases:
        if case.doc is None:
            suite = ET.SubElement(root, "testsuite", name=case.name, time="0", skipped="0")
            for key, p in case.points.items():
                tc = ET.SubElement(suite, "testcase", name=key, classname=case.name, time="0")
                ET.SubElement(tc, "error", message="your function " + _short(case.failure.reason),
                              type=case.failure.kind).text = _failure_text(case)
                ET.SubElement(tc, "system-out").text = f"points: 0 / {p:g}"
            suite.set("tests", str(len(case.points)))
            suite.set("failures", "0")
            suite.set("errors", str(len(case.points)))
            continue
        suite = case.doc
        suite.set("name", case.name)
        for tc in suite.findall("testcase"):
            tc.set("classname", case.name)
            failure = tc.find("failure")
            if failure is not None and case.problems and tc.get("name") in case.problems:
                failure.text = (failure.text or "") + _problem_note(case, tc.get("name"))
        root.append(suite)
    for field in ("tests", "failures", "errors"):
        root.set(field, str(sum(int(s.get(field)) for s in root)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)
