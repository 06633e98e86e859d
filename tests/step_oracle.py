"""An independent float64 reference for the one-step routes: torch autograd for one layer, a cost and a backward
pass from a learner's caches, and torch.optim (or the course's formulas on torch tensors where torch.optim has no
equivalent) for the optimizer steps. Also the seeded random cases and an elementwise closeness assertion.

Nothing here imports the service: the oracle shares only the wire contract (names, shapes, layouts, conventions).
Every tensor is created with ``dtype=torch.float64`` explicitly; torch's default dtype is left alone.

Inside the oracle everything is features first: A_prev (n_in, m), Z and A (n_out, m), W (n_out, n_in), b, gamma,
beta and the running statistics as columns (D, 1). ``StepCase.wire`` turns arrays into the request's layouts.

    layer forward   Z = kind(A_prev) (dense W A_prev + b; batchnorm and layernorm through torch.nn.functional),
                    A = g(Z)
    layer backward  dZ = the VJP of g at Z (the Z sent, or kind(A_prev)) applied to dA, or dZ as sent; then the
                    VJP of kind at A_prev applied to dZ by autograd: dA_prev, and each parameter's gradient times
                    1/m under ``per_example`` (as it is under ``mean``), plus the gradient of lambda/(2m) ||W||^2
    cost            J = (1/m) sum_i loss_i + lambda/(2m) sum ||W||_F^2; dA_L = d sum_i loss_i / dA_L and
                    dZ_L = d sum_i loss_i / dZ_L (per_example), both divided by m under ``mean``
    optimizers      torch.optim.SGD (momentum: deeplearning.ai's with dampening = beta, cs231n's through a buffer of
                    -v/lr), RMSprop and Adam with their state set to the request's
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

F64 = torch.float64
KIND_NAMES = ("dense", "batchnorm", "layernorm")
ACTIVATION_NAMES = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")
COST_NAMES = ("binary_cross_entropy", "categorical_cross_entropy", "mean_squared_error", "multiclass_hinge")
CANONICAL = {"binary_cross_entropy": "sigmoid", "categorical_cross_entropy": "softmax",
             "mean_squared_error": "linear", "multiclass_hinge": "linear"}
ONE_HOT_COSTS = ("categorical_cross_entropy", "multiclass_hinge")
DEFAULT_SLOPE = 0.01
REGULARIZED = {"dense": ("W",)}  # the parameters L2 acts on, by kind
PARAMS = {"dense": ("W", "b"), "batchnorm": ("gamma", "beta"), "layernorm": ("gamma", "beta")}
NORM_DEFAULTS = {"eps": 1e-5, "momentum": 0.9, "mode": "train"}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on n threads for a while (one is fastest for these tiny tensors on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tt(a: Any, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=F64).requires_grad_(grad)


def npy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().numpy().astype(np.float64, copy=True)


# --- closeness ----------------------------------------------------------------------------------------------

def as_array(value: Any) -> np.ndarray:
    """A JSON value (nested lists, possibly with null) -> float64 array; null becomes NaN."""
    def conv(v):
        return [conv(x) for x in v] if isinstance(v, list) else (np.nan if v is None else v)
    return np.asarray(conv(value), dtype=np.float64)


def assert_close(got: Any, want: Any, name: str, rtol: float = 1e-10, floor: float = 1e-13,
                 scale: float = 0.0) -> None:
    """Shapes equal and |got - want| <= rtol |want| + atol elementwise, atol = floor * max(1, max |want|, scale):
    the absolute floor scales with the array, or with ``scale``, the size of the terms an entry is summed from (an
    entry that cancels to ~0 keeps their rounding). The failure names the worst entry."""
    __tracebackhide__ = True
    g, w = as_array(got), np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, f"{name}: shape {g.shape}, expected {w.shape}"
    if g.size == 0:
        return
    assert np.isfinite(g).all(), f"{name}: non-finite entries at {np.argwhere(~np.isfinite(g)).tolist()[:5]}"
    assert np.isfinite(w).all(), f"{name}: the reference is not finite"
    atol = floor * max(1.0, float(np.max(np.abs(w))), scale)
    excess = np.abs(g - w) - (rtol * np.abs(w) + atol)
    i = np.unravel_index(int(np.argmax(excess)), excess.shape)
    if excess[i] > 0:
        raise AssertionError(f"{name}: worst entry {tuple(int(k) for k in i)}: got {g[i]!r}, expected {w[i]!r}, "
                             f"|diff| {abs(g[i] - w[i]):.3e} (rtol {rtol}, atol {atol:.1e}); "
                             f"{int(np.sum(excess > 0))} of {g.size} entries out of tolerance")


# --- activations and layer kinds -------------------------------------------------------------------------------

def activation(name: str, Z: torch.Tensor, slope: float | None) -> torch.Tensor:
    """g(Z), features first (softmax over the units of each example, dim 0)."""
    if name == "linear":
        return Z
    if name == "sigmoid":
        return torch.sigmoid(Z)
    if name == "tanh":
        return torch.tanh(Z)
    if name == "relu":
        return torch.relu(Z)
    if name == "leaky_relu":
        return F.leaky_relu(Z, negative_slope=DEFAULT_SLOPE if slope is None else slope)
    if name == "softmax":
        return torch.softmax(Z, dim=0)
    raise KeyError(name)


@dataclass
class StepLayer:
    """One layer, features first: ``params`` W (n_out, n_in), b (n_out, 1), or gamma, beta (D, 1); ``hyper`` the
    norms' eps, momentum and mode as used (defaults filled in); ``state`` the running statistics as used (D, 1)."""

    kind: str
    params: dict[str, np.ndarray]
    activation: str
    slope: float | None = None
    hyper: dict = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)


def _batchnorm(x: torch.Tensor, P: dict, layer: StepLayer) -> torch.Tensor:
    """torch's batch_norm on (m, D); for m = 1 (which torch refuses in training) the same normalisation written
    out, differentiated by autograd all the same."""
    g, b, eps = P["gamma"].reshape(-1), P["beta"].reshape(-1), layer.hyper["eps"]
    if layer.hyper["mode"] == "test":
        rm, rv = (tt(layer.state[k]).reshape(-1) for k in ("running_mean", "running_var"))
        return F.batch_norm(x.T, rm, rv, g, b, training=False, eps=eps).T
    if x.shape[1] > 1:
        return F.batch_norm(x.T, None, None, g, b, training=True, eps=eps).T
    var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    return P["gamma"] * (x - mean) / torch.sqrt(var + eps) + P["beta"]


def kind_forward(layer: StepLayer, x: torch.Tensor, P: dict[str, torch.Tensor]) -> torch.Tensor:
    """Z of the kind for x (n_in, m); P the parameters as tensors (engine form)."""
    if layer.kind == "dense":
        return P["W"] @ x + P["b"]
    if layer.kind == "batchnorm":
        return _batchnorm(x, P, layer)
    if layer.kind == "layernorm":
        return _layernorm(x, P, layer)
    raise KeyError(layer.kind)


def _layernorm(x: torch.Tensor, P: dict, layer: StepLayer) -> torch.Tensor:
    """torch's layer_norm on (m, D); for one feature, whose xhat is exactly 0 (torch's kernel leaves rounding
    noise of ~1e-16 / sqrt(eps) there), the same normalisation written out."""
    D, eps = x.shape[0], layer.hyper["eps"]
    if D > 1:
        return F.layer_norm(x.T, (D,), P["gamma"].reshape(-1), P["beta"].reshape(-1), eps).T
    var, mean = torch.var_mean(x, dim=0, keepdim=True, correction=0)
    return P["gamma"] * (x - mean) / torch.sqrt(var + eps) + P["beta"]


def cache_values(layer: StepLayer, A_prev: np.ndarray) -> dict[str, np.ndarray]:
    """What a norm's cache holds, from their definitions: batchnorm mean and biased var over the examples (D, 1)
    (test mode: the running statistics), layernorm over the features (1, m); std = sqrt(var + eps),
    xhat = (x - mean) / std. Dense: nothing."""
    if layer.kind == "dense":
        return {}
    x = tt(A_prev)
    if layer.kind == "batchnorm" and layer.hyper["mode"] == "test":
        mean, var = tt(layer.state["running_mean"]), tt(layer.state["running_var"])
    else:
        var, mean = torch.var_mean(x, dim=1 if layer.kind == "batchnorm" else 0, keepdim=True, correction=0)
    std = torch.sqrt(var + layer.hyper["eps"])
    return {"xhat": npy((x - mean) / std), "mean": npy(mean), "var": npy(var), "std": npy(std)}


def running_state(layer: StepLayer, A_prev: np.ndarray) -> dict[str, np.ndarray]:
    """batchnorm's running statistics after the step: p running + (1 - p) batch (biased var) in train mode,
    unchanged in test mode."""
    rm, rv = layer.state["running_mean"], layer.state["running_var"]
    if layer.hyper["mode"] == "test":
        return {"running_mean": rm, "running_var": rv}
    var, mean = torch.var_mean(tt(A_prev), dim=1, keepdim=True, correction=0)
    p = layer.hyper["momentum"]
    return {"running_mean": npy(p * tt(rm) + (1 - p) * mean), "running_var": npy(p * tt(rv) + (1 - p) * var)}


@dataclass
class ForwardRef:
    Z: np.ndarray
    A: np.ndarray
    cache: dict[str, np.ndarray]
    state: dict[str, np.ndarray]


def layer_forward(layer: StepLayer, A_prev: np.ndarray) -> ForwardRef:
    P = {k: tt(v) for k, v in layer.params.items()}
    with torch.no_grad():
        Z = kind_forward(layer, tt(A_prev), P)
        A = activation(layer.activation, Z, layer.slope)
    state = running_state(layer, A_prev) if layer.kind == "batchnorm" else {}
    return ForwardRef(npy(Z), npy(A), cache_values(layer, A_prev), state)


def activation_vjp(name: str, Z: np.ndarray, dA: np.ndarray, slope: float | None) -> np.ndarray:
    """dZ = (dg/dZ)^T dA at Z as given, by autograd (softmax: its full Jacobian's product)."""
    Zt = tt(Z, grad=True)
    activation(name, Zt, slope).backward(tt(dA))
    return npy(Zt.grad)


def layer_backward(layer: StepLayer, A_prev: np.ndarray, *, dA: np.ndarray | None = None,
                   dZ: np.ndarray | None = None, Z: np.ndarray | None = None,
                   intermediates: str = "per_example", l2: float = 0.0) -> dict[str, np.ndarray]:
    """{dA_prev, dZ, d<param>} features first. With dA and no Z, one autograd chain through g(kind(A_prev));
    with a Z sent, dZ from g's VJP at that Z, then the kind's VJP at A_prev (the two need not be consistent)."""
    x = tt(A_prev, grad=True)
    P = {k: tt(v, grad=True) for k, v in layer.params.items()}
    Zt = kind_forward(layer, x, P)
    if dZ is not None:
        used = tt(dZ)
        Zt.backward(used)
    elif Z is None:
        Zt.retain_grad()
        activation(layer.activation, Zt, layer.slope).backward(tt(dA))
        used = Zt.grad
    else:
        used = tt(activation_vjp(layer.activation, Z, dA, layer.slope))
        Zt.backward(used)
    m = A_prev.shape[1]
    out = {"dA_prev": npy(x.grad), "dZ": npy(used)}
    for name, p in P.items():
        g = p.grad / m if intermediates == "per_example" else p.grad.clone()
        if l2 and name in REGULARIZED.get(layer.kind, ()):
            w = tt(layer.params[name], grad=True)
            (penalty,) = torch.autograd.grad(l2 / (2 * m) * (w * w).sum(), w)
            g = g + penalty
        out[f"d{name}"] = npy(g)
    return out


# --- backpropagation from caches (L_model_backward) -------------------------------------------------------------

def network_backward(layers: list[StepLayer], A_prevs: list[np.ndarray], Zs: list[np.ndarray | None],
                     dAL: np.ndarray, intermediates: str = "per_example", l2: float = 0.0) -> dict[str, np.ndarray]:
    """The course's L_model_backward: each layer l's step from its own cache (A_prev_l, Z_l) with the upstream
    dA_l that layer l + 1 gave (dA_L given). Keys as the course's grads dictionary: dA0..dAL, dZ1..dZL,
    d<param><l>; features first."""
    L = len(layers)
    out = {f"dA{L}": np.asarray(dAL, dtype=np.float64)}
    dA = out[f"dA{L}"]
    for l in range(L, 0, -1):
        step = layer_backward(layers[l - 1], A_prevs[l - 1], dA=dA, Z=Zs[l - 1], intermediates=intermediates, l2=l2)
        out[f"dZ{l}"], out[f"dA{l - 1}"] = step["dZ"], step["dA_prev"]
        for name in PARAMS[layers[l - 1].kind]:
            out[f"d{name}{l}"] = step[f"d{name}"]
        dA = step["dA_prev"]
    return out


# --- costs --------------------------------------------------------------------------------------------------

def course_loss(cost: str, A: torch.Tensor, Y: torch.Tensor, one_minus_A: torch.Tensor | None = None) -> torch.Tensor:
    """The per-entry losses written on the output A (the course's compute_cost), summed over the units: (m,).
    0 log 0 = 0 (xlogy). ``one_minus_A``: 1 - A held as its own tensor (binary cross-entropy from logits)."""
    if cost == "binary_cross_entropy":
        B = 1.0 - A if one_minus_A is None else one_minus_A
        return -(torch.xlogy(Y, A) + torch.xlogy(1.0 - Y, B)).sum(0)
    if cost == "categorical_cross_entropy":
        return -torch.xlogy(Y, A).sum(0)
    if cost == "mean_squared_error":
        return 0.5 * ((A - Y) ** 2).sum(0)
    if cost == "multiclass_hinge":
        # torch's multi_margin_loss averages over the C classes: times C is the sum of cs231n's svm_loss.
        C = A.shape[0]
        return C * F.multi_margin_loss(A.T, Y.argmax(0), p=1, margin=1.0, reduction="none")
    raise KeyError(cost)


def logit_loss(cost: str, Z: torch.Tensor, Y: torch.Tensor, act: str, slope: float | None) -> torch.Tensor:
    """The losses (m,) from the logits, in forms whose autograd gradient keeps full relative precision where A_L
    rounds to 0 or 1: y softplus(-z) + (1 - y) softplus(z) for a sigmoid; log(1 + sum_{j != k} exp(z_j - z_k))
    for a softmax with true class k (one-hot labels)."""
    if cost == "binary_cross_entropy":
        return (Y * F.softplus(-Z) + (1.0 - Y) * F.softplus(Z)).sum(0)
    if cost == "categorical_cross_entropy":
        zk = (Z * Y).sum(0, keepdim=True)
        return torch.log1p((torch.exp(Z - zk) * (1.0 - Y)).sum(0))
    return course_loss(cost, activation(act, Z, slope), Y)


@dataclass
class CostRef:
    cost: float
    dAL: np.ndarray
    dZL: np.ndarray | None
    AL: np.ndarray | None = None


def _penalty(l2: float, weights: list[np.ndarray], m: int) -> float:
    return float(l2 / (2 * m) * sum((tt(W) ** 2).sum() for W in weights)) if l2 else 0.0


def cost_of_AL(cost: str, AL: np.ndarray, Y: np.ndarray, *, l2: float = 0.0, weights: list[np.ndarray] = (),
               intermediates: str = "per_example", canonical: bool = True) -> CostRef:
    """compute_cost(AL, Y) with A_L taken as exact; dZ_L (canonical pair only) by autograd at the logits the
    canonical activation maps to A_L (logit for a sigmoid, log for a softmax, A_L itself for a linear output)."""
    m = Y.shape[1]
    A, Yt = tt(AL, grad=True), tt(Y)
    losses = course_loss(cost, A, Yt)
    losses.sum().backward()
    scale = 1.0 if intermediates == "per_example" else 1.0 / m
    dZL = None
    if canonical:
        act = CANONICAL[cost]
        Z0 = torch.logit(tt(AL)) if act == "sigmoid" else torch.log(tt(AL)) if act == "softmax" else tt(AL)
        Z = Z0.clone().requires_grad_(True)
        logit_loss(cost, Z, Yt, act, None).sum().backward()
        dZL = npy(Z.grad) * scale
    J = float(losses.detach().sum()) / m + _penalty(l2, list(weights), m)
    return CostRef(J, npy(A.grad) * scale, dZL)


def cost_of_ZL(cost: str, ZL: np.ndarray, Y: np.ndarray, act: str, *, slope: float | None = None, l2: float = 0.0,
               weights: list[np.ndarray] = (), intermediates: str = "per_example") -> CostRef:
    """A_L = g(Z_L), J and dZ_L by autograd of the logit forms; dA_L by autograd of the course's loss at A_L (for
    binary cross-entropy with 1 - A_L held as sigmoid(-Z_L): dA_L = dloss/dA - dloss/d(1 - A))."""
    m = Y.shape[1]
    Z, Yt = tt(ZL, grad=True), tt(Y)
    losses = logit_loss(cost, Z, Yt, act, slope)
    losses.sum().backward()
    scale = 1.0 if intermediates == "per_example" else 1.0 / m
    with torch.no_grad():
        AL = activation(act, tt(ZL), slope)
    A = AL.clone().requires_grad_(True)
    if cost == "binary_cross_entropy":
        B = torch.sigmoid(-tt(ZL)).requires_grad_(True)
        course_loss(cost, A, Yt, one_minus_A=B).sum().backward()
        dAL = A.grad - B.grad
    else:
        course_loss(cost, A, Yt).sum().backward()
        dAL = A.grad
    J = float(losses.detach().sum()) / m + _penalty(l2, list(weights), m)
    return CostRef(J, npy(dAL) * scale, npy(Z.grad) * scale, npy(AL))


# --- optimizers ---------------------------------------------------------------------------------------------

# The hyperparameters' defaults of each rule, from the course code (deeplearning.ai's update_parameters_with_*
# and cs231n's optim.py) as the issue and the request schema state them.
DEFAULTS = {
    ("sgd", "deeplearning_ai"): {"learning_rate": 0.01},
    ("sgd", "cs231n"): {"learning_rate": 0.01},
    ("momentum", "deeplearning_ai"): {"learning_rate": 0.01, "beta": 0.9},
    ("momentum", "cs231n"): {"learning_rate": 0.01, "momentum": 0.9},
    ("rmsprop", "deeplearning_ai"): {"learning_rate": 0.01, "beta2": 0.999, "epsilon": 1e-8},
    ("rmsprop", "cs231n"): {"learning_rate": 0.01, "decay_rate": 0.99, "epsilon": 1e-8},
    ("adam", "deeplearning_ai"): {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
    ("adam", "cs231n"): {"learning_rate": 0.001, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
}
STATE_NAMES = {
    ("sgd", "deeplearning_ai"): (), ("sgd", "cs231n"): (),
    ("momentum", "deeplearning_ai"): ("v",), ("momentum", "cs231n"): ("velocity",),
    ("rmsprop", "deeplearning_ai"): ("s",), ("rmsprop", "cs231n"): ("cache",),
    ("adam", "deeplearning_ai"): ("v", "s"), ("adam", "cs231n"): ("m", "v"),
}


def decayed(lr0: float, decay: dict | None) -> float:
    """The course's update_lr (inverse_time: lr0 / (1 + rate epoch)) and schedule_lr_decay (scheduled:
    lr0 / (1 + rate floor(epoch / time_interval)), time_interval default 1000)."""
    if not decay:
        return lr0
    if decay["kind"] == "inverse_time":
        return lr0 / (1 + decay["decay_rate"] * decay["epoch"])
    return lr0 / (1 + decay["decay_rate"] * math.floor(decay["epoch"] / decay.get("time_interval", 1000)))


@dataclass
class OptimizerRef:
    params: dict[str, np.ndarray]
    state: dict[str, dict[str, np.ndarray]]
    t: int | None
    learning_rate: float
    extras: dict[str, dict[str, np.ndarray]]


def _torch_update(optimizer: str, convention: str, P: np.ndarray, dP: np.ndarray, state: dict[str, np.ndarray],
                  h: dict, lr: float, t: int | None) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """One parameter through torch.optim, its state set to the request's; -> new P, new state, Adam's extras."""
    p = tt(P, grad=True)
    p.grad = tt(dP)
    if optimizer == "sgd":
        torch.optim.SGD([p], lr=lr).step()
        return npy(p), {}, {}
    if optimizer == "momentum" and convention == "deeplearning_ai":
        # buf = beta buf + (1 - dampening) g with dampening = beta; a buffer set beforehand takes that branch
        opt = torch.optim.SGD([p], lr=lr, momentum=h["beta"], dampening=h["beta"], foreach=False)
        opt.state[p]["momentum_buffer"] = tt(state["v"])
        opt.step()
        return npy(p), {"v": npy(opt.state[p]["momentum_buffer"])}, {}
    if optimizer == "momentum":
        # cs231n's v' = mu v - lr g, w += v' is torch's buf' = mu buf + g, w -= lr buf' with buf = -v / lr
        opt = torch.optim.SGD([p], lr=lr, momentum=h["momentum"], foreach=False)
        opt.state[p]["momentum_buffer"] = -tt(state["velocity"]) / lr
        opt.step()
        return npy(p), {"velocity": npy(-lr * opt.state[p]["momentum_buffer"])}, {}
    if optimizer == "rmsprop":
        name, alpha = ("s", h["beta2"]) if convention == "deeplearning_ai" else ("cache", h["decay_rate"])
        opt = torch.optim.RMSprop([p], lr=lr, alpha=alpha, eps=h["epsilon"], foreach=False)
        opt.state[p].update(step=torch.tensor(0.0, dtype=F64), square_avg=tt(state[name]))
        opt.step()
        return npy(p), {name: npy(opt.state[p]["square_avg"])}, {}
    first, second = ("v", "s") if convention == "deeplearning_ai" else ("m", "v")
    opt = torch.optim.Adam([p], lr=lr, betas=(h["beta1"], h["beta2"]), eps=h["epsilon"], foreach=False)
    # torch increments step before its bias correction: step = t_used - 1 makes it use t_used
    opt.state[p].update(step=torch.tensor(float(t - 1), dtype=F64), exp_avg=tt(state[first]),
                        exp_avg_sq=tt(state[second]))
    opt.step()
    v, s = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
    extras = {f"{first}_corrected": npy(v / (1 - h["beta1"] ** t)),
              f"{second}_corrected": npy(s / (1 - h["beta2"] ** t))}
    return npy(p), {first: npy(v), second: npy(s)}, extras


def optimizer_step(optimizer: str, convention: str, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
                   state: dict[str, dict[str, np.ndarray]] | None, hyper: dict[str, float], t: int | None,
                   decay: dict | None = None) -> OptimizerRef:
    """Every parameter's update; ``hyper`` the hyperparameters sent (the rule's defaults for the rest), ``state``
    keyed by state name then gradient name (zeros where absent), ``t`` as sent (Adam: deeplearning_ai uses it,
    cs231n uses t + 1, default t = 0)."""
    h = {**DEFAULTS[(optimizer, convention)], **hyper}
    lr = decayed(h["learning_rate"], decay)
    t_used = None
    if optimizer == "adam":
        t_used = t if convention == "deeplearning_ai" else (t or 0) + 1
    names = STATE_NAMES[(optimizer, convention)]
    out_p, out_s, out_e = {}, {n: {} for n in names}, {}
    for name, P in params.items():
        g = f"d{name}"
        current = {n: (state or {}).get(n, {}).get(g, np.zeros_like(P)) for n in names}
        new_p, new_s, extras = _torch_update(optimizer, convention, P, grads[g], current, h, lr, t_used)
        out_p[name] = new_p
        for n, a in new_s.items():
            out_s[n][g] = a
        for e, a in extras.items():
            out_e.setdefault(e, {})[g] = a
    return OptimizerRef(out_p, out_s, t_used, lr, out_e)


# --- seeded random cases, and their wire form -------------------------------------------------------------------

def per_example(a: np.ndarray, examples_first: bool) -> np.ndarray:
    """A (units, m) array in the request's layout (C-contiguous, for JSON)."""
    return np.ascontiguousarray(a.T if examples_first else a)


@dataclass
class WireLayer:
    """A layer as the request holds it: ``spec`` the JSON object, ``shapes`` the shape each parameter and running
    statistic was sent in, ``in_out`` dense W sent as (n_in, n_out)."""

    layer: StepLayer
    spec: dict
    shapes: dict[str, tuple[int, ...]]
    in_out: bool = False

    def to_wire(self, name: str, a: np.ndarray) -> np.ndarray:
        """A parameter's gradient (or a running statistic, or a per-feature cache value: ``name`` is the parameter
        whose shape it takes) from engine form to the form sent."""
        if name == "W":
            return np.ascontiguousarray(a.T if self.in_out else a)
        return np.ascontiguousarray(a.reshape(self.shapes.get(name, a.shape)))


def _column_or_vector(rng: np.random.Generator, a: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    sent = a.reshape(-1) if rng.random() < 0.5 else a
    return sent, sent.shape


def random_layer(rng: np.random.Generator, kind: str, n_in: int, activations: list[str], *,
                 mode: str | None = None, need_activation: bool = False) -> WireLayer:
    """A random layer of ``kind`` taking n_in features: its parameters, hyperparameters, running statistics and
    activation (left out half of the time where it may be, for the default ``linear``), each parameter sent as a
    column or a vector at random, dense W in either weight layout."""
    act = str(rng.choice(activations))
    slope = float(rng.uniform(0.02, 0.5)) if act == "leaky_relu" and rng.random() < 0.5 else None
    spec: dict[str, Any] = {} if kind == "dense" else {"type": kind}
    shapes: dict[str, tuple[int, ...]] = {}
    hyper, state, params = {}, {}, {}
    in_out = False
    if kind == "dense":
        n_out = int(rng.integers(1, 6))
        params["W"] = rng.normal(0, 1 / math.sqrt(n_in), (n_out, n_in))
        params["b"] = rng.normal(0, 0.5, (n_out, 1))
        in_out = bool(rng.random() < 0.3)
        spec["W"] = np.ascontiguousarray(params["W"].T) if in_out else params["W"]
        spec["b"], shapes["b"] = _column_or_vector(rng, params["b"])
        shapes["W"] = spec["W"].shape
    else:
        params["gamma"] = rng.normal(1.0, 0.5, (n_in, 1))
        params["beta"] = rng.normal(0.0, 0.5, (n_in, 1))
        for name in ("gamma", "beta"):
            spec[name], shapes[name] = _column_or_vector(rng, params[name])
        hyper = dict(NORM_DEFAULTS) if kind == "batchnorm" else {"eps": NORM_DEFAULTS["eps"]}
        if rng.random() < 0.5:
            hyper["eps"] = spec["eps"] = float(10 ** rng.uniform(-6, -2))
    if kind == "batchnorm":
        hyper["mode"] = mode or str(rng.choice(["train", "test"]))
        if hyper["mode"] == "test" or rng.random() < 0.5:
            spec["mode"] = hyper["mode"]
        if rng.random() < 0.5:
            hyper["momentum"] = spec["momentum"] = float(rng.uniform(0, 1))
        state = {"running_mean": np.zeros((n_in, 1)), "running_var": np.ones((n_in, 1))}
        if hyper["mode"] == "test" or rng.random() < 0.6:
            state = {"running_mean": rng.normal(0, 1, (n_in, 1)), "running_var": rng.uniform(0.2, 2.0, (n_in, 1))}
            for name in state:
                spec[name], shapes[name] = _column_or_vector(rng, state[name])
    if need_activation or act != "linear" or rng.random() < 0.5:
        spec["activation"] = act
    if slope is not None:
        spec["negative_slope"] = slope
    return WireLayer(StepLayer(kind, params, act, slope, hyper, state), spec, shapes, in_out)


def out_units(wl: WireLayer, n_in: int) -> int:
    return wl.layer.params["W"].shape[0] if wl.layer.kind == "dense" else n_in


@dataclass
class LayerCase:
    """A /v1/layer/forward or /v1/layer/backward request: features-first arrays, rendered by ``body``."""

    seed: int
    wl: WireLayer
    A_prev: np.ndarray
    examples_first: bool
    dA: np.ndarray | None = None
    dZ: np.ndarray | None = None
    Z: np.ndarray | None = None
    intermediates: str | None = None
    l2: float = 0.0

    @property
    def m(self) -> int:
        return self.A_prev.shape[1]

    def body(self) -> dict:
        out: dict[str, Any] = {"layer": self.wl.spec, "A_prev": per_example(self.A_prev, self.examples_first)}
        if self.examples_first:
            out["layout"] = "examples_first"
        if self.wl.in_out:
            out["weight_layout"] = "in_out"
        for name in ("dA", "dZ", "Z"):
            if getattr(self, name) is not None:
                out[name] = per_example(getattr(self, name), self.examples_first)
        if self.intermediates is not None:
            out["intermediates"] = self.intermediates
        if self.l2:
            out["l2"] = self.l2
        return out


def random_layer_case(seed: int, kind: str, activations: list[str], *, mode: str | None = None,
                      backward: bool = False, min_m: int = 1) -> LayerCase:
    """A seeded random one-layer request. Backward: dA or dZ at random; with dA, half of the time a Z drawn
    independently of the layer (an inconsistent cache, as the course's test cases build them)."""
    rng = np.random.default_rng([seed, KIND_NAMES.index(kind) if kind in KIND_NAMES else 99, int(backward)])
    n_in, m = int(rng.integers(1, 7)), int(rng.integers(min_m, 9))
    wl = random_layer(rng, kind, n_in, activations, mode=mode)
    case = LayerCase(seed, wl, rng.normal(0, 1.5, (n_in, m)), bool(rng.random() < 0.5))
    if backward:
        n_out = out_units(wl, n_in)
        if rng.random() < 0.5:
            case.dZ = rng.normal(0, 1, (n_out, m))
        else:
            case.dA = rng.normal(0, 1, (n_out, m))
            if rng.random() < 0.5:
                case.Z = rng.normal(0, 1.5, (n_out, m))
        case.intermediates = str(rng.choice(["per_example", "mean"])) if rng.random() < 0.8 else None
        case.l2 = float(rng.uniform(0, 1)) if rng.random() < 0.5 else 0.0
    return case


PER_FEATURE_CACHE = {"batchnorm": ("mean", "var", "std")}  # the rest of a cache is per example


def check_forward(case: LayerCase, body: dict, rtol: float = 1e-10) -> None:
    """A 200 of /v1/layer/forward against the oracle: Z, A, every cache value and batchnorm's state, with shapes."""
    layer, ef = case.wl.layer, case.examples_first
    ref = layer_forward(layer, case.A_prev)
    assert_close(body["Z"], per_example(ref.Z, ef), "Z", rtol)
    assert_close(body["A"], per_example(ref.A, ef), "A", rtol)
    assert set(body["cache"]) == set(ref.cache), f"cache keys {sorted(body['cache'])}, expected {sorted(ref.cache)}"
    for name, value in ref.cache.items():
        want = (case.wl.to_wire("gamma", value) if name in PER_FEATURE_CACHE.get(layer.kind, ())
                else per_example(value, ef))
        assert_close(body["cache"][name], want, f"cache.{name}", rtol)
    if layer.kind == "batchnorm":
        assert set(body["state"]) == {"running_mean", "running_var"}
        for name, value in ref.state.items():
            assert_close(body["state"][name], case.wl.to_wire(name, value), f"state.{name}", rtol)
    else:
        assert body.get("state") is None


def term_scale(layer: StepLayer, A_prev: np.ndarray, dZ: np.ndarray) -> float:
    """The size of the terms a norm's dA_prev is summed from, |gamma| |dZ| / std (it cancels to 0 exactly for one
    example or one feature, where torch keeps rounding noise of that size); 0 for dense."""
    if layer.kind == "dense":
        return 0.0
    std = cache_values(layer, A_prev)["std"]
    return float(np.max(np.abs(layer.params["gamma"])) * np.max(np.abs(dZ), initial=0.0) / np.min(std))


def check_backward(case: LayerCase, body: dict, rtol: float = 1e-10) -> None:
    """A 200 of /v1/layer/backward against the oracle: dA_prev, dZ (layout) and each parameter's gradient (in the
    form it was sent), nothing else."""
    ref = layer_backward(case.wl.layer, case.A_prev, dA=case.dA, dZ=case.dZ, Z=case.Z,
                         intermediates=case.intermediates or "per_example", l2=case.l2)
    assert set(body) == set(ref), f"keys {sorted(body)}, expected {sorted(ref)}"
    assert_close(body["dZ"], per_example(ref["dZ"], case.examples_first), "dZ", rtol)
    assert_close(body["dA_prev"], per_example(ref["dA_prev"], case.examples_first), "dA_prev", rtol,
                 scale=term_scale(case.wl.layer, case.A_prev, ref["dZ"]))
    for name in PARAMS[case.wl.layer.kind]:
        assert_close(body[f"d{name}"], case.wl.to_wire(name, ref[f"d{name}"]), f"d{name}", rtol)


# --- backpropagation from caches: random cases --------------------------------------------------------------

def random_labels(rng: np.random.Generator, cost: str, n: int, m: int) -> np.ndarray:
    """Y (n, m): one-hot columns for the costs that need them, 0/1 or soft labels for binary cross-entropy, any
    numbers for mean squared error."""
    if cost in ONE_HOT_COSTS:
        return np.eye(n)[:, rng.integers(0, n, m)]
    if cost == "binary_cross_entropy":
        hard = rng.integers(0, 2, (n, m)).astype(np.float64)
        return hard if rng.random() < 0.6 else np.where(rng.random((n, m)) < 0.5, hard, rng.uniform(0, 1, (n, m)))
    return rng.normal(0, 1, (n, m))


@dataclass
class NetworkCase:
    """A /v1/network/backward request: layers with independently drawn caches (A_prev_l, and Z_l or None), and
    dAL, or AL, Y and cost (features first)."""

    seed: int
    wls: list[WireLayer]
    A_prevs: list[np.ndarray]
    Zs: list[np.ndarray | None]
    examples_first: bool
    intermediates: str | None
    l2: float
    dAL: np.ndarray | None = None
    AL: np.ndarray | None = None
    Y: np.ndarray | None = None
    cost: str | None = None

    @property
    def in_out(self) -> bool:
        return any(wl.in_out for wl in self.wls)

    @property
    def m(self) -> int:
        return self.A_prevs[0].shape[1]

    def body(self) -> dict:
        ef = self.examples_first
        caches = [{"A_prev": per_example(A, ef), **({"Z": per_example(Z, ef)} if Z is not None else {})}
                  for A, Z in zip(self.A_prevs, self.Zs)]
        out: dict[str, Any] = {"layers": [wl.spec for wl in self.wls], "caches": caches}
        for name in ("dAL", "AL", "Y"):
            if getattr(self, name) is not None:
                out[name] = per_example(getattr(self, name), ef)
        if self.cost:
            out["cost"] = self.cost
        out.update({"layout": "examples_first"} if ef else {})
        out.update({"weight_layout": "in_out"} if self.in_out else {})
        out.update({"intermediates": self.intermediates} if self.intermediates else {})
        out.update({"l2": self.l2} if self.l2 else {})
        return out

    def upstream(self) -> np.ndarray:
        """dA_L: as sent, or the cost's formula at AL as sent (autograd of the course's loss), which the route
        gives per example (without the 1/m of ``mean``: see test_steps_oracle's note)."""
        if self.dAL is not None:
            return self.dAL
        A = tt(self.AL, grad=True)
        course_loss(self.cost, A, tt(self.Y)).sum().backward()
        return npy(A.grad)


def random_network_case(seed: int, featured: str, kinds: list[str], activations: list[str], costs: list[str], *,
                        intermediates: str | None = None, upstream: str | None = None) -> NetworkCase:
    """1-4 layers, one of them of kind ``featured``, the others of any kind; every cache drawn independently (Z
    left out a third of the time); one weight layout for the whole request; dAL given or AL, Y and cost (AL
    beyond 1 for binary cross-entropy now and then, as the course's test case has it). AL comes with
    ``per_example`` unless ``intermediates`` says otherwise (under ``mean`` the route has a bug, tested apart)."""
    rng = np.random.default_rng([seed, 7, KIND_NAMES.index(featured) if featured in KIND_NAMES else 99])
    L, m = int(rng.integers(1, 5)), int(rng.integers(1, 7))
    chosen = [str(rng.choice(kinds)) for _ in range(L)]
    chosen[int(rng.integers(0, L))] = featured
    in_out = bool(rng.random() < 0.3)
    wls, n = [], int(rng.integers(1, 6))
    sizes = [n]
    for kind in chosen:
        wl = random_layer(rng, kind, n, activations, need_activation=True)
        if kind == "dense":  # one weight layout for the request
            wl.in_out = in_out
            wl.spec["W"] = np.ascontiguousarray(wl.layer.params["W"].T if in_out else wl.layer.params["W"])
            wl.shapes["W"] = wl.spec["W"].shape
        n = out_units(wl, n)
        wls.append(wl)
        sizes.append(n)
    A_prevs = [rng.normal(0, 1.5, (sizes[l], m)) for l in range(L)]
    Zs = [rng.normal(0, 1.5, (sizes[l + 1], m)) if rng.random() < 0.67 else None for l in range(L)]
    upstream = upstream or ("AL" if rng.random() < 0.5 else "dAL")
    conventions = ["per_example", "mean"] if upstream == "dAL" else ["per_example"]
    case = NetworkCase(seed, wls, A_prevs, Zs, bool(rng.random() < 0.5),
                       intermediates or (str(rng.choice(conventions)) if rng.random() < 0.8 else None),
                       float(rng.uniform(0, 1)) if rng.random() < 0.4 else 0.0)
    if upstream == "dAL":
        case.dAL = rng.normal(0, 1, (n, m))
        return case
    case.cost = str(rng.choice(costs))
    case.Y = random_labels(rng, case.cost, n, m)
    if case.cost == "binary_cross_entropy":
        case.AL = rng.uniform(0.02, 0.98, (n, m)) if rng.random() < 0.8 else rng.uniform(1.1, 2.0, (n, m))
    elif case.cost == "categorical_cross_entropy":
        case.AL = rng.uniform(0.02, 1.0, (n, m))
    else:
        case.AL = rng.normal(0, 1, (n, m))
    return case


def check_network(case: NetworkCase, body: dict, rtol: float = 1e-10, dAL_scale: float = 1.0) -> None:
    """A 200 of /v1/network/backward against the oracle: dA0..dAL, dZ1..dZL and every d<param><l>, in the
    request's layouts. ``dAL_scale`` multiplies the dA_L the route is expected to derive from AL."""
    dAL = case.upstream() * (dAL_scale if case.dAL is None else 1.0)
    ref = network_backward([wl.layer for wl in case.wls], case.A_prevs, case.Zs, dAL,
                           intermediates=case.intermediates or "per_example", l2=case.l2)
    assert set(body) == set(ref), f"keys {sorted(body)}, expected {sorted(ref)}"
    ef = case.examples_first
    for l, wl in enumerate(case.wls, start=1):
        for name in PARAMS[wl.layer.kind]:
            assert_close(body[f"d{name}{l}"], wl.to_wire(name, ref[f"d{name}{l}"]), f"d{name}{l}", rtol)
        assert_close(body[f"dZ{l}"], per_example(ref[f"dZ{l}"], ef), f"dZ{l}", rtol)
        assert_close(body[f"dA{l - 1}"], per_example(ref[f"dA{l - 1}"], ef), f"dA{l - 1}", rtol,
                     scale=term_scale(wl.layer, case.A_prevs[l - 1], ref[f"dZ{l}"]))
    assert_close(body[f"dA{len(case.wls)}"], per_example(ref[f"dA{len(case.wls)}"], ef), "dAL", rtol)


# --- costs: random cases -------------------------------------------------------------------------------------

@dataclass
class CostCase:
    """A /v1/cost request: AL or ZL (features first), Y and how it is sent (``matrix``, ``flat`` for one unit,
    ``indices`` for the one-hot costs), the activation used and whether it is sent, L2 and its weights."""

    seed: int
    cost: str
    form: str  # "AL" or "ZL"
    values: np.ndarray
    Y: np.ndarray
    y_format: str
    act: str
    send_act: bool
    examples_first: bool
    intermediates: str | None = None
    slope: float | None = None
    l2: float = 0.0
    weights: list[np.ndarray] = field(default_factory=list)

    def body(self) -> dict:
        ef = self.examples_first
        Y = (per_example(self.Y, ef) if self.y_format == "matrix" else
             self.Y[0] if self.y_format == "flat" else self.Y.argmax(0).astype(np.int64))
        out: dict[str, Any] = {"cost": self.cost, self.form: per_example(self.values, ef), "Y": Y}
        out.update({"activation": self.act} if self.send_act else {})
        out.update({"negative_slope": self.slope} if self.slope is not None else {})
        out.update({"l2": self.l2, "weights": self.weights} if self.l2 else {})
        out.update({"layout": "examples_first"} if ef else {})
        out.update({"intermediates": self.intermediates} if self.intermediates else {})
        return out

    @property
    def canonical(self) -> bool:
        return self.act == CANONICAL[self.cost]

    def reference(self) -> CostRef:
        conv = self.intermediates or "per_example"
        if self.form == "AL":
            return cost_of_AL(self.cost, self.values, self.Y, l2=self.l2, weights=self.weights,
                              intermediates=conv, canonical=self.canonical)
        return cost_of_ZL(self.cost, self.values, self.Y, self.act, slope=self.slope, l2=self.l2,
                          weights=self.weights, intermediates=conv)


def random_cost_case(seed: int, cost: str, activations: list[str]) -> CostCase:
    """AL (from g of random logits, so that it is in g's range) or ZL; mean squared error with any output
    activation, the others with their canonical one (sent or left to the default)."""
    rng = np.random.default_rng([seed, 11, COST_NAMES.index(cost) if cost in COST_NAMES else 99])
    n = int(rng.integers(2 if cost in ONE_HOT_COSTS else 1, 5))
    m = int(rng.integers(1, 9))
    act = CANONICAL[cost] if cost != "mean_squared_error" or rng.random() < 0.4 else str(rng.choice(
        [a for a in activations if a != "linear"]))
    slope = float(rng.uniform(0.02, 0.5)) if act == "leaky_relu" and rng.random() < 0.6 else None
    form = "AL" if rng.random() < 0.5 else "ZL"
    Z = rng.normal(0, 2.0, (n, m))
    with torch.no_grad():
        values = Z if form == "ZL" else npy(activation(act, tt(Z), slope))
    Y = random_labels(rng, cost, n, m)
    y_format = "matrix"
    if cost in ONE_HOT_COSTS and rng.random() < 0.4:
        y_format = "indices"
    elif n == 1 and cost not in ONE_HOT_COSTS and rng.random() < 0.5:
        y_format = "flat"
    case = CostCase(seed, cost, form, values, Y, y_format, act, act != CANONICAL[cost] or rng.random() < 0.5,
                    bool(rng.random() < 0.5), str(rng.choice(["per_example", "mean"])) if rng.random() < 0.8 else None,
                    slope if form == "ZL" else None)
    if rng.random() < 0.4:
        case.l2 = float(rng.uniform(0, 2))
        case.weights = [rng.normal(0, 1, tuple(int(k) for k in rng.integers(1, 5, int(rng.integers(1, 3)))))
                        for _ in range(int(rng.integers(1, 4)))]
    return case


def check_cost(case: CostCase, body: dict, rtol: float = 1e-10, floor: float = 1e-13) -> None:
    """A 200 of /v1/cost against the oracle: cost, dAL, dZL (absent with AL and a non-canonical activation), AL
    (with ZL only), no warnings."""
    ref = case.reference()
    ef = case.examples_first
    want = {"cost", "dAL", "warnings"} | ({"dZL"} if ref.dZL is not None else set()) | (
        {"AL"} if case.form == "ZL" else set())
    assert set(body) == want, f"keys {sorted(body)}, expected {sorted(want)}"
    assert body["warnings"] == []
    assert isinstance(body["cost"], float)
    assert_close(body["cost"], ref.cost, "cost", rtol, floor)
    assert_close(body["dAL"], per_example(ref.dAL, ef), "dAL", rtol, floor)
    if ref.dZL is not None:
        assert_close(body["dZL"], per_example(ref.dZL, ef), "dZL", rtol, floor)
    if case.form == "ZL":
        assert_close(body["AL"], per_example(ref.AL, ef), "AL", rtol, floor)


# --- optimizers: random cases --------------------------------------------------------------------------------

SECOND_MOMENTS = ("s", "cache")  # state that is a running mean of squares: >= 0 (Adam's cs231n "v" too)


@dataclass
class OptimizerCase:
    """A /v1/optimizer-step request."""

    seed: int
    optimizer: str
    convention: str
    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    state: dict[str, dict[str, np.ndarray]] | None
    hyper: dict[str, float]
    t: int | None
    decay: dict | None
    send_convention: bool = True

    def body(self) -> dict:
        out: dict[str, Any] = {"optimizer": self.optimizer, "params": self.params, "grads": self.grads, **self.hyper}
        out.update({"convention": self.convention} if self.send_convention else {})
        out.update({"state": self.state} if self.state is not None else {})
        out.update({"t": self.t} if self.t is not None else {})
        out.update({"learning_rate_decay": self.decay} if self.decay else {})
        return out

    def reference(self) -> OptimizerRef:
        return optimizer_step(self.optimizer, self.convention, self.params, self.grads, self.state, self.hyper,
                              self.t, self.decay)


def _hyper_value(rng: np.random.Generator, name: str) -> float:
    if name == "learning_rate":
        return float(10 ** rng.uniform(-4, -0.3))
    if name == "epsilon":
        return float(10 ** rng.uniform(-10, -2))
    if name in ("beta2", "decay_rate"):
        return float(rng.uniform(0.5, 0.9999))
    return float(rng.uniform(0.0, 0.99))  # beta, momentum, beta1


def random_decay(rng: np.random.Generator) -> dict | None:
    u = rng.random()
    if u < 0.5:
        return None
    if u < 0.75:
        return {"kind": "inverse_time", "epoch": int(rng.integers(0, 100)), "decay_rate": float(rng.uniform(0, 2))}
    decay = {"kind": "scheduled", "epoch": int(rng.integers(0, 5000)), "decay_rate": float(rng.uniform(0, 2))}
    if rng.random() < 0.6:
        decay["time_interval"] = int(rng.integers(1, 1000))
    return decay


def random_optimizer_case(seed: int, optimizer: str, convention: str) -> OptimizerCase:
    """1-3 parameters of ranks 1-4, the state absent (zeros) a third of the time, each hyperparameter sent or left
    to its default, Adam's t (required by deeplearning_ai, optional for cs231n), a learning-rate decay half the
    time."""
    rng = np.random.default_rng([seed, 13, len(optimizer), len(convention)])
    names = ["W1", "b1", "W2"] if convention == "deeplearning_ai" else ["w", "b", "gamma"]
    params, grads = {}, {}
    for name in names[: int(rng.integers(1, 4))]:
        shape = tuple(int(k) for k in rng.integers(1, 5, int(rng.integers(1, 5))))
        params[name], grads[f"d{name}"] = rng.normal(0, 1, shape), rng.normal(0, 1, shape)
    state_names = STATE_NAMES[(optimizer, convention)]
    state = None
    if state_names and rng.random() < 0.67:
        second = {"s", "cache"} | ({"v"} if (optimizer, convention) == ("adam", "cs231n") else set())
        state = {s: {f"d{n}": (rng.uniform(0, 1, P.shape) if s in second else rng.normal(0, 0.5, P.shape))
                     for n, P in params.items()} for s in state_names}
    hyper = {k: _hyper_value(rng, k) for k in DEFAULTS[(optimizer, convention)] if rng.random() < 0.5}
    t = None
    if optimizer == "adam":
        t = int(rng.integers(1, 20)) if convention == "deeplearning_ai" or rng.random() < 0.7 else None
        if convention == "cs231n" and t is not None and rng.random() < 0.2:
            t = 0
    return OptimizerCase(seed, optimizer, convention, params, grads, state, hyper, t, random_decay(rng),
                         convention == "cs231n" or rng.random() < 0.5)


def check_optimizer(case: OptimizerCase, body: dict, rtol: float = 1e-10) -> None:
    """A 200 of /v1/optimizer-step against torch.optim: the new params and state, t as used, the learning rate
    used and Adam's corrected moments."""
    ref = case.reference()
    assert set(body) == {"params", "state", "t", "learning_rate", *ref.extras}, sorted(body)
    assert body["t"] == ref.t
    assert_close(body["learning_rate"], ref.learning_rate, "learning_rate", 1e-14, 0.0)
    assert set(body["params"]) == set(ref.params)
    for name, P in ref.params.items():
        assert_close(body["params"][name], P, f"params.{name}", rtol)
    groups = [("state", ref.state)] + [(e, {None: v}) for e, v in ref.extras.items()]
    for top, by_name in groups:
        got = body[top] if top == "state" else {None: body[top]}
        assert set(got) == set(by_name), f"{top}: {sorted(got)}"
        for s, arrays in by_name.items():
            assert set(got[s]) == set(arrays), f"{top}.{s}: {sorted(got[s])}"
            for g, a in arrays.items():
                assert_close(got[s][g], a, f"{top}.{s or ''}.{g}", rtol)
