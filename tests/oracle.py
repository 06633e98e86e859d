"""Independent reference for the gradient service: torch float64 autodiff, a seeded random-network generator
and an elementwise closeness assertion that names the worst element.

Nothing here imports the service: the oracle only shares the *wire contract* (shapes, layouts, conventions)
with it, never its code. Every torch tensor is created with ``dtype=torch.float64`` explicitly; the global
default dtype is left alone.

Conventions reproduced (features first inside the oracle; ``Case.to_layout`` turns them into the wire layout):
    Z_l = W_l A_{l-1} + b_l,  G_l = g_l(Z_l),  A_l = G_l * D_l / p (hidden layers under dropout), A_L = G_L
    J   = (1/m) sum_i loss_i + lambda/(2m) sum_l ||W_l||_F^2
    mean         dX = dJ/dX for every returned X
    per_example  dA_l and dZ_l multiplied by m (no 1/m); dW, db, cost unchanged
    dA_l (hidden) is dJ/dG_l, the derivative w.r.t. the activation before the dropout mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

F64 = torch.float64

HIDDEN_ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "leaky_relu")
OUTPUT_ACTIVATIONS = HIDDEN_ACTIVATIONS + ("softmax",)
DEFAULT_SLOPE = 0.01

# (output activation, cost): every valid pairing of the service.
PAIRINGS = (
    ("sigmoid", "binary_cross_entropy"),
    ("softmax", "categorical_cross_entropy"),
    ("linear", "mean_squared_error"),
    ("sigmoid", "mean_squared_error"),
    ("tanh", "mean_squared_error"),
    ("relu", "mean_squared_error"),
    ("leaky_relu", "mean_squared_error"),
    ("softmax", "mean_squared_error"),
)
LAYOUTS = ("features_first", "examples_first")
CONVENTIONS = ("per_example", "mean")


# --- torch reference ------------------------------------------------------------------------------------------

def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    out = torch.tensor(np.asarray(a, dtype=np.float64), dtype=F64)
    return out.requires_grad_(grad)


def torch_activation(name: str, Z: torch.Tensor, slope: float) -> torch.Tensor:
    if name == "linear":
        return Z
    if name == "sigmoid":
        return torch.sigmoid(Z)
    if name == "tanh":
        return torch.tanh(Z)
    if name == "relu":
        return torch.relu(Z)
    if name == "leaky_relu":
        return F.leaky_relu(Z, negative_slope=slope)
    if name == "softmax":
        return torch.softmax(Z, dim=0)
    raise KeyError(name)


def _cost_from_activation(cost: str, A: torch.Tensor, Y: torch.Tensor, m: int) -> torch.Tensor:
    """The cost written in terms of A_L (the course's form); used for dA_L only."""
    if cost == "binary_cross_entropy":
        return -(Y * torch.log(A) + (1.0 - Y) * torch.log1p(-A)).sum() / m
    if cost == "categorical_cross_entropy":
        return -(Y * torch.log(A)).sum() / m
    if cost == "mean_squared_error":
        return 0.5 * ((A - Y) ** 2).sum() / m
    raise KeyError(cost)


def torch_cost(cost: str, ZL: torch.Tensor, AL: torch.Tensor, Y: torch.Tensor, m: int) -> torch.Tensor:
    """(1/m) sum of the per-example losses, from the logits where the cost allows (Y one-hot for CCE and hinge)."""
    if cost == "binary_cross_entropy":
        return F.binary_cross_entropy_with_logits(ZL, Y, reduction="sum") / m
    if cost == "categorical_cross_entropy":
        return -(Y * F.log_softmax(ZL, dim=0)).sum() / m
    if cost == "mean_squared_error":
        return 0.5 * ((AL - Y) ** 2).sum() / m
    if cost == "multiclass_hinge":
        # cs231n's svm_loss: sum over j != y of max(0, z_j - z_y + 1). relu's derivative at exactly 0 is 0 in torch
        # (as multi_margin_loss's, which also divides by the number of classes; the tests check both agree).
        correct = (AL * Y).sum(dim=0, keepdim=True)
        return (torch.relu(AL - correct + 1.0) * (1.0 - Y)).sum() / m
    raise KeyError(cost)


@dataclass
class Reference:
    """Features-first float64 arrays. Lists are 0-based: dW[0] is dW_1, dA[0] is dA_0 (= dX), Z[0] is Z_1."""

    cost: float
    AL: np.ndarray
    Z: list[np.ndarray]
    A: list[np.ndarray]
    dW: list[np.ndarray]
    db: list[np.ndarray]
    dZ: list[np.ndarray]
    dA: list[np.ndarray]


def reference(X: np.ndarray, Y: np.ndarray, layers: list[tuple], cost: str, *, l2: float = 0.0,
              keep_prob: float | None = None, masks: list[np.ndarray] | None = None,
              intermediates: str = "mean") -> Reference:
    """torch float64 autodiff of the whole pass. ``layers``: (W (n_l, n_{l-1}), b (n_l,) or (n_l, 1),
    activation, slope) tuples; X (n_0, m), Y (n_L, m) features first; masks D_1..D_{L-1} features first."""
    m = X.shape[1]
    L = len(layers)
    A0 = _t(X, grad=True)
    Yt = _t(Y)
    Ws = [_t(W, grad=True) for W, _, _, _ in layers]
    bs = [_t(np.reshape(b, (-1, 1)), grad=True) for _, b, _, _ in layers]
    Zs, Gs, As = [], [], []
    A = A0
    for l, (_, _, act, slope) in enumerate(layers):
        Z = Ws[l] @ A + bs[l]
        Z.retain_grad()
        G = torch_activation(act, Z, DEFAULT_SLOPE if slope is None else slope)
        if G is not Z:
            G.retain_grad()
        if masks is not None and l < L - 1:
            A = G * _t(masks[l]) / keep_prob
        else:
            A = G
        Zs.append(Z)
        Gs.append(G)
        As.append(A)

    ZL, AL = Zs[-1], Gs[-1]
    J = torch_cost(cost, ZL, AL, Yt, m)
    if l2:
        J = J + l2 / (2 * m) * sum((W * W).sum() for W in Ws)
    J.backward()

    if cost == "mean_squared_error":
        dAL = AL.grad
    else:
        # The cost above is written from the logits, so A_L is not on its graph: differentiate the course's
        # form -(y log a + (1-y) log(1-a)) / -sum y log a w.r.t. a separate leaf holding A_L.
        leaf = AL.detach().clone().requires_grad_(True)
        _cost_from_activation(cost, leaf, Yt, m).backward()
        dAL = leaf.grad

    scale = float(m) if intermediates == "per_example" else 1.0
    np_ = lambda t: t.detach().numpy().astype(np.float64, copy=True)  # noqa: E731
    dA = [np_(A0.grad) * scale] + [np_(G.grad) * scale for G in Gs[:-1]] + [np_(dAL) * scale]
    return Reference(
        cost=float(J.detach()),
        AL=np_(AL),
        Z=[np_(Z) for Z in Zs],
        A=[np_(A) for A in As],
        dW=[np_(W.grad) for W in Ws],
        db=[np_(b.grad) for b in bs],
        dZ=[np_(Z.grad) * scale for Z in Zs],
        dA=dA,
    )


# --- closeness --------------------------------------------------------------------------------------------------

def as_array(value: Any) -> np.ndarray:
    """A JSON list (possibly with null) -> float64 array; null becomes NaN."""
    def conv(v):
        if isinstance(v, list):
            return [conv(x) for x in v]
        return np.nan if v is None else v
    return np.asarray(conv(value), dtype=np.float64)


def assert_close(got: Any, want: Any, name: str, rtol: float = 1e-10, atol: float = 1e-13) -> None:
    """Elementwise |got - want| <= rtol * |want| + atol, shapes equal; the failure names the worst element."""
    __tracebackhide__ = True
    g = as_array(got)
    w = np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, f"{name}: shape {g.shape}, expected {w.shape}"
    if g.size == 0:
        return
    assert np.all(np.isfinite(g)), f"{name}: non-finite entries at {np.argwhere(~np.isfinite(g)).tolist()[:10]}"
    assert np.all(np.isfinite(w)), f"{name}: the reference itself is not finite"
    excess = np.abs(g - w) - (rtol * np.abs(w) + atol)
    i = np.unravel_index(int(np.argmax(excess)), excess.shape)
    if excess[i] > 0:
        rel = abs(g[i] - w[i]) / max(abs(w[i]), 1e-300)
        raise AssertionError(
            f"{name}: worst element {tuple(int(k) for k in i)}: got {g[i]!r}, expected {w[i]!r}, "
            f"|diff| = {abs(g[i] - w[i]):.3e}, rel = {rel:.3e} (rtol {rtol}, atol {atol}); "
            f"{int(np.sum(excess > 0))} of {g.size} elements out of tolerance")


# --- random networks ----------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One random request. Arrays are features first; ``request()`` renders the wire body in ``layout``."""

    seed: int
    sizes: list[int]                 # n_0 .. n_L
    m: int
    activations: list[str]
    slopes: list[float | None]       # None: not sent (service default 0.01)
    W: list[np.ndarray]
    b: list[np.ndarray]              # (n_l, 1)
    b_vector: list[bool]
    X: np.ndarray                    # (n_0, m)
    Y: np.ndarray                    # (n_L, m), one-hot for CCE
    y_format: str                    # "matrix", "flat" (n_L == 1), "indices" (CCE)
    label_kind: str                  # "hard", "soft", "mixed", "onehot", "real"
    cost: str
    layout: str
    intermediates: str
    l2: float
    keep_prob: float | None
    masks: list[np.ndarray] | None   # D_1 .. D_{L-1}, (n_l, m)
    include_caches: bool
    extra: dict = field(default_factory=dict)

    @property
    def L(self) -> int:
        return len(self.W)

    def layer_tuples(self) -> list[tuple]:
        return [(W, b, a, s) for W, b, a, s in zip(self.W, self.b, self.activations, self.slopes)]

    def to_layout(self, a: np.ndarray) -> np.ndarray:
        """A features-first (units, m) matrix in the request's layout."""
        return a.T if self.layout == "examples_first" else a

    def request(self) -> dict:
        layers = []
        for W, b, act, slope, vec in zip(self.W, self.b, self.activations, self.slopes, self.b_vector):
            spec: dict[str, Any] = {"W": W.tolist(), "b": (b.reshape(-1).tolist() if vec else b.tolist()),
                                    "activation": act}
            if slope is not None:
                spec["negative_slope"] = slope
            layers.append(spec)
        if self.y_format == "indices":
            Y: Any = [int(k) for k in np.argmax(self.Y, axis=0)]
        elif self.y_format == "flat":
            Y = self.Y.reshape(-1).tolist()
        else:
            Y = self.to_layout(self.Y).tolist()
        body: dict[str, Any] = {"layers": layers, "X": self.to_layout(self.X).tolist(), "Y": Y, "cost": self.cost,
                                "layout": self.layout, "intermediates": self.intermediates}
        if self.l2:
            body["l2"] = self.l2
        if self.masks is not None:
            body["dropout"] = {"keep_prob": self.keep_prob, "masks": [self.to_layout(D).tolist() for D in self.masks]}
        if self.include_caches:
            body["include_caches"] = True
        return body

    def reference(self) -> Reference:
        return reference(self.X, self.Y, self.layer_tuples(), self.cost, l2=self.l2, keep_prob=self.keep_prob,
                         masks=self.masks, intermediates=self.intermediates)


def _np_act(name: str, Z: np.ndarray, slope: float) -> np.ndarray:
    with torch.no_grad():
        return torch_activation(name, _t(Z), slope).numpy()


def forward_Z(case: Case) -> list[np.ndarray]:
    """Pre-activations Z_1..Z_L of a case (float64, via torch), for rejection sampling."""
    A, out = case.X, []
    for l in range(case.L):
        Z = case.W[l] @ A + case.b[l]
        out.append(Z)
        G = _np_act(case.activations[l], Z, DEFAULT_SLOPE if case.slopes[l] is None else case.slopes[l])
        A = G * case.masks[l] / case.keep_prob if case.masks is not None and l < case.L - 1 else G
    return out


# sigmoid / tanh derivatives in torch come from the output (a(1-a), 1-a^2), whose relative error grows like
# e^{|z|}; below |z| = 6 it stays under ~1e-12, so the oracle is exact to the tolerance used.
SATURATING_LIMIT = 6.0


def random_case(seed: int, *, pairing: tuple[str, str] | None = None, n_layers: int | None = None,
                layout: str | None = None, intermediates: str | None = None, max_m: int = 12,
                kink_margin: float = 0.0) -> Case:
    """A seeded random network and request. Without overrides the pairing, depth, layout and convention are
    spread deterministically over the seed (seed % 8, (seed // 8) % 5 + 1, (seed // 40) % 2, (seed // 80) % 2)
    so that any 80 consecutive seeds cover every combination; the rest is drawn from default_rng(seed).
    ``kink_margin``: resample until every relu/leaky_relu pre-activation is at least that far from 0."""
    rng = np.random.default_rng(seed)
    out_act, cost = pairing or PAIRINGS[seed % len(PAIRINGS)]
    L = n_layers or (seed // 8) % 5 + 1
    layout = layout or LAYOUTS[(seed // 40) % 2]
    intermediates = intermediates or CONVENTIONS[(seed // 80) % 2]

    r = rng.random()
    m = 1 if r < 0.15 else (int(rng.integers(25, 41)) if r > 0.95 else int(rng.integers(2, max_m + 1)))
    n_x = int(rng.integers(1, 6))
    if cost == "categorical_cross_entropy" or out_act == "softmax":
        n_L = int(rng.integers(2, 6))
    elif cost == "binary_cross_entropy":
        n_L = int(rng.integers(1, 4))
    else:
        n_L = int(rng.integers(1, 5))
    sizes = [n_x] + [int(rng.integers(1, 7)) for _ in range(L - 1)] + [n_L]
    acts = [str(rng.choice(HIDDEN_ACTIVATIONS)) for _ in range(L - 1)] + [out_act]
    slopes: list[float | None] = [float(np.round(rng.uniform(0.02, 0.5), 6))
                                  if a == "leaky_relu" and rng.random() < 0.5 else None for a in acts]
    b_vector = [bool(rng.random() < 0.5) for _ in range(L)]

    # Labels, features first.
    if cost == "binary_cross_entropy":
        label_kind = str(rng.choice(["hard", "soft", "mixed"]))
        if label_kind == "hard":
            Y = rng.integers(0, 2, size=(n_L, m)).astype(np.float64)
        elif label_kind == "soft":
            Y = rng.uniform(0, 1, size=(n_L, m))
        else:
            Y = rng.uniform(0, 1, size=(n_L, m))
            pick = rng.random((n_L, m))
            Y[pick < 0.3] = 0.0
            Y[pick > 0.7] = 1.0
    elif cost == "categorical_cross_entropy":
        label_kind = "onehot"
        Y = np.zeros((n_L, m))
        Y[rng.integers(0, n_L, size=m), np.arange(m)] = 1.0
    else:
        label_kind = "real"
        Y = rng.normal(0, 1, size=(n_L, m))
    if cost == "categorical_cross_entropy":
        y_format = "indices" if rng.random() < 0.5 else "matrix"
    elif n_L == 1 and rng.random() < 0.5:
        y_format = "flat"
    else:
        y_format = "matrix"

    l2 = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.01, 1.0))
    keep_prob, masks = None, None
    if rng.random() < (0.4 if L > 1 else 0.1):
        keep_prob = float(rng.choice([1.0, 0.8, 0.5, float(np.round(rng.uniform(0.3, 0.95), 4))]))
        masks = [(rng.random((n, m)) < max(keep_prob, 0.5)).astype(np.float64) for n in sizes[1:-1]]
    include_caches = bool(rng.random() < 0.35)

    for attempt in range(200):
        X = rng.normal(0, 1, size=(n_x, m))
        W = [rng.normal(0, 1, size=(sizes[l + 1], sizes[l])) / np.sqrt(sizes[l]) for l in range(L)]
        b = [rng.normal(0, 0.3, size=(sizes[l + 1], 1)) for l in range(L)]
        case = Case(seed=seed, sizes=sizes, m=m, activations=acts, slopes=slopes, W=W, b=b,
                    b_vector=b_vector, X=X, Y=Y, y_format=y_format, label_kind=label_kind, cost=cost, layout=layout,
                    intermediates=intermediates, l2=l2, keep_prob=keep_prob, masks=masks,
                    include_caches=include_caches)
        Zs = forward_Z(case)
        ok = all(np.max(np.abs(Z)) <= SATURATING_LIMIT for Z, a in zip(Zs, acts) if a in ("sigmoid", "tanh"))
        if kink_margin:
            ok = ok and all(np.min(np.abs(Z)) >= kink_margin for Z, a in zip(Zs, acts)
                            if a in ("relu", "leaky_relu"))
        if ok:
            case.extra["attempts"] = attempt + 1
            return case
    raise RuntimeError(f"seed {seed}: no acceptable draw in 200 attempts")


# --- layer kinds --------------------------------------------------------------------------------------------------
#
# Networks that mix the layer kinds, with both weight layouts, running statistics, null dropout masks and the
# multiclass hinge. For layer l (features first, A = A_{l-1} (n, m)):
#     dense      Z = W A + b; the wire holds W as (n_l, n_{l-1}) (out_in) or (n_{l-1}, n_l) (in_out)
#     batchnorm  train: mu, var = mean and biased variance over the examples (axis 1), per feature;
#                Z = gamma (A - mu) / sqrt(var + eps) + beta; running = momentum running + (1 - momentum) batch,
#                from the sent running statistics or zeros (mean) and ones (var)
#                test: Z = gamma (A - running_mean) / sqrt(running_var + eps) + beta; running statistics unchanged
#     layernorm  mu, var over the features (axis 0) of each example; Z = gamma (A - mu) / sqrt(var + eps) + beta
# torch differentiates these expressions as written; nothing here knows the compact backward forms.

KIND_NAMES = ("dense", "batchnorm", "layernorm")
WEIGHT_LAYOUTS = ("out_in", "in_out")
KIND_PAIRINGS = PAIRINGS + (("linear", "multiclass_hinge"),)
KIND_PARAMS = {"dense": ("W", "b"), "batchnorm": ("gamma", "beta"), "layernorm": ("gamma", "beta")}
BN_STATES = ("running_mean", "running_var")
DEFAULT_EPS, DEFAULT_MOMENTUM = 1e-5, 0.9
CLASS_COSTS = ("categorical_cross_entropy", "multiclass_hinge")  # one-hot labels, or class indices on the wire


@dataclass
class KindLayer:
    """One layer. ``params`` and ``state`` in features-first columns (dense W (n_l, n_{l-1}), b (n_l, 1); gamma,
    beta, running statistics (D, 1)); ``hyper`` and ``state`` hold only what the request sends; ``vector``: the
    names sent as vectors (n,) instead of columns."""

    kind: str
    params: dict[str, np.ndarray]
    activation: str | None                      # None: not sent (the norms' default, linear)
    slope: float | None = None
    hyper: dict[str, Any] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)
    vector: frozenset[str] = frozenset()
    send_type: bool = True                      # False: a dense layer sent without "type"

    @property
    def act(self) -> str:
        return self.activation or "linear"

    @property
    def eps(self) -> float:
        return float(self.hyper.get("eps", DEFAULT_EPS))

    @property
    def momentum(self) -> float:
        return float(self.hyper.get("momentum", DEFAULT_MOMENTUM))

    @property
    def mode(self) -> str:
        return self.hyper.get("mode", "train")

    @property
    def n_out(self) -> int:
        return (self.params["W"] if self.kind == "dense" else self.params["gamma"]).shape[0]

    def start_state(self) -> dict[str, np.ndarray]:
        """The running statistics the layer starts from: as sent, else zeros and ones."""
        n = self.n_out
        return {"running_mean": self.state.get("running_mean", np.zeros((n, 1))),
                "running_var": self.state.get("running_var", np.ones((n, 1)))}


@dataclass
class KindsReference:
    """Features-first float64 arrays, 0-based lists as in ``Reference``; grads[l-1] maps a parameter name of layer l
    to its gradient (engine form, columns); state[l-1] the running statistics batchnorm layer l returns ({}
    otherwise)."""

    cost: float
    AL: np.ndarray
    Z: list[np.ndarray]
    A: list[np.ndarray]
    grads: list[dict[str, np.ndarray]]
    dZ: list[np.ndarray]
    dA: list[np.ndarray]
    state: list[dict[str, np.ndarray]]


def torch_kind(layer: KindLayer, A: torch.Tensor, P: dict[str, torch.Tensor]) -> torch.Tensor:
    """Z of one layer from its input A (n, m), as the formulas above write it."""
    if layer.kind == "dense":
        return P["W"] @ A + P["b"]
    if layer.kind == "batchnorm" and layer.mode == "test":
        mean, var = _t(layer.state["running_mean"]), _t(layer.state["running_var"])
    else:
        axis = 1 if layer.kind == "batchnorm" else 0
        mean = A.mean(dim=axis, keepdim=True)
        var = ((A - mean) ** 2).mean(dim=axis, keepdim=True)
    return P["gamma"] * (A - mean) / torch.sqrt(var + layer.eps) + P["beta"]


def running_statistics(layer: KindLayer, A: np.ndarray) -> dict[str, np.ndarray]:
    """The running statistics a batchnorm layer returns for its input A (D, m)."""
    start = layer.start_state()
    if layer.mode == "test":
        return start
    p = layer.momentum
    mean = A.mean(axis=1, keepdims=True)
    var = ((A - mean) ** 2).mean(axis=1, keepdims=True)
    return {"running_mean": p * start["running_mean"] + (1 - p) * mean,
            "running_var": p * start["running_var"] + (1 - p) * var}


def kinds_reference(X: np.ndarray, Y: np.ndarray, layers: list[KindLayer], cost: str, *, l2: float = 0.0,
                    keep_prob: float | None = None, masks: list[np.ndarray | None] | None = None,
                    intermediates: str = "mean") -> KindsReference:
    """torch float64 autodiff of a network of kinds. X (n_0, m), Y (n_L, m) features first; masks D_1..D_{L-1}
    (None: no dropout on that layer). L2 applies to every dense W and to nothing else."""
    m, L = X.shape[1], len(layers)
    A0 = _t(X, grad=True)
    Yt = _t(Y)
    P = [{name: _t(v, grad=True) for name, v in layer.params.items()} for layer in layers]
    Zs, Gs, As, state = [], [], [], []
    A = A0
    for l, layer in enumerate(layers):
        state.append(running_statistics(layer, A.detach().numpy()) if layer.kind == "batchnorm" else {})
        Z = torch_kind(layer, A, P[l])
        Z.retain_grad()
        G = torch_activation(layer.act, Z, DEFAULT_SLOPE if layer.slope is None else layer.slope)
        if G is not Z:
            G.retain_grad()
        mask = masks[l] if masks is not None and l < L - 1 else None
        A = G * _t(mask) / keep_prob if mask is not None else G
        Zs.append(Z)
        Gs.append(G)
        As.append(A)

    ZL, AL = Zs[-1], Gs[-1]
    J = torch_cost(cost, ZL, AL, Yt, m)
    if l2:
        J = J + l2 / (2 * m) * sum((p["W"] * p["W"]).sum() for p in P if "W" in p)
    J.backward()
    if cost in ("mean_squared_error", "multiclass_hinge"):
        dAL = AL.grad
    else:  # written from the logits: differentiate the course's form at a leaf holding A_L (see ``reference``)
        leaf = AL.detach().clone().requires_grad_(True)
        _cost_from_activation(cost, leaf, Yt, m).backward()
        dAL = leaf.grad

    scale = float(m) if intermediates == "per_example" else 1.0
    np_ = lambda t: t.detach().numpy().astype(np.float64, copy=True)  # noqa: E731
    return KindsReference(
        cost=float(J.detach()),
        AL=np_(AL),
        Z=[np_(Z) for Z in Zs],
        A=[np_(A) for A in As],
        grads=[{name: np_(t.grad) for name, t in p.items()} for p in P],
        dZ=[np_(Z.grad) * scale for Z in Zs],
        dA=[np_(A0.grad) * scale] + [np_(G.grad) * scale for G in Gs[:-1]] + [np_(dAL) * scale],
        state=state,
    )


@dataclass
class KindsCase:
    """One random request over the kinds. Arrays features first; ``request()`` renders the wire body and
    ``expected()`` the response's numbers in the wire's form (layout, weight layout, shapes sent)."""

    seed: int
    layers: list[KindLayer]
    X: np.ndarray                           # (n_0, m)
    Y: np.ndarray                           # (n_L, m), one-hot for the class costs
    y_format: str                           # "matrix", "flat" (n_L == 1), "indices" (class costs)
    cost: str
    layout: str
    weight_layout: str
    intermediates: str
    l2: float
    keep_prob: float | None
    masks: list[np.ndarray | None] | None   # D_1 .. D_{L-1}, (n_l, m) or None
    include_caches: bool
    send_weight_layout: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def L(self) -> int:
        return len(self.layers)

    @property
    def m(self) -> int:
        return self.X.shape[1]

    @property
    def sizes(self) -> list[int]:
        return [self.X.shape[0]] + [layer.n_out for layer in self.layers]

    def to_layout(self, a: np.ndarray) -> np.ndarray:
        return a.T if self.layout == "examples_first" else a

    def wire(self, layer: KindLayer, name: str, a: np.ndarray) -> np.ndarray:
        """A parameter, running statistic or their gradient (engine form) as the wire holds it for this layer."""
        if name == "W":
            return a.T if self.weight_layout == "in_out" else a
        return a.reshape(-1) if name in layer.vector else a

    def request(self) -> dict:
        layers = []
        for layer in self.layers:
            spec: dict[str, Any] = {"type": layer.kind} if layer.send_type else {}
            for name, a in {**layer.params, **layer.state}.items():
                spec[name] = self.wire(layer, name, a).tolist()
            spec.update(layer.hyper)
            if layer.activation is not None:
                spec["activation"] = layer.activation
            if layer.slope is not None:
                spec["negative_slope"] = layer.slope
            layers.append(spec)
        if self.y_format == "indices":
            Y: Any = [int(k) for k in np.argmax(self.Y, axis=0)]
        elif self.y_format == "flat":
            Y = self.Y.reshape(-1).tolist()
        else:
            Y = self.to_layout(self.Y).tolist()
        body: dict[str, Any] = {"layers": layers, "X": self.to_layout(self.X).tolist(), "Y": Y, "cost": self.cost,
                                "layout": self.layout, "intermediates": self.intermediates}
        if self.send_weight_layout:
            body["weight_layout"] = self.weight_layout
        if self.l2:
            body["l2"] = self.l2
        if self.masks is not None:
            body["dropout"] = {"keep_prob": self.keep_prob,
                               "masks": [None if D is None else self.to_layout(D).tolist() for D in self.masks]}
        if self.include_caches:
            body["include_caches"] = True
        return body

    def reference(self) -> KindsReference:
        return kinds_reference(self.X, self.Y, self.layers, self.cost, l2=self.l2, keep_prob=self.keep_prob,
                               masks=self.masks, intermediates=self.intermediates)

    def expected(self) -> dict:
        """What a 200 must hold: cost, AL, gradients (every d<param><l>, dZ<l>, dA<l>), state (batchnorm layers,
        keyed by layer number), caches (with include_caches); arrays in the wire's form."""
        ref, lay = self.reference(), self.to_layout
        grads: dict[str, np.ndarray] = {}
        for l, (layer, g) in enumerate(zip(self.layers, ref.grads), start=1):
            for name in KIND_PARAMS[layer.kind]:
                grads[f"d{name}{l}"] = self.wire(layer, name, g[name])
        for l in range(1, self.L + 1):
            grads[f"dZ{l}"] = lay(ref.dZ[l - 1])
        for l in range(self.L + 1):
            grads[f"dA{l}"] = lay(ref.dA[l])
        out: dict[str, Any] = {"cost": ref.cost, "AL": lay(ref.AL), "gradients": grads}
        state = {str(l): {name: self.wire(layer, name, s[name]) for name in BN_STATES}
                 for l, (layer, s) in enumerate(zip(self.layers, ref.state), start=1) if layer.kind == "batchnorm"}
        if state:
            out["state"] = state
        if self.include_caches:
            out["caches"] = {**{f"Z{l}": lay(ref.Z[l - 1]) for l in range(1, self.L + 1)},
                             **{f"A{l}": lay(ref.A[l - 1]) for l in range(1, self.L + 1)}}
        return out


def check_kinds_response(case: KindsCase, body: dict, rtol: float = 1e-10, atol: float = 1e-13) -> None:
    """Every key of a 200 body of POST /v1/gradients against the oracle, with its shape (assert_close compares
    shapes); the key sets must be equal.

    The floor for near-zero entries is ``atol`` times the largest |gradient entry| of the case (when above 1):
    the norms make gradients that are 0 in exact arithmetic (db of a dense layer before a batchnorm, which
    subtracts the mean; dbeta of a norm before one) and cancellations of terms 1/sqrt(eps) large, and there both
    sides hold rounding noise of that scale, about 1e-13 of it (seen in 5 of 3000 seeds, with either BLAS kernel).
    """
    want = case.expected()
    atol = atol * max(1.0, max(float(np.max(np.abs(v))) for v in want["gradients"].values()))
    assert body["warnings"] == []
    assert isinstance(body["cost"], float)
    assert_close(body["cost"], want["cost"], "cost", rtol, atol)
    assert_close(body["AL"], want["AL"], "AL", rtol, atol)
    assert set(body["gradients"]) == set(want["gradients"])
    for key, value in want["gradients"].items():
        assert_close(body["gradients"][key], value, key, rtol, atol)
    if "state" in want:
        assert set(body["state"]) == set(want["state"])
        for layer, stats in want["state"].items():
            assert set(body["state"][layer]) == set(BN_STATES)
            for name, value in stats.items():
                assert_close(body["state"][layer][name], value, f"state[{layer}].{name}", rtol, atol)
    else:
        assert body.get("state") is None
    if case.include_caches:
        assert set(body["caches"]) == set(want["caches"])
        for key, value in want["caches"].items():
            assert_close(body["caches"][key], value, key, rtol, atol)
        assert body["caches"][f"A{case.L}"] == body["AL"]
    else:
        assert body.get("caches") is None


def _choose(rng: np.random.Generator, options: tuple, p: list[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]


def _random_kinds(rng: np.random.Generator, L: int, n_x: int, n_out: tuple[int, int]) -> tuple[list[str], list[int]]:
    """Each layer's kind and the sizes n_0..n_L; a norm keeps its input's size, so a norm output layer whose input
    does not fit the cost's output size becomes dense."""
    kinds = [_choose(rng, KIND_NAMES, [0.4, 0.35, 0.25]) for _ in range(L - 1)] + [
        _choose(rng, KIND_NAMES, [0.6, 0.2, 0.2])]
    sizes = [n_x]
    for l in range(L):
        last = l == L - 1
        if kinds[l] != "dense" and not (last and not n_out[0] <= sizes[-1] <= n_out[1]):
            sizes.append(sizes[-1])
            continue
        kinds[l] = "dense"
        sizes.append(int(rng.integers(n_out[0], n_out[1] + 1)) if last else int(rng.integers(1, 6)))
    return kinds, sizes


def _kind_hypers(rng: np.random.Generator, kind: str, n: int) -> tuple[dict, dict]:
    """The hyperparameters and running statistics a norm layer sends (a random subset; test mode sends both
    statistics, as it must)."""
    hyper: dict[str, Any] = {}
    state: dict[str, np.ndarray] = {}
    if kind == "dense":
        return hyper, state
    if rng.random() < 0.5:
        hyper["eps"] = _choose(rng, (1e-3, 1e-2, 0.1, float(np.round(rng.uniform(1e-4, 0.5), 6))))
    if kind == "batchnorm":
        test = rng.random() < 0.3
        if test or rng.random() < 0.5:
            hyper["mode"] = "test" if test else "train"
        if rng.random() < 0.5:
            hyper["momentum"] = _choose(rng, (0.0, 1.0, 0.5, float(np.round(rng.uniform(0, 1), 6))))
        if test or rng.random() < 0.5:
            state["running_mean"] = rng.normal(0, 0.5, size=(n, 1))
        if test or rng.random() < 0.5:
            state["running_var"] = rng.uniform(0.2, 2.0, size=(n, 1))
    return hyper, state


def _labels(rng: np.random.Generator, cost: str, n_L: int, m: int) -> tuple[np.ndarray, str]:
    if cost == "binary_cross_entropy":
        Y = rng.uniform(0, 1, size=(n_L, m))
        pick = rng.random((n_L, m))
        Y[pick < 0.35] = 0.0
        Y[pick > 0.65] = 1.0
    elif cost in CLASS_COSTS:
        Y = np.zeros((n_L, m))
        Y[rng.integers(0, n_L, size=m), np.arange(m)] = 1.0
    else:
        Y = rng.normal(0, 1, size=(n_L, m))
    if cost in CLASS_COSTS:
        return Y, ("indices" if rng.random() < 0.5 else "matrix")
    return Y, ("flat" if n_L == 1 and rng.random() < 0.5 else "matrix")


def random_kinds_case(seed: int, *, max_m: int = 8) -> KindsCase:
    """A seeded random network of kinds and its request. Spread over the seed: layout seed % 2, weight layout
    (seed // 2) % 2, convention (seed // 4) % 2, (output activation, cost) (seed // 8) % 9, so that any 72
    consecutive seeds cover every combination; the rest (depth 1..5, kinds, activations, hyperparameters,
    running statistics, shapes sent, m = 1 in ~15%, L2, dropout with null masks) is drawn from the seed."""
    rng = np.random.default_rng([seed, 8])
    layout, weight_layout = LAYOUTS[seed % 2], WEIGHT_LAYOUTS[(seed // 2) % 2]
    intermediates = CONVENTIONS[(seed // 4) % 2]
    out_act, cost = KIND_PAIRINGS[(seed // 8) % len(KIND_PAIRINGS)]
    L = int(rng.integers(1, 6))
    r = rng.random()
    m = 1 if r < 0.15 else (int(rng.integers(12, 25)) if r > 0.93 else int(rng.integers(2, max_m + 1)))
    if cost in CLASS_COSTS or out_act == "softmax":
        n_out = (2, 5)
    else:
        n_out = (1, 3) if cost == "binary_cross_entropy" else (1, 4)
    kinds, sizes = _random_kinds(rng, L, int(rng.integers(1, 6)), n_out)

    acts: list[str | None] = []
    for l, kind in enumerate(kinds):
        act = out_act if l == L - 1 else _choose(rng, HIDDEN_ACTIVATIONS)
        acts.append(None if kind != "dense" and act == "linear" and rng.random() < 0.5
                    else None if kind != "dense" and l < L - 1 and rng.random() < 0.2 else act)
    slopes = [float(np.round(rng.uniform(0.02, 0.5), 6)) if a == "leaky_relu" and rng.random() < 0.5 else None
              for a in acts]
    structure = []
    for l, kind in enumerate(kinds):
        hyper, state = _kind_hypers(rng, kind, sizes[l + 1])
        names = ("b",) if kind == "dense" else ("gamma", "beta", *state)
        vector = frozenset(n for n in names if rng.random() < 0.5)
        structure.append((kind, hyper, state, vector, kind != "dense" or rng.random() < 0.5))
    Y, y_format = _labels(rng, cost, sizes[-1], m)
    l2 = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.01, 1.0))
    keep_prob, masks = None, None
    if L > 1 and rng.random() < 0.45:
        keep_prob = float(_choose(rng, (1.0, 0.8, 0.5, float(np.round(rng.uniform(0.3, 0.95), 4)))))
        masks = [None if rng.random() < 0.35 else (rng.random((n, m)) < max(keep_prob, 0.5)).astype(np.float64)
                 for n in sizes[1:-1]]
    include_caches = bool(rng.random() < 0.5)
    send_weight_layout = weight_layout == "in_out" or bool(rng.random() < 0.5)

    for attempt in range(200):
        layers = []
        for l, (kind, hyper, state, vector, send_type) in enumerate(structure):
            n_in, n = sizes[l], sizes[l + 1]
            if kind == "dense":
                params = {"W": rng.normal(0, 1, size=(n, n_in)) / np.sqrt(n_in), "b": rng.normal(0, 0.3, size=(n, 1))}
            else:
                params = {"gamma": rng.normal(1.0, 0.4, size=(n, 1)), "beta": rng.normal(0, 0.3, size=(n, 1))}
            layers.append(KindLayer(kind, params, acts[l], slopes[l], hyper, state, vector, send_type))
        X = rng.normal(0, 1, size=(sizes[0], m))
        case = KindsCase(seed=seed, layers=layers, X=X, Y=Y, y_format=y_format, cost=cost, layout=layout,
                         weight_layout=weight_layout, intermediates=intermediates, l2=l2, keep_prob=keep_prob,
                         masks=masks, include_caches=include_caches, send_weight_layout=send_weight_layout)
        with torch.no_grad():
            ref = kinds_forward_Z(case)
        if all(np.max(np.abs(Z)) <= SATURATING_LIMIT for Z, layer in zip(ref, layers)
               if layer.act in ("sigmoid", "tanh")):
            case.extra["attempts"] = attempt + 1
            return case
    raise RuntimeError(f"seed {seed}: no acceptable draw in 200 attempts")


def kinds_forward_Z(case: KindsCase) -> list[np.ndarray]:
    """Z_1..Z_L of a case (float64, via torch), for rejection sampling."""
    A, out = _t(case.X), []
    for l, layer in enumerate(case.layers):
        Z = torch_kind(layer, A, {k: _t(v) for k, v in layer.params.items()})
        out.append(Z.numpy().copy())
        G = torch_activation(layer.act, Z, DEFAULT_SLOPE if layer.slope is None else layer.slope)
        mask = case.masks[l] if case.masks is not None and l < case.L - 1 else None
        A = G * _t(mask) / case.keep_prob if mask is not None else G
    return out
