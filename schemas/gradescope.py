"""POST /v1/grade with ``format: gradescope``: the Gradescope ``results.json`` document and its texts.

The document is built from the native result (``schemas.grading``), already coarsened when the reference is not
revealed: every number a text shows is one the native result shows too. A malformed submission of a batch gets a
document with one failed test, ``submission``, whose output lists the located errors.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, RootModel

from service.engine.grading import Tolerance

VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")


# One Gradescope test case: one graded key.
class GradescopeTest(BaseModel):
    name: str
    score: float
    max_score: float
    status: Literal["passed", "failed"]
    output: str
    visibility: str


# A Gradescope results.json document: one submission.
class GradescopeResults(BaseModel):
    score: float
    output: str
    tests: list[GradescopeTest]


# The body of a 200 from POST /v1/grade with format gradescope: the document, or {"results": [...]} in batch form.
class GradescopeResponse(RootModel[Union[GradescopeResults, dict[str, list[GradescopeResults]]]]):
    pass


def shape_text(dims: list[int]) -> str:
    """[3, 1] -> '(3, 1)'; [3] -> '(3,)'; [] -> '()'."""
    return "(" + ", ".join(str(d) for d in dims) + (",)" if len(dims) == 1 else ")")


def _error_text(value: float | None, exact: bool) -> str:
    if value is None:
        return "beyond float64's range"
    return f"{value:.6g}" if exact else f"<= {value:g}"


def _incorrect_text(k: dict[str, Any], rule: str, precision: str) -> str:
    key = k["key"]
    if precision == "none":
        return f"{key}: incorrect: some entries are outside {rule}"
    exact = precision == "exact"
    w = k["worst"]
    text = (f"{key}: incorrect: {k['wrong_entries']} of {k['entries']} entries outside {rule}; max abs error "
            f"{_error_text(k['max_abs_error'], exact)}, difference {_error_text(k['difference'], exact)}"
            + ("" if exact else " (rounded up to powers of ten)")
            + f"; the worst entry is {w['index']}, where you have {w['submitted']!r}")
    if w.get("reference") is not None:
        text += f" and the reference is {w['reference']!r}"
    return text


def key_output(k: dict[str, Any], tol: Tolerance, precision: str) -> str:
    """The text of one key's test: its status in words, the numbers of the native result, the diagnosis, notes.
    ``precision``: ``exact`` (reveal), ``power_of_ten`` (errors said as upper bounds) or ``none`` (no errors)."""
    key, status = k["key"], k["status"]
    rule = f"|s - r| <= {tol.atol:g} + {tol.rtol:g} |r|"
    if status == "correct":
        text = f"{key}: correct (every entry within {rule})"
    elif status == "missing":
        text = f"{key}: missing (not submitted)"
    elif status == "not_a_number":
        text = f"{key}: {k['null_entries']} null entries, the first at {k['first_null']}"
    elif status == "shape_mismatch":
        text = f"{key}: shape {shape_text(k['shape'])}, expected {shape_text(k['expected_shape'])}"
    else:
        text = _incorrect_text(k, rule, precision)
    if k.get("diagnosis"):
        text += f"\nLikely mistake: {k['diagnosis']['message']}"
    for note in k["notes"]:
        if note not in text:
            text += f"\nNote: {note}"
    return text


def document(result: dict[str, Any], tol: Tolerance, visibility: str, precision: str) -> dict[str, Any]:
    """One native result (``GradeResult`` as a dict) -> a Gradescope results.json document."""
    tests = [{"name": k["key"], "score": k["earned"], "max_score": k["points"],
              "status": "passed" if k["status"] == "correct" else "failed",
              "output": key_output(k, tol, precision), "visibility": visibility} for k in result["keys"]]
    lines = [f"Score: {result['score']:g} / {result['max_score']:g}"]
    lines += [f"Likely mistake ({', '.join(d['keys'])}): {d['message']}" for d in result["diagnoses"]]
    return {"score": result["score"], "output": "\n".join(lines), "tests": tests}


def invalid_document(result: dict[str, Any], visibility: str) -> dict[str, Any]:
    """A malformed submission's native result -> a document with one failed test that says why."""
    lines = [f"{e['location']}: {e['message']}" for e in result["errors"]]
    output = "The submission could not be graded:\n" + "\n".join(lines)
    test = {"name": "submission", "score": 0.0, "max_score": result["max_score"], "status": "failed",
            "output": output, "visibility": visibility}
    return {"score": 0.0, "output": f"Score: 0 / {result['max_score']:g}\n{output}", "tests": [test]}
