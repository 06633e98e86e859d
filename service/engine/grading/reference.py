"""The reference a submission is graded against: one ``compute`` of the network, every key in reference form.

Reference form: the per-example keys (AL, dZ, dA) in the engine's layout (vectors features first, (n_l, m)); each
parameter's gradient and each running statistic as its array was sent (the kind's ``to_wire``: db as a vector
or a column, dW in the request's weight layout); ``cost`` a 0-d array. The keys are built by ``keys``.

``cost`` and ``dA_L`` are also accepted where they match the course's own formulas evaluated in float64 from A_L
(``textbook_bounds``): J = -mean(Y log A + (1-Y) log(1-A)) and dA = -(Y/A - (1-Y)/(1-A)) lose their digits where
A_L is within a few ulps of 1 (1 - A_L keeps few), and a student who follows the course exactly gets those digits
wrong. An entry within the tolerance of the interval the textbook formula spans when A_L moves by up to
``TEXTBOOK_ULPS`` units in the last place passes, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from service.engine import costs, keys
from service.engine.kinds import Layouts, param_names, state_names
from service.engine.network import Dropout, Layer, LayerCache, Result, compute, param_order, penalty

Array = np.ndarray

# How far (in units in the last place) a student's A_L may sit from the exact one: every common float64 form of the
# sigmoid (1/(1 + exp(-z)), exp(z)/(1 + exp(z)), 0.5 (1 + tanh(z/2))) lands within 2 ulps for z > 0.
TEXTBOOK_ULPS = 3


def parse(name: str) -> keys.Key:
    """A key of any network the registered kinds can build."""
    return keys.parse(name, param_names(), state_names())


def key_names(layers: list[Layer]) -> list[str]:
    """Every gradable key of the network, in the canonical order: cost, AL, each parameter's gradient across the
    layers (dW1..dWL, db1..dbL, dgamma.., dbeta..), dZ1..dZL, dA0..dAL, the running statistics."""
    L = len(layers)
    out = [keys.COST, keys.OUTPUT]
    for name in param_order():
        out += [keys.grad(name, l) for l, layer in enumerate(layers, start=1)
                if any(p.name == name for p in layer.unit.params)]
    out += [keys.dZ(l) for l in range(1, L + 1)] + [keys.dA(l) for l in range(L + 1)]
    for l, layer in enumerate(layers, start=1):
        out += [keys.state(s.name, l) for s in layer.unit.states]
    return out


def key_summary(layers: list[Layer]) -> str:
    """The keys of a network in words: 'cost, AL, dW1..dW3, db1..db3, dZ1..dZ3, dA0..dA3' (runs compressed)."""
    groups: dict[str, list[int]] = {}
    for name in key_names(layers):
        key = parse(name)
        if key.layer is not None:
            groups.setdefault(str(keys.Key(key.quantity, key.name, 0))[:-1], []).append(key.layer)
    parts = [keys.COST, keys.OUTPUT]
    for head, layers_of in groups.items():
        first, last = layers_of[0], layers_of[-1]
        if layers_of == list(range(first, last + 1)):
            parts.append(f"{head}{first}..{head}{last}")
        else:
            parts.append(", ".join(f"{head}{l}" for l in layers_of))
    return ", ".join(parts)


def reference_arrays(result: Result, layers: list[Layer], sent: list[dict[str, Array]], layouts: Layouts,
                     intermediates: str, m: int) -> dict[str, Array]:
    """Every key of ``result`` in reference form (``sent``: each layer's arrays as the request held them)."""
    arrays: dict[str, Array] = {keys.COST: np.array(result.cost), keys.OUTPUT: result.AL}
    for name in param_order():
        for l, layer in enumerate(layers, start=1):
            param = next((p for p in layer.unit.params if p.name == name), None)
            if param is not None:
                arrays[keys.grad(name, l)] = param.to_wire(result.grads[l - 1][name], sent[l - 1][name], layouts)
    for l in range(1, len(layers) + 1):
        arrays[keys.dZ(l)] = result.dZ[l - 1]
    for l in range(len(layers) + 1):
        arrays[keys.dA(l)] = result.dA[l]
    for l, layer in enumerate(layers, start=1):
        for s in layer.unit.states:
            arrays[keys.state(s.name, l)] = s.to_wire(result.state[l - 1][s.name], sent[l - 1].get(s.name), layouts)
    return arrays


def _spread(f: Callable[[Array], Array], A: Array, ulps: int) -> tuple[Array, Array]:
    """Entrywise min and max of f(A') over A' = A moved by -ulps..+ulps units in the last place, over the
    finite values only (NaN where none is finite)."""
    lo = np.full(A.shape, np.inf)
    hi = np.full(A.shape, -np.inf)

    def include(v: Array) -> None:
        finite = np.isfinite(v)
        np.minimum(lo, v, out=lo, where=finite)
        np.maximum(hi, v, out=hi, where=finite)

    include(f(A))
    for direction in (-np.inf, np.inf):
        moved = A
        for _ in range(ulps):
            moved = np.nextafter(moved, direction)
            include(f(moved))
    none = lo > hi
    lo[none], hi[none] = np.nan, np.nan
    return lo, hi


@dataclass
class Reference:
    """The reference of one network and data, computed once and shared by every submission graded against it.

    ``arrays``: every key (``key_names``) in reference form, in the dA/dZ convention of ``intermediates``.
    ``variants`` are the mistaken passes run so far (``hypotheses.run_variants``), within ``variant_work``
    multiply-add equivalents and ``variant_elements`` stored numbers; ``skipped`` lists the hypotheses left out
    because of them. ``in_shapes``: each layer's input feature shape (pricing).
    """

    X: Array
    Y: Array
    layers: list[Layer]
    cost: str
    l2: float
    dropout: Dropout | None
    intermediates: str
    sent: list[dict[str, Array]]
    layouts: Layouts
    in_shapes: list[tuple[int, ...]]
    result: Result
    arrays: dict[str, Array]
    variant_work: float = float("inf")
    variant_elements: float = float("inf")
    examples: int | None = None  # m when there are no labels (a backward pass from the learner's caches)
    forward_known: bool = True  # False: the caches are the learner's, so no mistaken forward pass can be re-run
    variants: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    work_spent: int = 0
    elements_stored: int = 0
    _ran_for: set = field(default_factory=set, repr=False)
    _candidates: dict = field(default_factory=dict, repr=False)
    _version: int = 0  # bumped whenever variants change, so cached candidate lists are rebuilt

    @property
    def L(self) -> int:
        return len(self.layers)

    @property
    def m(self) -> int:
        return self.examples if self.examples is not None else self.Y.shape[1]

    # --- what grading asks of any reference (``grade``, ``diagnose``; ``steps.StepReference`` has the same) ---

    @property
    def order(self) -> list[str]:
        """The gradable keys in their canonical order."""
        return [k for k in key_names(self.layers) if k in self.arrays]

    def flips(self, name: str) -> bool:
        """Whether the key's array is held features first here and transposed at the wire (examples_first)."""
        return self.layouts.examples_first and parse(name).per_example

    def candidates(self, name: str):
        """Every hypothesis' value for ``name``: the local transforms and the mistaken passes run so far."""
        from service.engine.grading.diagnose import local_candidates, variant_candidates
        yield from local_candidates(self, name)
        yield from variant_candidates(self, name)

    @property
    def max_candidates(self) -> int:
        """At most how many hypotheses one key is tested against (pricing)."""
        from service.engine.grading.diagnose import LOCAL_CANDIDATES
        from service.engine.grading.hypotheses import plan
        return LOCAL_CANDIDATES + len(plan(self))

    def prepare(self, names) -> None:
        """Run the mistaken passes that could explain the wrong keys ``names``."""
        from service.engine.grading.hypotheses import run_variants
        run_variants(self, names)

    @property
    def caches(self) -> list[LayerCache]:
        """The forward pass's caches, one per layer."""
        return self.result.caches

    def per_example(self, kind: str, l: int) -> Array:
        """dA_l or dZ_l (kind 'dA' or 'dZ') in the per-example convention, whatever ``intermediates`` is."""
        a = self.result.dA[l] if kind == "dA" else self.result.dZ[l - 1]
        if self.intermediates == "mean":
            with np.errstate(over="ignore"):
                a = a * self.m
        return a

    def l2_part(self, name: str) -> Array:
        """The L2 term of key ``name`` (a regularized parameter's gradient, or the cost), in reference form."""
        key = parse(name)
        if key.quantity == "grad":
            layer = self.layers[key.layer - 1]
            param = next(p for p in layer.unit.params if p.name == key.name)
            return param.to_wire((self.l2 / self.m) * layer.params[key.name], self.sent[key.layer - 1][key.name],
                                 self.layouts)
        return np.array(penalty(self.layers, self.l2, self.m))

    @cached_property
    def _textbook(self) -> dict[str, tuple[Array, Array]]:
        unit = costs.get(self.cost)
        AL, Y, L, m = self.result.AL, self.Y, self.L, self.m
        lo, hi = _spread(lambda A: unit.textbook_loss(A, Y), AL, TEXTBOOK_ULPS)
        out = {}
        if not np.isnan(lo).any():
            extra = penalty(self.layers, self.l2, m)
            out[keys.COST] = (np.array(float(np.sum(lo)) / m + extra), np.array(float(np.sum(hi)) / m + extra))
        scale = 1.0 if self.intermediates == "per_example" else 1.0 / m
        out[keys.dA(L)] = _spread(lambda A: unit.textbook_dA(A, Y) * scale, AL, TEXTBOOK_ULPS)
        return out

    def textbook_bounds(self, name: str) -> tuple[Array, Array] | None:
        """For ``cost`` and ``dA{L}``: (lo, hi) of the course's formula evaluated from A_L moved by up to
        ``TEXTBOOK_ULPS`` ulps (the reference's shape; NaN where it is never finite); None for other keys."""
        if name not in (keys.COST, keys.dA(self.L)) or self.cost is None:
            return None
        return self._textbook.get(name)


def build_reference(X: Array, Y: Array, layers: list[Layer], cost: str, *, l2: float = 0.0,
                    dropout: Dropout | None = None, intermediates: str = "per_example",
                    sent: list[dict[str, Array]] | None = None, layouts: Layouts = Layouts(),
                    in_shapes: list[tuple[int, ...]] | None = None, variant_work: float = float("inf"),
                    variant_elements: float = float("inf")) -> Reference:
    """One ``compute`` (X (n_0, m), Y (n_L, m)) and the arrays keyed by the course's names. ``sent``: each
    layer's arrays as the request held them (default: the engine's own, i.e. columns and (n_l, n_{l-1}))."""
    result = compute(X, Y, layers, cost, l2=l2, dropout=dropout, intermediates=intermediates)
    sent = sent if sent is not None else [{**layer.params, **layer.state} for layer in layers]
    arrays = reference_arrays(result, layers, sent, layouts, intermediates, Y.shape[1])
    if in_shapes is None:
        in_shapes = [tuple(X.shape[:-1])] + [tuple(z.shape[:-1]) for z in result.Z[:-1]]
    return Reference(X=X, Y=Y, layers=layers, cost=cost, l2=l2, dropout=dropout, intermediates=intermediates,
                     sent=sent, layouts=layouts, in_shapes=in_shapes, result=result, arrays=arrays,
                     variant_work=variant_work, variant_elements=variant_elements)
