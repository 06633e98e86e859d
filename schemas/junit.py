"""POST /v1/grade with ``format: junit``: JUnit XML for CI-based graders (CodeGrade's unit-test step, GitLab, Jenkins).

The body is the XML itself, ``application/xml``, as those tools read it from a file (errors stay problem+json):
a ``<testsuites>`` root; a ``<testsuite>`` per submission (``submission``, or ``submissions[i]`` in the batch form)
whose properties hold ``score`` and ``max_score``; a ``<testcase>`` per graded key, a wrong one with a
``<failure>`` whose ``message`` is the verdict and the likely mistake, and whose text is the details; the key's
points in its ``<system-out>``. A malformed submission of a batch is a suite with one ``submission`` test case in
``<error>``, its located problems in the text.

Built from the native result (``schemas.grading``) with the Gradescope texts: every number it shows is one the
native result shows too.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

from schemas.gradescope import key_output
from schemas.prairielearn import verdict
from service.engine.grading import Tolerance

MEDIA_TYPE = "application/xml"


class JUnitXML(bytes):
    """A JUnit XML document (UTF-8), which the route sends as ``application/xml``."""


def _suite(name: str, result: dict[str, Any], tol: Tolerance, precision: str) -> ET.Element:
    suite = ET.Element("testsuite", name=name, time="0", skipped="0")
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="score", value=f"{result['score']:g}")
    ET.SubElement(props, "property", name="max_score", value=f"{result['max_score']:g}")
    failures = errors = 0
    if result["status"] == "invalid":
        case = ET.SubElement(suite, "testcase", name="submission", classname=name, time="0")
        problems = "\n".join(f"{e['location']}: {e['message']}" for e in result["errors"])
        ET.SubElement(case, "error", message="the submission could not be graded", type="invalid").text = problems
        errors = 1
    for k in result["keys"]:
        case = ET.SubElement(suite, "testcase", name=k["key"], classname=name, time="0")
        if k["status"] != "correct":
            failures += 1
            ET.SubElement(case, "failure", message=verdict(k), type=k["status"]).text = key_output(k, tol, precision)
        ET.SubElement(case, "system-out").text = f"points: {k['earned']:g} / {k['points']:g}"
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    return suite


def response(results: list[dict[str, Any]], tol: Tolerance, precision: str, batch: bool) -> JUnitXML:
    """The XML body of POST /v1/grade in this format, for one submission or a batch."""
    root = ET.Element("testsuites", name="gradient-service")
    names = [f"submissions[{i}]" for i in range(len(results))] if batch else ["submission"]
    for name, result in zip(names, results):
        root.append(_suite(name, result, tol, precision))
    for field in ("tests", "failures", "errors"):
        root.set(field, str(sum(int(s.get(field)) for s in root)))
    root.set("time", "0")
    ET.indent(root)  # readable in a CI log; the texts of failures and errors are left as they are
    return JUnitXML(ET.tostring(root, encoding="utf-8", xml_declaration=True))
