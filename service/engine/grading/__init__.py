"""Grading a submission against the reference, and diagnosing what a wrong array points to.

``compare``: the tolerance rule and one array's comparison. ``reference``: the reference of a network, every key in
reference form, and the course's textbook forms that are also accepted. ``hypotheses``: mistaken passes, from the
mistakes the activations and layer kinds declare. ``diagnose``: which mistake a wrong array fits. ``grade``: a
submission's (or a batch's) grades.
"""

from service.engine import activations
from service.engine.grading.compare import (DEFAULT_ATOL, DEFAULT_RTOL, STATUSES, Comparison, Tolerance, compare,
                                            course_difference)
from service.engine.grading.diagnose import LOCAL_CANDIDATES, LOCAL_DIAGNOSES, Diagnosis, diagnose
from service.engine.grading.grade import KeyGrade, SubmissionGrade, grade, grade_all
from service.engine.grading.hypotheses import (NETWORK_MISTAKES, Hypothesis, Variant, backprop_from, hypotheses,
                                               run_variants)
from service.engine.grading.reference import (TEXTBOOK_ULPS, Reference, build_reference, key_names, key_summary,
                                              parse)
from service.engine.grading.steps import STEP_DIAGNOSES, StepReference
from service.engine.kinds import KINDS
from service.engine.optimizers import OPTIMIZERS


def _diagnoses() -> dict[str, str]:
    """Every diagnosis code and what it means: the local transforms, the network's mistakes, and those each
    activation and layer kind declares."""
    out = dict(LOCAL_DIAGNOSES)
    out.update(NETWORK_MISTAKES)
    for unit in activations.ACTIVATIONS.values():
        for mistake in unit.mistakes:
            out.setdefault(mistake.code, mistake.description)
    for kind in KINDS.values():
        for mistake in kind.mistakes:
            out.setdefault(mistake.code, mistake.description)
    for unit in OPTIMIZERS.values():
        for mistake in unit.mistakes:
            out.setdefault(mistake.code, mistake.description)
    for code, text in STEP_DIAGNOSES.items():
        out.setdefault(code, text)
    out["scaled_by_constant"] = "the submission is a constant multiple of the reference"
    return out


DIAGNOSES = _diagnoses()


def candidate_count(name: str, plan: list[Hypothesis]) -> int:
    """At most how many hypotheses a wrong ``name`` is tested against."""
    return LOCAL_CANDIDATES + sum(1 for h in plan if h.affects(name))


# Fixed cost of comparing one array with one candidate, in numbers compared (~15 us against ~10 ns per number).
CANDIDATE_OVERHEAD = 1500


def grading_work(layers, dropout, submissions) -> int:
    """The price of grading ``submissions`` (each key -> its number of entries), counted before any work as if
    every key were wrong: each array is compared with the reference and with every candidate it may be tested
    against, each comparison ``entries + CANDIDATE_OVERHEAD``."""
    plan = hypotheses(layers, dropout)
    counts: dict[str, int] = {}
    work = 0
    for sub in submissions:
        for name, size in sub.items():
            if name not in counts:
                counts[name] = 1 + candidate_count(name, plan)
            work += counts[name] * (size + CANDIDATE_OVERHEAD)
    return work


def is_per_example(name: str) -> bool:
    """Whether the key's array is per example (follows the request's layouts)."""
    return parse(name).per_example


__all__ = ["CANDIDATE_OVERHEAD", "DEFAULT_ATOL", "DEFAULT_RTOL", "DIAGNOSES", "LOCAL_CANDIDATES", "STATUSES",
           "TEXTBOOK_ULPS", "Comparison", "Diagnosis", "Hypothesis", "KeyGrade", "Reference", "SubmissionGrade",
           "StepReference", "Tolerance", "Variant", "backprop_from", "build_reference", "candidate_count", "compare",
           "course_difference", "diagnose", "grade", "grade_all", "grading_work", "hypotheses", "is_per_example",
           "key_names", "key_summary", "parse", "run_variants"]
