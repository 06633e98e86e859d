"""Independent reference for the image kinds: torch float64 autodiff of seeded random image networks, in both
image layouts, and direct (loop) computations of max pooling's two tie policies.

Nothing here imports the service: the oracle shares only the wire contract (shapes, layouts, conventions) with it.
Inside the oracle images are NCHW (m, C, H, W), conv weights (F, C, kh, kw), vectors features first (n, m);
``ImageCase.request`` renders the wire body and ``ImageCase.expected`` every response key in the wire's form:

    image_layout NHWC   images (m, H, W, C), conv W (kh, kw, C, F)
    layout examples_first   (units, m) matrices as (m, units)
    per_example         dA_l and dZ_l times m (no 1/m); mean: dJ/dX for every X
    flatten             each example's features in the layout's order: (C, H, W) or (H, W, C)
    maxpool ties first  torch's max_pool2d (the first maximum in row-major order of the window); ties all: every
                        entry equal to the maximum gets the window's whole gradient (``maxpool_all_backward``)
    spatial batchnorm   torch's batch_norm in training mode; its running statistics updated cs231n's way,
                        momentum r + (1 - momentum) batch with the biased variance (computed here directly)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tests.oracle import HIDDEN_ACTIVATIONS, PAIRINGS, torch_activation

F64 = torch.float64
IMAGE_LAYOUTS = ("NCHW", "NHWC")
LAYOUTS = ("features_first", "examples_first")
CONVENTIONS = ("per_example", "mean")
SATURATING_LIMIT = 6.0  # as tests/oracle.py: sigmoid/tanh derivatives from their outputs stay exact below it


def _t(a, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=F64).requires_grad_(grad)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


# --- max pooling, directly ----------------------------------------------------------------------------------------

def maxpool_windows(shape, size, stride):
    """Every window of an (m, C, H, W) pooling: yields (i, c, r, s, rows slice, cols slice)."""
    m, C, H, W = shape
    (ph, pw), (sh, sw) = _pair(size), _pair(stride)
    for i in range(m):
        for c in range(C):
            for r in range((H - ph) // sh + 1):
                for s in range((W - pw) // sw + 1):
                    yield i, c, r, s, slice(r * sh, r * sh + ph), slice(s * sw, s * sw + pw)


def maxpool_direct(x: np.ndarray, dout: np.ndarray, size, stride, ties: str) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling by loops over the windows: the output, and dx for ``ties`` ``first`` (the first maximum in
    row-major order of the window gets the gradient, cs231n's argmax) or ``all`` (every entry equal to the maximum
    gets all of it, deeplearning.ai's create_mask_from_window)."""
    out = np.zeros(dout.shape)
    dx = np.zeros(x.shape)
    for i, c, r, s, rows, cols in maxpool_windows(x.shape, size, stride):
        window = x[i, c, rows, cols]
        out[i, c, r, s] = window.max()
        if ties == "all":
            mask = window == window.max()
        else:
            mask = np.zeros(window.shape, dtype=bool)
            mask[np.unravel_index(int(np.argmax(window)), window.shape)] = True
        dx[i, c, rows, cols] += mask * dout[i, c, r, s]
    return out, dx


class _MaxPoolAll(torch.autograd.Function):
    """torch's max pooling forward with the ``all`` tie policy's backward, computed directly."""

    @staticmethod
    def forward(ctx, x, size, stride):
        ctx.save_for_backward(x)
        ctx.size, ctx.stride = size, stride
        return F.max_pool2d(x, size, stride)

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved_tensors
        _, dx = maxpool_direct(x.detach().numpy(), dout.detach().numpy(), ctx.size, ctx.stride, "all")
        return torch.from_numpy(dx), None, None


# --- a random image network -------------------------------------------------------------------------------------

@dataclass
class ImageCase:
    """One random request. ``layers``: oracle specs ({"type", params in the oracle's form, hyperparameters,
    ``sent``: how each array goes on the wire}); X (m, C, H, W); Y (n_L, m) features first."""

    seed: int
    m: int
    layers: list[dict]
    X: np.ndarray
    Y: np.ndarray
    cost: str
    image_layout: str
    layout: str
    intermediates: str
    l2: float = 0.0
    keep_prob: float | None = None
    masks: list[np.ndarray] | None = None  # the oracle's form, one per hidden layer
    include_caches: bool = False
    weight_in_out: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def L(self) -> int:
        return len(self.layers)

    # wire forms
    def wire(self, a: np.ndarray) -> np.ndarray:
        """A per-example array of the oracle (images (m, C, H, W), vectors (n, m)) as the wire holds it."""
        if a.ndim == 4:
            return a.transpose(0, 2, 3, 1) if self.image_layout == "NHWC" else a
        return a.T if self.layout == "examples_first" and a.ndim == 2 else a

    def wire_param(self, spec: dict, name: str, a: np.ndarray) -> np.ndarray:
        """A parameter (or its gradient, or a running statistic) of the oracle as the request sends it."""
        if spec["type"] == "conv2d" and name == "W":
            return a.transpose(2, 3, 1, 0) if self.image_layout == "NHWC" else a
        if spec["type"] == "dense" and name == "W":
            return a.T if self.weight_in_out else a
        return a.reshape(spec["sent"][name])

    def request(self) -> dict:
        """The wire body (numpy arrays, C-contiguous, for orjson)."""
        c = np.ascontiguousarray
        layers = []
        for spec in self.layers:
            body: dict[str, Any] = {"type": spec["type"], "activation": spec["activation"], **spec["hyper"]}
            for name, a in spec["params"].items():
                body[name] = c(self.wire_param(spec, name, a))
            for name, a in spec.get("state", {}).items():
                body[name] = c(self.wire_param(spec, name, a))
            layers.append(body)
        n_L = self.Y.shape[0]
        Y: Any = c(self.wire(self.Y)) if n_L > 1 or self.extra.get("y_matrix") else self.Y.reshape(-1)
        out: dict[str, Any] = {"layers": layers, "X": c(self.wire(self.X)), "Y": Y, "cost": self.cost,
                               "image_layout": self.image_layout, "layout": self.layout,
                               "intermediates": self.intermediates}
        if self.weight_in_out:
            out["weight_layout"] = "in_out"
        if self.l2:
            out["l2"] = self.l2
        if self.masks is not None:
            out["dropout"] = {"keep_prob": self.keep_prob, "masks": [c(self.wire(D)) for D in self.masks]}
        if self.include_caches:
            out["include_caches"] = True
        return out

    def expected(self) -> dict:
        return reference(self)


def _layer_forward(spec: dict, A: torch.Tensor, leaves: dict) -> torch.Tensor:
    """Z = the layer's kind applied to A (torch, NCHW / features first)."""
    kind, h = spec["type"], spec["hyper"]
    if kind == "conv2d":
        return F.conv2d(A, leaves["W"], leaves["b"], stride=_pair(h.get("stride", 1)), padding=_pair(h.get("pad", 0)))
    if kind in ("maxpool2d", "avgpool2d"):
        size = _pair(h["size"])
        stride = size if h.get("stride") is None else _pair(h["stride"])
        if kind == "avgpool2d":
            return F.avg_pool2d(A, size, stride)
        if h.get("ties", "first") == "all":
            return _MaxPoolAll.apply(A, size, stride)
        return F.max_pool2d(A, size, stride)
    if kind == "flatten":
        rows = A.permute(0, 2, 3, 1) if spec["channels_last"] else A
        return rows.reshape(A.shape[0], -1).T
    if kind == "spatial_batchnorm":
        if h.get("mode", "train") == "test":
            return F.batch_norm(A, _t(spec["state"]["running_mean"]), _t(spec["state"]["running_var"]),
                                leaves["gamma"], leaves["beta"], training=False, eps=h.get("eps", 1e-5))
        return F.batch_norm(A, None, None, leaves["gamma"], leaves["beta"], training=True, eps=h.get("eps", 1e-5))
    if kind == "groupnorm":
        return F.group_norm(A, h["groups"], leaves["gamma"], leaves["beta"], eps=h.get("eps", 1e-5))
    if kind == "dense":
        return leaves["W"] @ A + leaves["b"].reshape(-1, 1)
    raise KeyError(kind)


def _state(spec: dict, A: np.ndarray) -> dict | None:
    """cs231n's running statistics after one step in train mode (biased variance), the sent shapes."""
    if spec["type"] != "spatial_batchnorm":
        return None
    h = spec["hyper"]
    rm = spec.get("state", {}).get("running_mean", np.zeros(A.shape[1]))
    rv = spec.get("state", {}).get("running_var", np.ones(A.shape[1]))
    if h.get("mode", "train") == "test":
        return {"running_mean": rm, "running_var": rv}
    p = h.get("momentum", 0.9)
    return {"running_mean": p * rm + (1 - p) * A.mean(axis=(0, 2, 3)),
            "running_var": p * rv + (1 - p) * A.var(axis=(0, 2, 3))}


def _cost(case: ImageCase, ZL, AL, Y) -> torch.Tensor:
    m = case.m
    if case.cost == "binary_cross_entropy":
        return F.binary_cross_entropy_with_logits(ZL, Y, reduction="sum") / m
    if case.cost == "categorical_cross_entropy":
        return -(Y * F.log_softmax(ZL, dim=0)).sum() / m
    return 0.5 * ((AL - Y) ** 2).sum() / m


def _dAL(case: ImageCase, AL: torch.Tensor, Y: torch.Tensor) -> np.ndarray:
    if case.cost == "mean_squared_error":
        return AL.grad.numpy()
    leaf = AL.detach().clone().requires_grad_(True)
    if case.cost == "binary_cross_entropy":
        (-(Y * torch.log(leaf) + (1 - Y) * torch.log1p(-leaf)).sum() / case.m).backward()
    else:
        (-(Y * torch.log(leaf)).sum() / case.m).backward()
    return leaf.grad.numpy()


def forward_values(case: ImageCase) -> list[np.ndarray]:
    """Z_1..Z_L without gradients (rejection sampling)."""
    with torch.no_grad():
        A, out = _t(case.X), []
        for l, spec in enumerate(case.layers):
            Z = _layer_forward(spec, A, {k: _t(v) for k, v in spec["params"].items()})
            out.append(Z.numpy().copy())
            A = torch_activation(spec["activation"], Z, 0.01)
            if case.masks is not None and l < case.L - 1:
                A = A * _t(case.masks[l]) / case.keep_prob
    return out


def reference(case: ImageCase) -> dict:
    """Every response field the service returns for the case, in the wire's form: cost, AL, gradients, caches
    (when asked), state (for spatial batchnorm)."""
    X, Y = _t(case.X, grad=True), _t(case.Y)
    leaves = [{k: _t(v, grad=True) for k, v in spec["params"].items()} for spec in case.layers]
    Zs, Gs, As, states = [], [], [], []
    A = X
    for l, spec in enumerate(case.layers):
        Z = _layer_forward(spec, A, leaves[l])
        states.append(_state(spec, A.detach().numpy()))
        Z.retain_grad()
        G = torch_activation(spec["activation"], Z, 0.01)
        if G is Z:
            G = Z * 1.0  # a separate node, so that dA_l and dZ_l are both kept
        G.retain_grad()
        A = G * _t(case.masks[l]) / case.keep_prob if case.masks is not None and l < case.L - 1 else G
        Zs.append(Z)
        Gs.append(G)
        As.append(A)
    J = _cost(case, Zs[-1], Gs[-1], Y)
    if case.l2:
        J = J + case.l2 / (2 * case.m) * sum((lv["W"] * lv["W"]).sum() for lv in leaves if "W" in lv)
    J.backward()
    scale = float(case.m) if case.intermediates == "per_example" else 1.0
    grads = {}
    for name in ("W", "b", "gamma", "beta"):  # the keys' order: each parameter name across the layers
        for l, spec in enumerate(case.layers, start=1):
            if name in spec["params"]:
                grads[f"d{name}{l}"] = case.wire_param(spec, name, leaves[l - 1][name].grad.numpy())
    for l in range(1, case.L + 1):
        grads[f"dZ{l}"] = case.wire(Zs[l - 1].grad.numpy() * scale)
    grads["dA0"] = case.wire(X.grad.numpy() * scale)
    for l in range(1, case.L):
        grads[f"dA{l}"] = case.wire(Gs[l - 1].grad.numpy() * scale)
    grads[f"dA{case.L}"] = case.wire(_dAL(case, Gs[-1], Y) * scale)
    out: dict[str, Any] = {"cost": float(J.detach()), "AL": case.wire(Gs[-1].detach().numpy()), "gradients": grads}
    if case.include_caches:
        out["caches"] = {**{f"Z{l}": case.wire(Zs[l - 1].detach().numpy()) for l in range(1, case.L + 1)},
                         **{f"A{l}": case.wire(As[l - 1].detach().numpy()) for l in range(1, case.L + 1)}}
    state = {str(l): {k: case.wire_param(case.layers[l - 1], k, v) if k in case.layers[l - 1].get("state", {})
                      else v for k, v in s.items()}
             for l, s in enumerate(states, start=1) if s is not None}
    if state:
        out["state"] = state
    return out


# --- the generator ------------------------------------------------------------------------------------------------

def _channel_form(rng, C: int, image_layout: str) -> tuple[int, ...]:
    """How a per-channel array is sent: (C,) or the layout's broadcast shape."""
    return (C,) if rng.random() < 0.5 else ((1, 1, 1, C) if image_layout == "NHWC" else (1, C, 1, 1))


def _conv(rng, shape, image_layout):
    C, H, W = shape
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    ph, pw = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    kh, kw = min(kh, H + 2 * ph), min(kw, W + 2 * pw)
    sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    Fn = int(rng.integers(1, 5))
    hyper: dict[str, Any] = {}
    if (sh, sw) != (1, 1) or rng.random() < 0.3:
        hyper["stride"] = [sh, sw] if sh != sw or rng.random() < 0.5 else sh
    if (ph, pw) != (0, 0) or rng.random() < 0.3:
        hyper["pad"] = [ph, pw] if ph != pw or rng.random() < 0.5 else ph
    b_form = (Fn,) if rng.random() < 0.5 else (1, 1, 1, Fn)
    spec = {"type": "conv2d", "hyper": hyper, "activation": str(rng.choice(HIDDEN_ACTIVATIONS)),
            "params": {"W": rng.normal(0, 1, (Fn, C, kh, kw)) / np.sqrt(C * kh * kw),
                       "b": rng.normal(0, 0.3, Fn)}, "sent": {"b": b_form}}
    return spec, (Fn, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)


def _pool(rng, shape, kind):
    C, H, W = shape
    ph, pw = int(rng.integers(1, min(H, 3) + 1)), int(rng.integers(1, min(W, 3) + 1))
    hyper: dict[str, Any] = {"size": [ph, pw] if ph != pw or rng.random() < 0.5 else ph}
    sh, sw = ph, pw
    if rng.random() < 0.4:
        sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        hyper["stride"] = [sh, sw]
    if kind == "maxpool2d":
        hyper["ties"] = str(rng.choice(["first", "all"]))
    spec = {"type": kind, "hyper": hyper, "activation": "linear", "params": {}, "sent": {}}
    return spec, (C, (H - ph) // sh + 1, (W - pw) // sw + 1)


def _norm(rng, shape, kind, image_layout, m):
    C = shape[0]
    spec: dict[str, Any] = {"type": kind, "hyper": {}, "activation": str(rng.choice(["linear", "relu", "tanh"])),
                            "params": {"gamma": rng.normal(1, 0.3, C), "beta": rng.normal(0, 0.3, C)},
                            "sent": {"gamma": _channel_form(rng, C, image_layout),
                                     "beta": _channel_form(rng, C, image_layout)}}
    if rng.random() < 0.3:
        spec["hyper"]["eps"] = float(rng.choice([1e-3, 1e-4]))
    if kind == "groupnorm":
        spec["hyper"]["groups"] = int(rng.choice([d for d in range(1, C + 1) if C % d == 0]))
        if rng.random() < 0.3:
            spec["sent"]["gamma"] = (1, C, 1, 1)  # cs231n's shape, accepted in both layouts
    else:
        spec["hyper"]["momentum"] = float(np.round(rng.uniform(0.5, 0.99), 3))
        if rng.random() < 0.25:
            spec["hyper"]["mode"] = "test"
            spec["state"] = {"running_mean": rng.normal(0, 0.5, C), "running_var": rng.uniform(0.5, 2.0, C)}
        elif rng.random() < 0.3:
            spec["state"] = {"running_mean": rng.normal(0, 0.5, C), "running_var": rng.uniform(0.5, 2.0, C)}
        for name in spec.get("state", {}):
            spec["sent"][name] = _channel_form(rng, C, image_layout)
    return spec, shape


def _image_layers(rng, shape, image_layout, m) -> list[dict]:
    layers = []
    for _ in range(int(rng.integers(1, 4))):
        r = rng.random()
        C, H, W = shape
        if r < 0.4:
            spec, shape = _conv(rng, shape, image_layout)
        elif r < 0.62:
            spec, shape = _pool(rng, shape, "maxpool2d")
        elif r < 0.75:
            spec, shape = _pool(rng, shape, "avgpool2d")
        elif r < 0.87 and m * H * W > 1:
            spec, shape = _norm(rng, shape, "spatial_batchnorm", image_layout, m)
        else:
            spec, shape = _norm(rng, shape, "groupnorm", image_layout, m)
        layers.append(spec)
    return layers


def _labels(rng, cost: str, n_L: int, m: int) -> np.ndarray:
    if cost == "binary_cross_entropy":
        return rng.integers(0, 2, (n_L, m)).astype(np.float64)
    if cost == "categorical_cross_entropy":
        return np.eye(n_L)[:, rng.integers(0, n_L, m)]
    return rng.normal(0, 1, (n_L, m))


def random_image_case(seed: int) -> ImageCase:
    """A seeded random image network and request. The image layout, the layout and the convention are spread over
    the seed (seed % 2, (seed // 2) % 2, (seed // 4) % 2); the output pairing over seed // 8; the rest is drawn.
    About a third of the cases have integer-valued X, so that max pooling windows hold ties."""
    rng = np.random.default_rng(1000 + seed)
    image_layout, layout = IMAGE_LAYOUTS[seed % 2], LAYOUTS[(seed // 2) % 2]
    intermediates = CONVENTIONS[(seed // 4) % 2]
    out_act, cost = PAIRINGS[(seed // 8) % len(PAIRINGS)]
    m = 1 if rng.random() < 0.2 else int(rng.integers(2, 6))
    in_shape = (int(rng.integers(1, 4)), int(rng.integers(3, 10)), int(rng.integers(3, 10)))
    ties = rng.random() < 0.35
    n_L = int(rng.integers(2, 5)) if out_act == "softmax" or cost == "categorical_cross_entropy" else \
        int(rng.integers(1, 4))
    for attempt in range(200):
        layers = _image_layers(rng, in_shape, image_layout, m)
        shape = in_shape
        for spec in layers:
            shape = _shape_after(spec, shape)
        layers.append({"type": "flatten", "hyper": {}, "activation": "linear", "params": {}, "sent": {},
                       "channels_last": image_layout == "NHWC"})
        n = int(np.prod(shape))
        if rng.random() < 0.4:
            hidden = int(rng.integers(1, 5))
            layers.append(_dense(rng, n, hidden, str(rng.choice(HIDDEN_ACTIVATIONS))))
            n = hidden
        layers.append(_dense(rng, n, n_L, out_act))
        X = rng.integers(-2, 3, (m, *in_shape)).astype(np.float64) if ties else rng.normal(0, 1, (m, *in_shape))
        case = ImageCase(seed=seed, m=m, layers=layers, X=X, Y=_labels(rng, cost, n_L, m), cost=cost,
                         image_layout=image_layout, layout=layout, intermediates=intermediates,
                         l2=0.0 if rng.random() < 0.6 else float(rng.uniform(0.01, 0.5)),
                         include_caches=bool(rng.random() < 0.35), weight_in_out=bool(rng.random() < 0.25),
                         extra={"ties": ties, "y_matrix": bool(rng.random() < 0.5)})
        if rng.random() < 0.15:
            case.keep_prob = float(rng.choice([0.5, 0.8]))
            shapes = [z.shape for z in forward_values(case)[:-1]]
            case.masks = [(rng.random(s) < 0.7).astype(np.float64) for s in shapes]
        Zs = forward_values(case)
        if all(np.max(np.abs(Z)) <= SATURATING_LIMIT for Z, spec in zip(Zs, layers)
               if spec["activation"] in ("sigmoid", "tanh")):
            case.extra["attempts"] = attempt + 1
            return case
    raise RuntimeError(f"seed {seed}: no acceptable draw in 200 attempts")


def _dense(rng, n_in: int, n_out: int, activation: str) -> dict:
    vector = bool(rng.random() < 0.5)
    return {"type": "dense", "hyper": {}, "activation": activation,
            "params": {"W": rng.normal(0, 1, (n_out, n_in)) / np.sqrt(n_in), "b": rng.normal(0, 0.3, n_out)},
            "sent": {"b": (n_out,) if vector else (n_out, 1)}}


def _shape_after(spec: dict, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    C, H, W = shape
    h = spec["hyper"]
    if spec["type"] == "conv2d":
        Fn, _, kh, kw = spec["params"]["W"].shape
        (sh, sw), (ph, pw) = _pair(h.get("stride", 1)), _pair(h.get("pad", 0))
        return Fn, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    if spec["type"] in ("maxpool2d", "avgpool2d"):
        (ph, pw) = _pair(h["size"])
        (sh, sw) = (ph, pw) if h.get("stride") is None else _pair(h["stride"])
        return C, (H - ph) // sh + 1, (W - pw) // sw + 1
    return shape
