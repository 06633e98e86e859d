"""POST /v1/grade with ``format: prairielearn``: a PrairieLearn external grader's ``results.json``.

PrairieLearn reads ``score`` (a fraction in [0, 1]) and shows ``message`` and ``tests[]`` (``name``,
``description``, ``points``, ``max_points``, ``message``, ``output``) with its ``pl-external-grader-results``
element; the whole document is stored as the submission's feedback. A malformed submission of a batch is
``gradable: false`` with its located problems in ``format_errors``, so that PrairieLearn charges no attempt for it.

Built from the native result (``schemas.grading``), already coarsened when the reference is not revealed, with
the same texts as the Gradescope document: every number a text shows is one the native result shows too.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, Field, RootModel

from schemas.gradescope import key_output, shape_text
from service.engine.grading import Tolerance


# One graded key.
class PrairieLearnTest(BaseModel):
    name: str = Field(description="The key, e.g. `dW1`.")
    description: str
    points: float = Field(description="Points earned: `max_points` when correct, else 0.")
    max_points: float
    message: str = Field(description="The verdict, and the likely mistake when the numbers point to one.")
    output: str = Field(description="The details: errors (bounds without `reveal`), the worst entry, notes.")


# A PrairieLearn results.json document: one submission.
class PrairieLearnResults(BaseModel):
    gradable: bool = Field(description="False for a malformed submission (PrairieLearn charges no attempt).")
    score: float = Field(description="Points earned over points available, in [0, 1] (0 when nothing is worth "
                                     "points).")
    message: str = Field(description="The score in points and the distinct mistakes found.")
    tests: list[PrairieLearnTest]
    format_errors: Optional[list[str]] = Field(default=None, description="Why a malformed submission was not graded "
                                                                         "(only with `gradable: false`).")


# The body of a 200 from POST /v1/grade with format prairielearn: the document, or {"results": [...]} in batch form.
class PrairieLearnResponse(RootModel[Union[PrairieLearnResults, dict[str, list[PrairieLearnResults]]]]):
    pass


def verdict(k: dict[str, Any]) -> str:
    """A key's status in words, and the likely mistake when there is one."""
    status = k["status"].replace("_", " ")
    text = f"{k['key']}: {status}"
    if k.get("diagnosis"):
        text += f". Likely mistake: {k['diagnosis']['message']}"
    return text


def _description(k: dict[str, Any]) -> str:
    shape = k["expected_shape"]
    return f"{k['key']}, a number" if not shape else f"{k['key']}, an array of shape {shape_text(shape)}"


def document(result: dict[str, Any], tol: Tolerance, precision: str) -> dict[str, Any]:
    """One native result (``GradeResult`` as a dict) -> a PrairieLearn results.json document."""
    if result["status"] == "invalid":
        return invalid_document(result)
    tests = [{"name": k["key"], "description": _description(k),
              "points": k["earned"], "max_points": k["points"], "message": verdict(k),
              "output": key_output(k, tol, precision)} for k in result["keys"]]
    lines = [f"Score: {result['score']:g} / {result['max_score']:g}"]
    lines += [f"Likely mistake ({', '.join(d['keys'])}): {d['message']}" for d in result["diagnoses"]]
    score = result["score"] / result["max_score"] if result["max_score"] > 0 else 0.0
    return {"gradable": True, "score": min(1.0, score), "message": "\n".join(lines), "tests": tests}


def invalid_document(result: dict[str, Any]) -> dict[str, Any]:
    """A malformed submission's native result -> not gradable, its problems listed."""
    problems = [f"{e['location']}: {e['message']}" for e in result["errors"]]
    return {"gradable": False, "score": 0.0, "message": "The submission could not be graded:\n" + "\n".join(problems),
            "tests": [], "format_errors": problems}


def response(results: list[dict[str, Any]], tol: Tolerance, precision: str, batch: bool) -> dict[str, Any]:
    """The body of POST /v1/grade in this format: one document, or ``{"results": [...]}`` for a batch."""
    docs = [document(r, tol, precision) for r in results]
    return {"results": docs} if batch else docs[0]
