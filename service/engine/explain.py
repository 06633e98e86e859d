"""The story of the last layer, told with the caller's numbers: why dZ_L = A_L - Y while dA_prev = W^T dZ.

Features first (shapes as in ``network``): Z_l, A_l, dZ_l, dA_l: (n_l, m); W_l: (n_l, n_{l-1}).

Steps, each a sentence, a LaTeX formula and the numbers (every number is ``network.compute``'s, so it equals
what POST /v1/gradients returns for the same input):

1. ``cost``: J and the per-example losses.
2. ``dAL``: dJ/dA_L from the cost's formula (chain rule, first factor).
3. ``activation_derivative``: g_L'(Z_L) (for softmax the Jacobian diag(a) - a a^T, shown for one example).
4. ``dZL_chain_rule``: dZ_L = dA_L * g_L'(Z_L) (softmax: the vector-Jacobian product), evaluated stably.
5. ``dZL_fused`` (canonical pairs: sigmoid + BCE, softmax + CCE, linear + MSE): dZ_L = A_L - Y and the largest
   difference from step 4; ``no_simplification`` for any other pair, with the reason.
6. ``stability`` (canonical pairs): the entries where the chain rule evaluated as the textbook writes it, from
   the rounded A_L (e.g. -(Y/A_L - (1-Y)/(1-A_L)) * A_L (1 - A_L)), is infinite, NaN or off from the service's
   dZ_L by more than 1e-9 + 1e-6 |dZ_L|: A_L at exactly 0 or 1. The fused form has no division and stays exact
   (the cost's ``fused_dZ`` keeps each entry's relative precision, e.g. -sigmoid(-z) for y = 1).
7. ``hidden_dA`` and ``hidden_dZ``: one hidden layer's rules dA_l = W_{l+1}^T dZ_{l+1} and
   dZ_l = dA_l * g_l'(Z_l) (for a 1-layer network: dA_0 = W_1^T dZ_1, the gradient with respect to X).
8. ``why``: the cost depends on A_L directly; a hidden activation only through the next layer's Z.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.engine import costs
from service.engine.activations import ACTIVATIONS
from service.engine.network import Dropout, Layer, Result, compute
from service.engine.costs import COSTS

Array = np.ndarray

MAX_LISTED_ENTRIES = 100
UNSTABLE_RTOL, UNSTABLE_ATOL = 1e-6, 1e-9

@dataclass(frozen=True)
class Step:
    """One step: ``values`` maps a name to a number, an array or None; the names in ``per_example`` are
    (units, m) or (m,) arrays (one column per example); ``entries`` is a (k, 2) array of [unit, example]
    indices, or None. ``full_shapes``: the whole shape of a value of which only a block was computed (the
    softmax Jacobian)."""

    id: str
    title: str
    text: str
    latex: str
    values: dict[str, Array | float | int | None]
    per_example: frozenset[str] = frozenset()
    entries: Array | None = None
    full_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Story:
    """The whole explanation. ``hidden_layer``: the layer l of the hidden step (0 for a 1-layer network,
    whose step is about dA_0). ``unstable_count``: entries where the textbook chain rule fails."""

    cost: str
    output_activation: str
    canonical: bool
    L: int
    hidden_layer: int
    intermediates: str
    steps: list[Step]
    unstable_count: int = 0
    notes: list[str] = field(default_factory=list)


def _per(intermediates: str) -> tuple[str, str]:
    """The 1/m prefix of dA and dZ in LaTeX and in words, by convention."""
    if intermediates == "mean":
        return r"\frac{1}{m}", " (with the 1/m of the `mean` convention)"
    return "", ""


def explain(X: Array, Y: Array, layers: list[Layer], cost: str, *, l2: float = 0.0, dropout: Dropout | None = None,
            intermediates: str = "per_example", hidden_layer: int | None = None,
            jacobian_units: int = 16) -> Story:
    """The last layer's story for X (n_0, m), Y (n_L, m). ``hidden_layer``: 1..L-1, default L-1 (ignored for
    L = 1). ``jacobian_units``: the softmax Jacobian is formed for the first this many units only (its whole
    (n_L, n_L) would be 134 MB for 4096 units). Raises NumericalOverflow as ``compute`` does."""
    r: Result = compute(X, Y, layers, cost, l2=l2, dropout=dropout, intermediates=intermediates)
    unit = costs.get(cost)
    L, m = len(layers), Y.shape[1]
    out_name = layers[-1].activation
    act = ACTIVATIONS[out_name]
    canonical = out_name == unit.fused_activation
    ZL, AL, dAL, dZL = r.Z[-1], r.AL, r.dA[L], r.dZ[L - 1]
    fused_form = unit.fused_formula.format(L=L)
    pre, pre_words = _per(intermediates)
    steps: list[Step] = []
    notes: list[str] = []

    l2_latex = r" + \frac{\lambda}{2m}\sum_{l}\lVert W^{[l]}\rVert_F^2" if l2 else ""
    steps.append(Step(
        "cost", "The cost", f"The cost is {unit.formula}" + (f", plus the L2 term lambda/(2m) sum ||W||^2 with "
                                                             f"lambda = {l2:g}" if l2 else "")
        + f". It is a function of the output A{L} (and the labels) directly: that is where backpropagation starts.",
        unit.formula_latex + l2_latex,
        {"J": r.cost, "loss": unit.loss(ZL, AL, Y)}, frozenset({"loss"})))

    steps.append(Step(
        "dAL", f"dA{L}: the cost's derivative with respect to A{L}",
        f"Differentiate the per-example loss with respect to A{L}{pre_words}: {unit.dA_formula.split(';')[0]}. "
        f"This needs only the cost's formula, no weights."
        + (" Entries that are not representable in float64 (A_L at exactly 0 or 1 against the label) are null."
           if r.unrepresentable.any() else ""),
        # The 1/m of the mean convention multiplies the whole derivative: -(...) and A - Y need their parentheses.
        rf"dA^{{[L]}} = \frac{{\partial \mathcal{{L}}}}{{\partial A^{{[L]}}}} = "
        + (rf"{pre}\left({unit.dA_latex}\right)" if pre else unit.dA_latex),
        {f"A{L}": AL, "Y": Y, f"dA{L}": dAL}, frozenset({f"A{L}", "Y", f"dA{L}"})))

    if act.derivative is not None:
        g_prime = act.derivative(ZL, r.A[-1], layers[-1].negative_slope)
        steps.append(Step(
            "activation_derivative", f"g'(Z{L}): the output activation's derivative",
            f"The output activation is {out_name}: {act.derivative_formula}. It acts elementwise, so the chain "
            f"rule multiplies entry by entry.",
            act.derivative_latex,
            {f"Z{L}": ZL, f"g_prime_Z{L}": g_prime}, frozenset({f"Z{L}", f"g_prime_Z{L}"})))
    else:
        n_L = AL.shape[0]
        a0 = AL[:jacobian_units, 0]  # the Jacobian's top-left block: rows and columns of the first units
        steps.append(Step(
            "activation_derivative", f"The softmax Jacobian at Z{L}",
            "Softmax couples the units of one example: its Jacobian is diag(a) - a a^T, not diagonal, so the chain "
            "rule is a vector-Jacobian product per example. The Jacobian of the first example is shown (its "
            "top-left block when the output has more units than shown).",
            ACTIVATIONS["softmax"].derivative_latex,
            {f"Z{L}": ZL, "jacobian_example_0": np.diag(a0) - np.outer(a0, a0)}, frozenset({f"Z{L}"}),
            full_shapes={"jacobian_example_0": (n_L, n_L)}))

    with np.errstate(over="ignore", invalid="ignore"):
        chain = act.backward(dAL, ZL, r.A[-1], layers[-1].negative_slope)
    chain = np.where(np.isfinite(chain), chain, np.nan)
    steps.append(Step(
        "dZL_chain_rule", f"dZ{L} by the chain rule",
        f"dZ{L} = dA{L} * g'(Z{L})" + (" (for softmax the vector-Jacobian product dZ_k = a_k (dA_k - sum_j dA_j a_j))"
                                       if act.derivative is None else "")
        + ": the cost's factor times the activation's factor. Null where dA_L is.",
        rf"dZ^{{[L]}} = dA^{{[L]}} \odot g'(Z^{{[L]}})", {f"dZ{L}_chain_rule": chain},
        frozenset({f"dZ{L}_chain_rule"})))

    unstable_count = 0
    if canonical:
        finite = ~np.isnan(chain)
        largest = float(np.max(np.abs(chain[finite] - dZL[finite]))) if finite.any() else None
        if largest is None:
            compared = (f" Here the chain-rule form has no finite entry (the dA{L} it starts from is beyond float64 "
                        f"where A{L} rounds to exactly 0 or 1 against its label), so there is nothing to compare it "
                        f"with; {fused_form} stays exact.")
        else:
            compared = (f" The largest difference from the chain-rule form over its finite entries is {largest!r} "
                        f"(rounding only).")
        steps.append(Step(
            "dZL_fused", f"The simplified form dZ{L} = {fused_form}",
            f"{out_name} is the canonical output of {cost}: the factors of dA{L} cancel those of g'(Z{L}) "
            f"exactly, leaving dZ{L} = {fused_form}{pre_words}. This is what the service returns." + compared,
            rf"dZ^{{[L]}} = {pre}" + unit.fused_latex, {f"dZ{L}": dZL, "max_abs_difference": largest},
            frozenset({f"dZ{L}"})))
        scale = 1.0 / m if intermediates == "mean" else 1.0
        textbook = unit.textbook_dZ(AL, Y) * scale
        fused = dZL  # the service's A_L - Y, evaluated so that each entry keeps its relative precision
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(textbook) | (np.abs(textbook - fused) > UNSTABLE_ATOL * scale + UNSTABLE_RTOL * np.abs(fused))
        entries = np.argwhere(bad)
        unstable_count = int(entries.shape[0])
        listed = entries[:MAX_LISTED_ENTRIES]
        values = {
            "count": unstable_count,
            "A_L": np.array([AL[k, i] for k, i in listed]),
            "Y": np.array([Y[k, i] for k, i in listed]),
            "chain_rule_from_A_L": np.array([textbook[k, i] if np.isfinite(textbook[k, i]) else np.nan
                                             for k, i in listed]),
            "fused": np.array([fused[k, i] for k, i in listed]),
            "reasons": [unit.unstable_reason(AL, Y, int(k), int(i)) for k, i in listed],
        }
        if unstable_count:
            text = (f"{unstable_count} entries (listed: {len(listed)}) where the chain rule, evaluated as the "
                    f"textbook writes it from the rounded A{L}, is infinite, NaN or inaccurate, while {fused_form} stays "
                    f"exact: the fused form never divides by A{L} or 1 - A{L}.")
        else:
            text = f"No entry here: {unit.breakdown_none.format(L=L)}, and {fused_form} is exact anyway."
        steps.append(Step("stability", "Where the chain-rule form breaks down", text, unit.breakdown_latex, values,
                          entries=listed))
    else:
        fused = AL - Y if intermediates == "per_example" else (AL - Y) / m
        steps.append(Step(
            "no_simplification", f"No simplification for {out_name} with {cost}",
            f"dZ{L} = A{L} - Y holds only for a cost matched to its output activation ({_a_minus_y_pairs()}): there "
            f"the cost is the "
            f"negative log-likelihood whose derivative carries exactly the reciprocal of g'. Here dA{L} = "
            f"{unit.dA_formula.split(';')[0].replace('dA = ', '')} does not cancel g'(Z{L}) = "
            f"{act.derivative_formula.split(',')[0]}, so dZ{L} keeps "
            f"both factors. The largest difference between the true dZ{L} and A{L} - Y shows the shortcut would be wrong.",
            rf"dZ^{{[L]}} = dA^{{[L]}} \odot g'(Z^{{[L]}}) \neq A^{{[L]}} - Y",
            {f"dZ{L}": dZL, f"A{L}_minus_Y": fused, "max_abs_difference": float(np.max(np.abs(dZL - fused)))},
            frozenset({f"dZ{L}", f"A{L}_minus_Y"})))

    # One hidden layer (or, without one, the input).
    h = (L - 1 if hidden_layer is None else hidden_layer) if L > 1 else 0
    nxt = layers[h]  # layer h + 1
    masked = dropout is not None and 1 <= h < L and dropout.masks[h - 1] is not None
    mask_latex = r" \odot \frac{D^{[l]}}{p}" if masked else ""
    story = nxt.unit.explain_input(h, nxt.params, nxt.hyper)
    values = {**story.values, f"dZ{h + 1}": r.dZ[h], f"dA{h}": r.dA[h]}
    steps.append(Step(
        "hidden_dA", f"dA{h}: a hidden activation's gradient" if h else "dA0: the gradient with respect to X",
        (story.reason + story.rule + (f", times the dropout mask D{h} / keep_prob" if masked else "")
         + ". No cost formula appears.")
        if h else f"This network has no hidden layer; the input X = A0 obeys the same rule: {story.rule}.",
        (story.latex + mask_latex).replace("[l]", f"[{h}]").replace("[l+1]", f"[{h + 1}]"),
        values, frozenset({f"dZ{h + 1}", f"dA{h}"})))
    if h:
        hid = layers[h - 1]
        hact = ACTIVATIONS[hid.activation]
        g_hidden = hact.derivative(r.Z[h - 1], hact.forward(r.Z[h - 1], hid.negative_slope), hid.negative_slope)
        steps.append(Step(
            "hidden_dZ", f"dZ{h} = dA{h} * g'(Z{h})",
            f"Then the same elementwise chain rule as at the output, with this layer's activation {hid.activation}: "
            f"{hact.derivative_formula}.",
            rf"dZ^{{[{h}]}} = dA^{{[{h}]}} \odot g'(Z^{{[{h}]}}),\quad " + ACTIVATIONS[hid.activation].derivative_latex,
            {f"Z{h}": r.Z[h - 1], f"g_prime_Z{h}": g_hidden, f"dZ{h}": r.dZ[h - 1]},
            frozenset({f"Z{h}", f"g_prime_Z{h}", f"dZ{h}"})))

    through = story.through or (f"the next layer, a {nxt.kind} layer, so its gradient is what flows back through it: "
                                f"{story.rule}")
    steps.append(Step(
        "why", "Why the last layer differs",
        f"The cost J depends on A{L} directly, so dA{L} comes from the cost's own formula, and for a canonical pair "
        f"its factors cancel g'(Z{L}) into {fused_form}. A hidden activation A_l appears in no formula of the cost: it "
        f"influences J only through {through}." + (
            " Here the output pair is canonical." if canonical else
            f" Here the pair ({out_name}, {cost}) is not canonical, so even the last layer keeps both factors."),
        r"\frac{\partial J}{\partial A^{[L]}} = \frac{\partial J(A^{[L]}, Y)}{\partial A^{[L]}}"
        r"\qquad\text{but}\qquad " + (story.through_latex or story.latex),
        {}))
    if r.unrepresentable.any():
        notes.append(f"{int(r.unrepresentable.sum())} entries of dA{L} overflow float64 and are null; dZ{L} is exact")
    return Story(cost, out_name, canonical, L, h, intermediates, steps, unstable_count, notes)


def _a_minus_y_pairs() -> str:
    """The canonical pairs whose dZ_L is A_L - Y, from the cost registry: "sigmoid + binary cross-entropy, ..."."""
    return ", ".join(f"{c.fused_activation} + {c.title}" for c in COSTS.values() if c.fused_formula == "A{L} - Y")
