"""Batch normalisation over the examples, per feature (cs231n's ``batchnorm_forward`` / ``_backward_alt``).

Shapes (features first): x, out, dout (D, m); gamma, beta, mean, var, running statistics (D, 1).

    train:  mu = (1/m) sum_i x,  var = (1/m) sum_i (x - mu)^2 (biased),  xhat = (x - mu) / sqrt(var + eps),
            out = gamma xhat + beta;  running = momentum running + (1 - momentum) batch (mean and var)
    test:   xhat = (x - running_mean) / sqrt(running_var + eps),  out = gamma xhat + beta
    backward (train, the compact form):
            dx = (gamma / (m sigma)) (m dout - sum_i dout - xhat sum_i (dout xhat)),  sigma = sqrt(var + eps)
            dgamma = sum_i dout xhat,  dbeta = sum_i dout
    backward (test): dx = dout gamma / sqrt(running_var + eps)

The compact form needs no division by (x - mu): for m = 1 (xhat = 0) and for a constant feature (var = 0,
sigma = sqrt(eps)) it gives dx = 0 exactly, never NaN.
"""

from __future__ import annotations

import numpy as np

from service.engine.kinds.base import (Checked, Formulas, Hyper, InputStory, Kind, Mistake, Price, ShapeError, State,
                                       as_sent, column, register)
from service.engine.kinds.norms import normalise, same_shape, scale_and_shift, source_text


def forward(x, params, hyper, state):
    """x (D, m) -> out (D, m) and the cache."""
    gamma, beta, eps = params["gamma"], params["beta"], hyper["eps"]
    if hyper["mode"] == "train":
        xhat, mean, var, std = normalise(x, axis=1, eps=eps)
        cache = ("train", xhat, std, gamma, mean, var)
    else:
        std = np.sqrt(state["running_var"] + eps)
        xhat = (x - state["running_mean"]) / std
        cache = ("test", xhat, std, gamma, state["running_mean"], state["running_var"])
    return gamma * xhat + beta, cache


def backward(dout, cache):
    """dout (D, m) -> dx (D, m), {gamma, beta: (D, 1)}."""
    mode, xhat, std, gamma = cache[:4]
    dbeta = dout.sum(axis=1, keepdims=True)
    dgamma = (dout * xhat).sum(axis=1, keepdims=True)
    if mode == "test":
        return dout * (gamma / std), {"gamma": dgamma, "beta": dbeta}
    m = dout.shape[1]
    dx = (gamma / (m * std)) * (m * dout - dbeta - xhat * dgamma)
    return dx, {"gamma": dgamma, "beta": dbeta}


def new_state(cache, hyper, state):
    """running = momentum running + (1 - momentum) batch, in train mode; unchanged in test mode."""
    if cache[0] == "test":
        return dict(state)
    mean, var, p = cache[4], cache[5], hyper["momentum"]
    return {"running_mean": p * state["running_mean"] + (1 - p) * mean,
            "running_var": p * state["running_var"] + (1 - p) * var}


def _constant_stats_backward(dout, cache):
    """The mistake: dx = dout gamma / sigma, as if the batch mean and variance did not depend on x."""
    _, xhat, std, gamma = cache[:4]
    return dout * (gamma / std), {"gamma": (dout * xhat).sum(axis=1, keepdims=True),
                                  "beta": dout.sum(axis=1, keepdims=True)}


def _unbiased_forward(x, params, hyper, state):
    """The mistake: the unbiased variance (1/(m-1)) in train mode."""
    m = x.shape[1]
    mean = x.mean(axis=1, keepdims=True)
    centred = x - mean
    var = (centred * centred).sum(axis=1, keepdims=True) / (m - 1)
    std = np.sqrt(var + hyper["eps"])
    xhat = centred / std
    return params["gamma"] * xhat + params["beta"], ("train", xhat, std, params["gamma"], mean, var)


def _wrong_axis_backward(dout, cache):
    """The mistake: dgamma and dbeta summed over the features instead of the examples ((1, m), not (D, 1))."""
    dx, _ = backward(dout, cache)
    xhat = cache[1]
    return dx, {"gamma": (dout * xhat).sum(axis=0, keepdims=True), "beta": dout.sum(axis=0, keepdims=True)}


def explain_input(h: int, params, hyper) -> InputStory:
    n = h + 1
    if hyper["mode"] == "test":
        return InputStory(
            reason=f"A{h} reaches the cost only through layer {n}'s batch normalisation with the running statistics "
                   f"(constants here), Z{n} = gamma{n} (A{h} - running_mean) / sqrt(running_var + eps) + beta{n}: ",
            rule=f"dA{h} = dZ{n} gamma{n} / sqrt(running_var + eps)",
            latex=r"dA^{[l]} = dZ^{[l+1]} \frac{\gamma^{[l+1]}}{\sqrt{\sigma^2_{run} + \epsilon}}",
            values={f"gamma{n}": params["gamma"]})
    return InputStory(
        reason=f"A{h} reaches the cost only through layer {n}'s batch normalisation, Z{n} = gamma{n} xhat + beta{n}, "
               f"whose mean and variance over the examples depend on every example of A{h}, so each example's "
               f"gradient gets two more terms: ",
        rule=f"dA{h} = (gamma{n} / (m sigma)) (m dZ{n} - sum_i dZ{n} - xhat sum_i (dZ{n} xhat))",
        latex=r"dA^{[l]} = \frac{\gamma^{[l+1]}}{m\sigma}\left(m\,dZ^{[l+1]} - \sum_i dZ^{[l+1]} - "
              r"\hat{x}\sum_i dZ^{[l+1]}\hat{x}\right)",
        values={f"gamma{n}": params["gamma"]})


def check(in_shape, params, hyper, layouts, where: str, source: str) -> Checked:
    """gamma, beta and the running statistics per feature, running_var >= 0; test mode needs the running
    statistics."""
    checked = same_shape(in_shape, params, hyper, layouts, where, source, extra=("running_mean", "running_var"))
    errors = checked.errors
    var = params.get("running_var")
    if var is not None and not any(e.field == "running_var" for e in errors) and (var < 0).any():
        # A negative variance would make sqrt(running_var + eps) NaN (or divide by zero) in test mode, reported as
        # an overflow; no training leaves one.
        i = int(np.argmax(var.reshape(-1) < 0))
        omit = " (or leave it out: it starts at ones)" if hyper["mode"] == "train" else ""
        errors += (ShapeError("running_var", f"running_var holds variances, which are >= 0, but entry {i} is "
                                             f"{float(var.reshape(-1)[i]):g}: send the running variance training "
                                             f"left{omit}", "value_domain"),)
    missing = [name for name in ("running_mean", "running_var") if params.get(name) is None]
    if hyper["mode"] == "test" and missing:
        errors += tuple(
            ShapeError(name, f"mode test normalises with the running statistics: send {name} (the value training "
                             f"left, one entry per feature), or use mode train", "missing_running_statistics")
            for name in missing)
    return Checked(checked.out_shape, errors)


def price(in_shape, out_shape, params, hyper, m: int) -> Price:
    n = in_shape[0] * m
    return Price(work=16 * n, stored=4 * n, reads=4 * in_shape[0], forward_work=6 * n)


def _train_only(hyper) -> bool:
    return hyper["mode"] == "train"


BATCHNORM = register(Kind(
    name="batchnorm",
    description="Batch normalisation over the examples, per feature (cs231n's batchnorm_forward): "
                "out = gamma (x - mean) / sqrt(var + eps) + beta.",
    input_rank=1,
    params=scale_and_shift("over the examples"),
    hypers=(
        Hyper("eps", "Added to the variance before the square root.", "float", 1e-5, gt=0),
        Hyper("momentum", "running = momentum running + (1 - momentum) batch.", "float", 0.9, ge=0, le=1),
        Hyper("mode", "`train`: the batch's mean and (biased) variance; `test`: the running statistics, which "
                      "must then be sent.", "choice", "train", choices=("train", "test")),
    ),
    states=(
        State("running_mean", "The running mean (D,) or (D, 1); default zeros. Returned updated in train mode, under "
                              "`state`.", ranks=(1, 2), initial=lambda n: np.zeros((n, 1)), to_engine=column,
              to_wire=as_sent),
        State("running_var", "The running variance (D,) or (D, 1); default ones. Returned updated in train mode.",
              ranks=(1, 2), initial=lambda n: np.ones((n, 1)), to_engine=column, to_wire=as_sent),
    ),
    forward=forward,
    backward=backward,
    check=check,
    source_text=source_text,
    price=price,
    formulas=Formulas(
        forward="out = gamma xhat + beta, xhat = (x - mean) / sqrt(var + eps), mean and biased var over the examples "
                "(train) or the running statistics (test)",
        forward_latex=r"\hat{x} = \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}},\quad y = \gamma \hat{x} + \beta",
        backward="dx = (gamma / (m sigma)) (m dout - sum dout - xhat sum(dout xhat)) in train mode; "
                 "dout gamma / sqrt(running_var + eps) in test mode",
        backward_latex=r"dx = \frac{\gamma}{m\sigma}\left(m\,dy - \sum_i dy - \hat{x}\sum_i dy\,\hat{x}\right)",
        grads={"gamma": ("dgamma = sum over examples of dout xhat", r"d\gamma = \sum_i dy\,\hat{x}"),
               "beta": ("dbeta = sum over examples of dout", r"d\beta = \sum_i dy")},
    ),
    mistakes=(
        Mistake("batchnorm_constant_statistics", "batchnorm's dx taken as dout gamma / sigma: the batch mean and "
                "variance treated as constants", "layer {layer} (batchnorm): dx = dout * gamma / sigma treats the "
                "batch mean and variance as constants; they depend on x, which adds the terms -sum(dout) and "
                "-xhat sum(dout xhat) (divided by m)", backward=_constant_stats_backward, applies=_train_only),
        Mistake("batchnorm_unbiased_variance", "batchnorm used the unbiased variance (1/(m-1)) in training",
                "layer {layer} (batchnorm): the variance was divided by m - 1; batch normalisation uses the biased "
                "variance, divided by m", forward=_unbiased_forward, applies=_train_only),
        Mistake("batchnorm_grads_wrong_axis", "dgamma and dbeta summed over the features instead of the examples",
                "layer {layer} (batchnorm): dgamma and dbeta were summed over the features; they sum over the "
                "examples (one entry per feature)", backward=_wrong_axis_backward, grads_only=True),
    ),
    new_state=new_state,
    cache_values=lambda cache: {"xhat": cache[1], "mean": cache[4], "var": cache[5], "std": cache[2]},
    explain_input=explain_input,
    default_activation="linear",
    notes=("In train mode the response's `state` holds the updated running statistics.",),
))
