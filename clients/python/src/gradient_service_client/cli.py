"""The ``gradient-service`` command: gradients, grade, check and explain from JSON or .npz files, and the
autograder kit (``autograde``).

A body is a JSON file (a request body, ``-`` for stdin) or an .npz with the arrays ``X``, ``Y``, ``W1..WL``,
``b1..bL`` (and dropout masks ``D1..D{L-1}``), the rest given as options (``--activations``, ``--cost``,
``--keep-prob``) or as ``--set field=value`` (any field; the value is read as JSON when it parses, else as text).
A submission is a JSON object or an .npz of the course's keys (``dW1``, ``db1``, ``cost`` as a 0-d array...).

Output is readable text; ``--json`` prints the service's answer as it came. Exit status: 0 done; 1 a gradient
check that did not pass; 2 a bad input (the service's located errors are printed); 3 the service could not be
reached or did not answer in time.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from gradient_service_client.client import Client
from gradient_service_client.errors import APIError, ConnectionFailed, RequestTimeout

EXIT_FAILED_CHECK, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 1, 2, 3


# --- inputs -------------------------------------------------------------------------------------------------------

def _read_json(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{path} is not valid JSON: {exc}") from None


def _npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path} is not a readable .npz file: {exc}") from None


def _numbered(arrays: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    found = sorted((int(m.group(1)), a) for k, a in arrays.items() if (m := re.fullmatch(prefix + r"(\d+)", k)))
    return [a for _, a in found]


def body_from_npz(arrays: dict[str, np.ndarray], activations: list[str], cost: str | None,
                  keep_prob: float | None) -> dict[str, Any]:
    """A request body from arrays X, Y, W1..WL, b1..bL, D1..: the layers get ``activations`` in order."""
    Ws, bs = _numbered(arrays, "W"), _numbered(arrays, "b")
    missing = [k for k in ("X", "Y") if k not in arrays]
    if missing or not Ws or len(Ws) != len(bs):
        raise click.BadParameter(f"the .npz needs X, Y and W1..WL, b1..bL (it has {sorted(arrays)})")
    if len(activations) != len(Ws):
        raise click.BadParameter(f"--activations names {len(activations)} activation(s) for {len(Ws)} layers")
    if cost is None:
        raise click.BadParameter("an .npz body needs --cost")
    body: dict[str, Any] = {"layers": [{"W": W, "b": b, "activation": act} for W, b, act in zip(Ws, bs, activations)],
                            "X": arrays["X"], "Y": arrays["Y"], "cost": cost}
    masks = _numbered(arrays, "D")
    if masks or keep_prob is not None:
        body["dropout"] = {"keep_prob": 1.0 if keep_prob is None else keep_prob, "masks": masks}
    return body


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_body(path: str, activations: str | None, cost: str | None, keep_prob: float | None,
              settings: tuple[str, ...]) -> dict[str, Any]:
    """The request body of a command: the file, then --cost and each --set laid over it."""
    if path.endswith(".npz"):
        body = body_from_npz(_npz(path), [a.strip() for a in (activations or "").split(",") if a.strip()], cost,
                             keep_prob)
    else:
        body = _read_json(path)
        if not isinstance(body, dict):
            raise click.BadParameter(f"{path} must hold a JSON object (a request body)")
        if cost:
            body["cost"] = cost
    for item in settings:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"--set takes field=value, got {item!r}")
        body[name] = _value(text)
    return body


def load_submission(path: str) -> dict[str, Any]:
    if path.endswith(".npz"):
        return {k: (float(a) if a.ndim == 0 else a) for k, a in _npz(path).items()}
    value = _read_json(path)
    if not isinstance(value, dict):
        raise click.BadParameter(f"{path} must hold a JSON object of the course's keys (dW1, db1, ...)")
    return value


# --- the service --------------------------------------------------------------------------------------------------

def _client(opts: dict[str, Any]) -> Client:
    if opts["local"]:
        return Client(local=True, timeout=opts["timeout"], max_retries=opts["retries"])
    if not opts["url"]:
        raise click.UsageError("give --url (or GRADIENT_SERVICE_URL), or --local to run the service in process")
    return Client(opts["url"], api_key=opts["api_key"], timeout=opts["timeout"], max_retries=opts["retries"])


def _report(exc: Exception) -> int:
    if isinstance(exc, APIError):
        click.echo(f"error: {exc.status} {exc.title}: {exc.detail}", err=True)
        for item in exc.errors:
            click.echo(f"  {item.location}: {item.message} [{item.type}]", err=True)
        return EXIT_BAD_INPUT if exc.status < 500 else EXIT_UNREACHABLE
    click.echo(f"error: {exc}", err=True)
    return EXIT_UNREACHABLE


def call(opts: dict[str, Any], route: str, body: dict[str, Any]) -> tuple[Any, str]:
    """POST ``body``: the decoded answer and its text as the service sent it; exits on an error."""
    try:
        with _client(opts) as client:
            response = client.send("POST", route, body)
            return client.codec.decode(response), response.text
    except (APIError, ConnectionFailed, RequestTimeout) as exc:
        sys.exit(_report(exc))
    except ValueError as exc:  # an infinity in the body, say
        raise click.BadParameter(str(exc)) from None


def service_options(command: Callable) -> Callable:
    """The options every command takes: where the service is, and how to print."""
    options = [
        click.option("--url", envvar="GRADIENT_SERVICE_URL", help="Service base URL [env GRADIENT_SERVICE_URL]."),
        click.option("--api-key", envvar="GRADIENT_SERVICE_API_KEY", help="Bearer key [env GRADIENT_SERVICE_API_KEY]."),
        click.option("--local", is_flag=True, help="Run the service in this process (needs its package)."),
        click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for an answer."),
        click.option("--retries", type=int, default=2, show_default=True,
                     help="Retries on connection errors, 429 and 503."),
        click.option("--json", "as_json", is_flag=True, help="Print the service's JSON answer as it came."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), command)


def body_options(command: Callable) -> Callable:
    options = [
        click.argument("body", type=click.Path(allow_dash=True)),
        click.option("--activations", help="For an .npz body: one activation per layer, comma-separated."),
        click.option("--cost", help="The cost (required for an .npz body)."),
        click.option("--keep-prob", type=float, help="For an .npz body with masks D1..: dropout's keep_prob."),
        click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE", help="Any field of the body."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), command)


# --- printing -----------------------------------------------------------------------------------------------------

def _array_text(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return np.array2string(a, precision=6, threshold=60, edgeitems=3, max_line_width=110)
    return repr(a)


def print_arrays(title: str, arrays: dict[str, Any]) -> None:
    click.echo(title)
    for key, a in arrays.items():
        shape = f"{a.shape}" if isinstance(a, np.ndarray) else ""
        text = _array_text(a).replace("\n", "\n" + " " * 8)
        click.echo(f"  {key:<5} {shape}\n        {text}" if shape else f"  {key:<5} {text}")


def _key_line(k: dict[str, Any]) -> str:
    line = f"  {k['key']:<6} {k['status']:<15} {k['earned']:g} / {k['points']:g}"
    if k.get("diagnosis"):
        line += f"   {k['diagnosis']['message']}"
    return line


def print_grade(result: Any, label: str = "") -> None:
    """A native result (one submission)."""
    head = f"{label}: " if label else ""
    if result["status"] == "invalid":
        click.echo(f"{head}not graded (invalid), 0 / {result['max_score']:g}")
        for e in result["errors"]:
            click.echo(f"  {e['location']}: {e['message']}")
        return
    click.echo(f"{head}score {result['score']:g} / {result['max_score']:g}")
    for k in result["keys"]:
        click.echo(_key_line(k))


def print_platform(doc: Any, fmt: str) -> None:
    """A Gradescope or PrairieLearn document, one test per key."""
    if fmt == "gradescope":
        click.echo(f"score {doc['score']:g}")
        for t in doc["tests"]:
            click.echo(f"  [{t['status']}] {t['name']} {t['score']:g} / {t['max_score']:g}: " +
                       t["output"].replace("\n", "\n      "))
        return
    click.echo(f"score {doc['score']:.4g} (gradable: {doc['gradable']})\n{doc['message']}")
    for t in doc["tests"]:
        click.echo(f"  {t['name']} {t['points']:g} / {t['max_points']:g}: {t['message']}")


# --- commands -----------------------------------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gradient-service-client")
def main() -> None:
    """Forward pass, cost and every backprop gradient from gradient-service, with grading and explanations."""


@main.command()
@body_options
@service_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Save cost, AL, gradients (and caches) to .npz.")
def gradients(body: str, activations, cost, keep_prob, settings, output, as_json, **opts) -> None:
    """POST /v1/gradients: the cost, AL and every gradient of BODY."""
    result, text = call(opts, "/v1/gradients", load_body(body, activations, cost, keep_prob, settings))
    if output:
        arrays = {"cost": np.array(result.cost), "AL": result.AL, **result.gradients, **(result.get("caches") or {})}
        np.savez(output, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
    if as_json:
        click.echo(text)
        return
    click.echo(f"cost  {result.cost!r}")
    print_arrays("AL", {"AL": result.AL})
    print_arrays("gradients", result.gradients)
    if result.get("caches"):
        print_arrays("caches", result.caches)
    for w in result.warnings:
        click.echo(f"warning: {w.location}: {w.message}")


@main.command()
@body_options
@service_options
@click.option("--submission", "submission_files", multiple=True, type=click.Path(allow_dash=True),
              help="A student's values (.json or .npz); give it several times for the batch form.")
@click.option("--points", help='Points per key as JSON, e.g. \'{"dW1": 2, "db1": 1}\'.')
@click.option("--format", "fmt", type=click.Choice(["native", "gradescope", "prairielearn", "junit"]),
              default="native", show_default=True)
@click.option("--reveal", is_flag=True, help="Include the reference (if the key's policy allows it).")
def grade(body, activations, cost, keep_prob, settings, submission_files, points, fmt, reveal, as_json, **opts):
    """POST /v1/grade: grade submissions against the reference of BODY."""
    request = load_body(body, activations, cost, keep_prob, settings)
    subs = [load_submission(p) for p in submission_files]
    if len(subs) == 1:
        request["submission"] = subs[0]
    elif subs:
        request["submissions"] = subs
    if points:
        request["points"] = _value(points)
    request["format"] = fmt
    if reveal:
        request["reveal"] = True
    result, text = call(opts, "/v1/grade", request)
    if as_json or fmt == "junit":
        click.echo(text)
        return
    docs = result["results"] if "results" in result else None
    if fmt != "native":
        for i, doc in enumerate(docs or [result]):
            if docs:
                click.echo(f"submissions[{i}]:")
            print_platform(doc, fmt)
        return
    for i, r in enumerate(result["results"] if docs else [result["result"]]):
        print_grade(r, f"submissions[{i}]" if docs else "")
    click.echo(f"(tolerance rtol={result.tolerance.rtol:g}, atol={result.tolerance.atol:g}; "
               f"errors: {result.error_precision})")


@main.command()
@body_options
@service_options
@click.option("--gradients", "gradients_file", type=click.Path(allow_dash=True),
              help="Your own dW/db (.json or .npz) to check instead of the service's.")
def check(body, activations, cost, keep_prob, settings, gradients_file, as_json, **opts) -> None:
    """POST /v1/gradient-check: central differences; exits 1 when the check does not pass."""
    request = load_body(body, activations, cost, keep_prob, settings)
    if gradients_file:
        request["gradients"] = load_submission(gradients_file)
    result, text = call(opts, "/v1/gradient-check", request)
    if as_json:
        click.echo(text)
    else:
        verdict = "passed" if result.passed else "FAILED"
        click.echo(f"{verdict}: difference {result.difference:.3e} (threshold {result.threshold:g}, "
                   f"{result.mode} mode, {result.forward_passes} forward passes, checked: {result.checked})")
        for p in result.parameters:
            diff = "-" if p.difference is None else f"{p.difference:.3e}"
            click.echo(f"  {p.name:<5} {p.entries_checked}/{p.entries_total} entries  difference {diff}")
        for note in result.notes:
            click.echo(f"note: {note}")
    if not result.passed:
        sys.exit(EXIT_FAILED_CHECK)


@main.command()
@body_options
@service_options
def explain(body, activations, cost, keep_prob, settings, as_json, **opts) -> None:
    """POST /v1/explain: why the last layer's gradient differs, told with BODY's numbers."""
    result, text = call(opts, "/v1/explain", load_body(body, activations, cost, keep_prob, settings))
    if as_json:
        click.echo(text)
        return
    click.echo(f"{result.cost} with a {result.output_activation} output "
               f"({'canonical pair: dZ_L = A_L - Y' if result.canonical else 'not a canonical pair'})")
    for n, step in enumerate(result.steps, 1):
        click.echo(f"\n{n}. {step.title}\n   {step.text}\n   {step.latex}")
    for note in result.notes:
        click.echo(f"\nnote: {note}")


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--platform", type=click.Choice(["gradescope", "prairielearn", "junit"]), required=True)
@click.option("--submission", "submission_dir", type=click.Path(file_okay=False), required=True,
              help="The directory holding the student's files.")
@click.option("--results", "results_file", type=click.Path(dir_okay=False), required=True,
              help="Where to write the platform's results file.")
@click.option("--url", envvar="GRADIENT_SERVICE_URL", help="Service base URL [env GRADIENT_SERVICE_URL].")
@click.option("--api-key", envvar="GRADIENT_SERVICE_API_KEY", help="Bearer key [env GRADIENT_SERVICE_API_KEY].")
@click.option("--local", is_flag=True, help="Run the service in this process (no network).")
@click.option("--python", "python", help="Interpreter for the student's code (default: this one).")
@click.option("--run-as", help="Run the student's code as this user (when started as root).")
def autograde(config, platform, submission_dir, results_file, url, api_key, local, python, run_as) -> None:
    """Run a student's module on the kit's seeded networks and write the platform's results (see the README's
    Autograder kits)."""
    from gradient_service_client.kit import harness

    if not local and not url:
        raise click.UsageError("give --url (or GRADIENT_SERVICE_URL), or --local")
    try:
        harness.run(Path(config), platform, Path(submission_dir), Path(results_file), url=url, api_key=api_key,
                    local=local, python=python, run_as=run_as)
    except harness.GradingUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)


if __name__ == "__main__":  # pragma: no cover
    main()
