"""The course's functions, as a kit calls them: how to build a seeded network, what to pass each function, and
which of the service's keys its answer holds. These follow the classic course code ("Building your Deep Neural
Network: Step by Step"): ``parameters`` holds ``W1, b1, ..``; ``L_model_forward(X, parameters) -> AL, caches``;
``compute_cost(AL, Y) -> cost``; ``L_model_backward(AL, Y, caches) -> grads`` with ``dA0..dA{L-1}``, ``dW1..``,
``db1..``; a cache of layer l is ``((A_prev, W, b), Z)``.

Non-cascading: every kind but ``forward`` is called on the reference's inputs (the service's forward pass of the
same network), not on the student's, so one early mistake costs the keys it touches and nothing after it. A
course with other signatures adds a kind here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gradient_service_client.kit.sandbox import Unsupported

MAX_ENTRIES = 1_000_000  # per returned array: a kit's networks are small
EVERY_KEY = "*"  # an answer's problem that concerns every key (it is not the dict expected)


def network(spec: dict[str, Any]) -> dict[str, Any]:
    """A /v1/gradients body from a seeded spec: ``sizes`` [n_x, n_1, .., n_L], ``hidden`` and ``output``
    activations, ``cost``, ``m`` examples, ``seed``. Weights He-scaled, biases small, binary or one-hot labels."""
    rng = np.random.default_rng(spec["seed"])
    sizes, m = spec["sizes"], spec["m"]
    L = len(sizes) - 1
    layers = [{"W": rng.standard_normal((sizes[l], sizes[l - 1])) * np.sqrt(2.0 / sizes[l - 1]),
               "b": rng.normal(0.0, 0.1, (sizes[l], 1)),
               "activation": spec.get("output", "sigmoid") if l == L else spec.get("hidden", "relu")}
              for l in range(1, L + 1)]
    X = rng.standard_normal((sizes[0], m))
    cost = spec.get("cost", "binary_cross_entropy")
    if cost == "categorical_cross_entropy":
        Y = np.eye(sizes[-1])[:, rng.integers(0, sizes[-1], m)]
    elif cost == "binary_cross_entropy":
        Y = rng.integers(0, 2, (sizes[-1], m)).astype(np.float64)
    else:
        Y = rng.standard_normal((sizes[-1], m))
    return {"layers": layers, "X": X, "Y": Y, "cost": cost}


def parameters(body: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for l, layer in enumerate(body["layers"], 1):
        out[f"W{l}"], out[f"b{l}"] = np.array(layer["W"]), np.array(layer["b"])
    return out


def caches(body: dict[str, Any], reference: Any) -> list[tuple]:
    """The course's caches of the reference forward pass: ``((A_prev, W, b), Z)`` per layer."""
    A_prev, out = np.array(body["X"]), []
    for l, layer in enumerate(body["layers"], 1):
        out.append(((A_prev, np.array(layer["W"]), np.array(layer["b"])), reference.caches[f"Z{l}"]))
        A_prev = reference.caches[f"A{l}"]
    return out


@dataclass(frozen=True)
class Kind:
    """One course function: its default keys (by the number of layers), whether it needs the reference's forward
    pass, its arguments, and how its answer maps to the service's keys."""

    default_keys: Callable[[int], list[str]]
    needs_reference: bool
    args: Callable[[dict[str, Any], Any], tuple]
    answer: Callable[[Any], dict[str, Any]]


def _forward_answer(value: Any) -> dict[str, Any]:
    AL = value[0] if isinstance(value, tuple) and value else value
    return {"AL": AL}


def _grads_answer(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    name = value.type if isinstance(value, Unsupported) else type(value).__name__
    return {EVERY_KEY: f"the function returned a {name}, not a dict of gradients (grads[\"dW1\"], ...)"}


KINDS = {
    "forward": Kind(lambda L: ["AL"], False, lambda body, ref: (np.array(body["X"]), parameters(body)),
                    _forward_answer),
    "cost": Kind(lambda L: ["cost"], True, lambda body, ref: (ref.AL, np.array(body["Y"])),
                 lambda value: {"cost": value}),
    "backward": Kind(lambda L: [f"dW{l}" for l in range(1, L + 1)] + [f"db{l}" for l in range(1, L + 1)]
                     + [f"dA{l}" for l in range(L)], True,
                     lambda body, ref: (ref.AL, np.array(body["Y"]), caches(body, ref)), _grads_answer),
}


def submission(answer: dict[str, Any], keys: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The graded keys of an answer, as the service takes them, and a problem per key that cannot be sent (it is
    then graded ``missing``, and the problem is told). Non-finite entries are sent as null (``not_a_number``)."""
    if EVERY_KEY in answer:
        return {}, {key: answer[EVERY_KEY] for key in keys}
    sub, problems = {}, {}
    for key in keys:
        if key not in answer:
            continue
        value = answer[key]
        if isinstance(value, Unsupported):
            problems[key] = f"{key} is {value.type} ({value.repr}), not an array of numbers"
            continue
        if not isinstance(value, (np.ndarray, float)):
            problems[key] = f"{key} is a {type(value).__name__}, not an array of numbers"
            continue
        a = np.asarray(value, dtype=np.float64)
        if key == "cost":
            if a.size != 1:
                problems[key] = f"cost has {a.size} entries (shape {a.shape}); it is one number"
                continue
            a = a.reshape(())
        elif a.ndim not in (1, 2) or a.size == 0:
            problems[key] = f"{key} has shape {a.shape}; a matrix or a vector was expected"
            continue
        elif a.size > MAX_ENTRIES:
            problems[key] = f"{key} has {a.size} entries, far more than any array of this network"
            continue
        sub[key] = float(a) if a.ndim == 0 and np.isfinite(a) else np.where(np.isfinite(a), a, np.nan)
    return sub, problems
