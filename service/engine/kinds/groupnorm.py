"""Group normalisation: per example, over each group of C/G channels and their pixels (cs231n's
``spatial_groupnorm_forward`` / ``_backward``, PyTorch's group_norm).

Shapes (engine, examples first): x, out, dout (m, C, H, W); gamma, beta (1, C, 1, 1); mean, var, sigma (m, G)
per example and group. K = (C / G) H W entries per group.

    forward:   mu, var over each example's group (biased),  xhat = (x - mu) / sqrt(var + eps),  out = gamma xhat + beta
    backward:  g = dout gamma,  dx = (1 / (K sigma)) (K g - sum g - xhat sum (g xhat)), sums over the group
               dgamma = sum over examples and pixels of dout xhat,  dbeta = sum over examples and pixels of dout
"""

from __future__ import annotations

import numpy as np

from service.engine.kinds.base import Checked, Formulas, Hyper, InputStory, Kind, Price, ShapeError, register
from service.engine.kinds.norms import normalise
from service.engine.kinds.windows import channel_scale_and_shift, check_per_channel, image_text

AXES = (0, 2, 3)


def forward(x, params, hyper, state):
    """x (m, C, H, W) -> out (m, C, H, W) and the cache (xhat, sigma, gamma, mean, var, G)."""
    m, G = x.shape[0], hyper["groups"]
    xhat, mean, var, std = normalise(x.reshape(m, G, -1), axis=2, eps=hyper["eps"])
    xhat = xhat.reshape(x.shape)
    return params["gamma"] * xhat + params["beta"], (xhat, std, params["gamma"], mean, var, G)


def backward(dout, cache):
    """dout (m, C, H, W) -> dx (m, C, H, W), {gamma, beta: (1, C, 1, 1)}."""
    xhat, std, gamma, _, _, G = cache
    m = dout.shape[0]
    g = (dout * gamma).reshape(m, G, -1)
    xg = xhat.reshape(m, G, -1)
    K = g.shape[2]
    dx = (1.0 / (K * std)) * (K * g - g.sum(axis=2, keepdims=True) - xg * (g * xg).sum(axis=2, keepdims=True))
    return dx.reshape(dout.shape), {"gamma": (dout * xhat).sum(axis=AXES, keepdims=True),
                                    "beta": dout.sum(axis=AXES, keepdims=True)}


def check(in_shape, params, hyper, layouts, where: str, source: str) -> Checked:
    """G must divide C; gamma, beta one per channel (cs231n's (1, C, 1, 1) accepted in both layouts)."""
    C, G = in_shape[0], hyper["groups"]
    errors = check_per_channel(("gamma", "beta"), C, params, layouts, source, extra=((1, C, 1, 1),))
    if C % G:
        divisors = [d for d in range(1, C + 1) if C % d == 0]
        shown = ", ".join(map(str, divisors[:12])) + (", ..." if len(divisors) > 12 else "")
        errors.append(ShapeError("groups", f"groups G = {G} does not divide the input's {C} channels (because "
                                           f"{source}): use a divisor of {C} ({shown})", "groups_mismatch"))
    return Checked(tuple(in_shape), tuple(errors))


def source_text(where: str, params, out_shape, layouts) -> str:
    return f"{where} keeps its input's {image_text(out_shape, layouts)}"


def price(in_shape, out_shape, params, hyper, m: int) -> Price:
    n = int(np.prod(in_shape)) * m
    return Price(work=20 * n, stored=5 * n, reads=2 * in_shape[0], forward_work=7 * n)


def explain_input(h: int, params, hyper) -> InputStory:
    n = h + 1
    return InputStory(
        reason=f"A{h} reaches the cost only through layer {n}'s group normalisation, whose mean and variance over "
               f"each example's group of channels and their pixels depend on every entry of the group "
               f"(K = (C/G) H W entries): ",
        rule=f"dA{h} = (1 / (K sigma)) (K g - sum g - xhat sum (g xhat)) with g = dZ{n} gamma{n}, sums over the group",
        latex=r"dA^{[l]} = \frac{1}{K\sigma}\left(K g - \sum_{group} g - \hat{x}\sum_{group} g\,\hat{x}\right),\ "
              r"g = dZ^{[l+1]}\gamma^{[l+1]}",
        values={f"gamma{n}": params["gamma"]})


GROUPNORM = register(Kind(
    name="groupnorm",
    description="Group normalisation (cs231n's spatial_groupnorm_forward, PyTorch's group_norm): per example, over "
                "each group of C/G channels and their pixels: out = gamma (x - mean) / sqrt(var + eps) + beta.",
    input_rank=3,
    params=channel_scale_and_shift("per example over its group of channels and their pixels",
                                   "(C,) or (1, C, 1, 1) (cs231n's), or (1, 1, 1, C) with NHWC"),
    hypers=(
        Hyper("groups", "G, the number of groups; it must divide the channels C.", "int", ge=1),
        Hyper("eps", "Added to the variance before the square root.", "float", 1e-5, gt=0),
    ),
    states=(),
    forward=forward,
    backward=backward,
    check=check,
    source_text=source_text,
    price=price,
    formulas=Formulas(
        forward="out = gamma xhat + beta, xhat = (x - mean) / sqrt(var + eps), mean and var per example over each "
                "group of C/G channels and their pixels",
        forward_latex=r"\hat{x}_{i,g} = \frac{x_{i,g} - \mu_{i,g}}{\sqrt{\sigma_{i,g}^2 + \epsilon}},\quad "
                      r"y = \gamma_c \hat{x} + \beta_c",
        backward="g = dout gamma; dx = (1 / (K sigma)) (K g - sum g - xhat sum(g xhat)), sums over each example's "
                 "group of K = (C/G) H W entries",
        backward_latex=r"dx = \frac{1}{K\sigma}\left(K g - \sum_{group} g - \hat{x}\sum_{group} g\,\hat{x}\right),"
                       r"\ g = dy\,\gamma",
        grads={"gamma": ("dgamma = sum over examples and pixels of dout xhat, per channel",
                         r"d\gamma_c = \sum_{i,h,w} dy\,\hat{x}"),
               "beta": ("dbeta = sum over examples and pixels of dout, per channel", r"d\beta_c = \sum_{i,h,w} dy")},
    ),
    mistakes=(),
    new_state=None,
    # Per example and group as (m, G) (neither per channel nor shaped like the activations: sent back as it is);
    # xhat (m, C, H, W) like the activations.
    cache_values=lambda cache: {"xhat": cache[0], "mean": cache[3].reshape(cache[3].shape[:2]),
                                "var": cache[4].reshape(cache[4].shape[:2]), "std": cache[1].reshape(cache[1].shape[:2])},
    explain_input=explain_input,
    default_activation="linear",
))
