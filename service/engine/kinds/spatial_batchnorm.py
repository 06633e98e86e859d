"""Spatial batch normalisation: batch normalisation per channel over the examples and pixels (cs231n's
``spatial_batchnorm_forward`` / ``_backward``, PyTorch's BatchNorm2d).

Shapes (engine, examples first): x, out, dout (m, C, H, W); gamma, beta, mean, var, running statistics
(1, C, 1, 1). N = m H W entries per channel.

    train:  mu = (1/N) sum over i, h, w of x,  var = (1/N) sum (x - mu)^2 (biased),  xhat = (x - mu) / sqrt(var + eps),
            out = gamma xhat + beta;  running = momentum running + (1 - momentum) batch (mean and var)
    test:   xhat = (x - running_mean) / sqrt(running_var + eps),  out = gamma xhat + beta
    backward (train): dx = (gamma / (N sigma)) (N dout - sum dout - xhat sum (dout xhat)), sums over i, h, w
            dgamma = sum over i, h, w of dout xhat,  dbeta = sum over i, h, w of dout
    backward (test):  dx = dout gamma / sqrt(running_var + eps)
"""

from __future__ import annotations

import numpy as np

from service.engine.kinds.base import Checked, Formulas, Hyper, InputStory, Kind, Price, ShapeError, State, register
from service.engine.kinds.norms import normalise
from service.engine.kinds.windows import (channel_scale_and_shift, check_per_channel, image_text, per_channel,
                                          per_channel_back)

AXES = (0, 2, 3)


def forward(x, params, hyper, state):
    """x (m, C, H, W) -> out (m, C, H, W) and the cache."""
    gamma, beta, eps = params["gamma"], params["beta"], hyper["eps"]
    if hyper["mode"] == "train":
        xhat, mean, var, std = normalise(x, axis=AXES, eps=eps)
        cache = ("train", xhat, std, gamma, mean, var)
    else:
        std = np.sqrt(state["running_var"] + eps)
        xhat = (x - state["running_mean"]) / std
        cache = ("test", xhat, std, gamma, state["running_mean"], state["running_var"])
    return gamma * xhat + beta, cache


def backward(dout, cache):
    """dout (m, C, H, W) -> dx (m, C, H, W), {gamma, beta: (1, C, 1, 1)}."""
    mode, xhat, std, gamma = cache[:4]
    dbeta = dout.sum(axis=AXES, keepdims=True)
    dgamma = (dout * xhat).sum(axis=AXES, keepdims=True)
    if mode == "test":
        return dout * (gamma / std), {"gamma": dgamma, "beta": dbeta}
    N = dout.size // dout.shape[1]
    dx = (gamma / (N * std)) * (N * dout - dbeta - xhat * dgamma)
    return dx, {"gamma": dgamma, "beta": dbeta}


def new_state(cache, hyper, state):
    """running = momentum running + (1 - momentum) batch, in train mode; unchanged in test mode."""
    if cache[0] == "test":
        return dict(state)
    mean, var, p = cache[4], cache[5], hyper["momentum"]
    return {"running_mean": p * state["running_mean"] + (1 - p) * mean,
            "running_var": p * state["running_var"] + (1 - p) * var}


def check(in_shape, params, hyper, layouts, where: str, source: str) -> Checked:
    """gamma, beta and the running statistics: one entry per channel; test mode needs the statistics."""
    C = in_shape[0]
    errors = check_per_channel(("gamma", "beta", "running_mean", "running_var"), C, params, layouts, source)
    if hyper["mode"] == "test":
        errors += [ShapeError(name, f"mode test normalises with the running statistics: send {name} (the value "
                                    f"training left, one entry per channel), or use mode train",
                              "missing_running_statistics")
                   for name in ("running_mean", "running_var") if params.get(name) is None]
    return Checked(tuple(in_shape), tuple(errors))


def source_text(where: str, params, out_shape, layouts) -> str:
    return f"{where} keeps its input's {image_text(out_shape, layouts)}"


def price(in_shape, out_shape, params, hyper, m: int) -> Price:
    n = int(np.prod(in_shape)) * m
    return Price(work=16 * n, stored=4 * n, reads=4 * in_shape[0], forward_work=6 * n)


def explain_input(h: int, params, hyper) -> InputStory:
    n = h + 1
    if hyper["mode"] == "test":
        return InputStory(
            reason=f"A{h} reaches the cost only through layer {n}'s spatial batch normalisation with the running "
                   f"statistics (constants here): ",
            rule=f"dA{h} = dZ{n} gamma{n} / sqrt(running_var + eps), per channel",
            latex=r"dA^{[l]} = dZ^{[l+1]} \frac{\gamma^{[l+1]}}{\sqrt{\sigma^2_{run} + \epsilon}}",
            values={f"gamma{n}": params["gamma"]})
    return InputStory(
        reason=f"A{h} reaches the cost only through layer {n}'s spatial batch normalisation, whose mean and "
               f"variance per channel over the examples and pixels depend on every entry of that channel, so each "
               f"entry's gradient gets two more terms (N = m H W): ",
        rule=f"dA{h} = (gamma{n} / (N sigma)) (N dZ{n} - sum dZ{n} - xhat sum (dZ{n} xhat)), sums over i, h, w",
        latex=r"dA^{[l]} = \frac{\gamma^{[l+1]}}{N\sigma}\left(N\,dZ^{[l+1]} - \sum_{i,h,w} dZ^{[l+1]} - "
              r"\hat{x}\sum_{i,h,w} dZ^{[l+1]}\hat{x}\right)",
        values={f"gamma{n}": params["gamma"]})


_FORMS = "(C,), or (1, C, 1, 1) with NCHW, (1, 1, 1, C) with NHWC"

SPATIAL_BATCHNORM = register(Kind(
    name="spatial_batchnorm",
    description="Batch normalisation of images per channel over the examples and pixels (cs231n's "
                "spatial_batchnorm_forward, PyTorch's BatchNorm2d): out = gamma (x - mean) / sqrt(var + eps) + beta.",
    input_rank=3,
    params=channel_scale_and_shift("over the examples and pixels", _FORMS),
    hypers=(
        Hyper("eps", "Added to the variance before the square root.", "float", 1e-5, gt=0),
        Hyper("momentum", "running = momentum running + (1 - momentum) batch.", "float", 0.9, ge=0, le=1),
        Hyper("mode", "`train`: the batch's mean and (biased) variance per channel; `test`: the running statistics, "
                      "which must then be sent.", "choice", "train", choices=("train", "test")),
    ),
    states=(
        State("running_mean", f"The running mean per channel, {_FORMS}; default zeros. Returned updated in train "
                              f"mode, under `state`.", ranks=(1, 4), initial=lambda n: np.zeros((1, n, 1, 1)),
              to_engine=per_channel, to_wire=per_channel_back),
        State("running_var", f"The running variance per channel, {_FORMS}; default ones. Returned updated in train "
                             f"mode.", ranks=(1, 4), initial=lambda n: np.ones((1, n, 1, 1)), to_engine=per_channel,
              to_wire=per_channel_back),
    ),
    forward=forward,
    backward=backward,
    check=check,
    source_text=source_text,
    price=price,
    formulas=Formulas(
        forward="out = gamma xhat + beta, xhat = (x - mean) / sqrt(var + eps), mean and biased var per channel over "
                "the examples and pixels (train) or the running statistics (test)",
        forward_latex=r"\hat{x}_{ic hw} = \frac{x_{ichw} - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}},\quad "
                      r"y = \gamma_c \hat{x} + \beta_c",
        backward="dx = (gamma / (N sigma)) (N dout - sum dout - xhat sum(dout xhat)), sums per channel over the "
                 "N = m H W entries, in train mode; dout gamma / sqrt(running_var + eps) in test mode",
        backward_latex=r"dx = \frac{\gamma}{N\sigma}\left(N\,dy - \sum_{i,h,w} dy - \hat{x}\sum_{i,h,w} dy\,"
                       r"\hat{x}\right)",
        grads={"gamma": ("dgamma = sum over examples and pixels of dout xhat, per channel",
                         r"d\gamma_c = \sum_{i,h,w} dy\,\hat{x}"),
               "beta": ("dbeta = sum over examples and pixels of dout, per channel", r"d\beta_c = \sum_{i,h,w} dy")},
    ),
    mistakes=(),
    new_state=new_state,
    # Per channel as 1-D (C,) (sent back in gamma's shape); xhat (m, C, H, W) like the activations.
    cache_values=lambda cache: {"xhat": cache[1], "mean": cache[4].reshape(-1), "var": cache[5].reshape(-1),
                                "std": cache[2].reshape(-1)},
    explain_input=explain_input,
    default_activation="linear",
    notes=("In train mode the response's `state` holds the updated running statistics.",),
))
