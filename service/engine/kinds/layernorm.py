"""Layer normalisation over the features, per example (cs231n's ``layernorm_forward`` / ``_backward``).

Shapes (features first): x, out, dout (D, m); gamma, beta (D, 1); mean, var, sigma (1, m).

    forward:   mu = (1/D) sum_d x,  var = (1/D) sum_d (x - mu)^2,  xhat = (x - mu) / sqrt(var + eps),
               out = gamma xhat + beta
    backward:  g = dout gamma,  dx = (1/(D sigma)) (D g - sum_d g - xhat sum_d (g xhat)),
               dgamma = sum over examples of dout xhat,  dbeta = sum over examples of dout
"""

from __future__ import annotations

from service.engine.kinds import batchnorm
from service.engine.kinds.base import Formulas, Hyper, InputStory, Kind, Mistake, Price, register
from service.engine.kinds.norms import normalise, same_shape, scale_and_shift, source_text


def forward(x, params, hyper, state):
    """x (D, m) -> out (D, m) and the cache (xhat, sigma, gamma, mean, var)."""
    xhat, mean, var, std = normalise(x, axis=0, eps=hyper["eps"])
    return params["gamma"] * xhat + params["beta"], (xhat, std, params["gamma"], mean, var)


def backward(dout, cache):
    """dout (D, m) -> dx (D, m), {gamma, beta: (D, 1)}."""
    xhat, std, gamma = cache[:3]
    D = dout.shape[0]
    g = dout * gamma
    dx = (1.0 / (D * std)) * (D * g - g.sum(axis=0, keepdims=True) - xhat * (g * xhat).sum(axis=0, keepdims=True))
    return dx, {"gamma": (dout * xhat).sum(axis=1, keepdims=True), "beta": dout.sum(axis=1, keepdims=True)}


def _over_examples_forward(x, params, hyper, state):
    """The mistake: normalised over the examples (batchnorm's axis) instead of the features."""
    out, cache = batchnorm.forward(x, params, {**hyper, "mode": "train"}, state)
    return out, ("over_examples", cache)


def _over_examples_backward(dout, cache):
    return batchnorm.backward(dout, cache[1])


def explain_input(h: int, params, hyper) -> InputStory:
    n = h + 1
    return InputStory(
        reason=f"A{h} reaches the cost only through layer {n}'s layer normalisation, Z{n} = gamma{n} xhat + beta{n}, "
               f"whose mean and variance over each example's features depend on all of them: ",
        rule=f"dA{h} = (1 / (D sigma)) (D g - sum_d g - xhat sum_d (g xhat)) with g = dZ{n} gamma{n}",
        latex=r"dA^{[l]} = \frac{1}{D\sigma}\left(D g - \sum_d g - \hat{x}\sum_d g\,\hat{x}\right),\ "
              r"g = dZ^{[l+1]}\gamma^{[l+1]}",
        values={f"gamma{n}": params["gamma"]})


def price(in_shape, out_shape, params, hyper, m: int) -> Price:
    n = in_shape[0] * m
    return Price(work=18 * n, stored=4 * n, reads=2 * in_shape[0], forward_work=6 * n)


LAYERNORM = register(Kind(
    name="layernorm",
    description="Layer normalisation over the features, per example (cs231n's layernorm_forward): "
                "out = gamma (x - mean) / sqrt(var + eps) + beta.",
    input_rank=1,
    params=scale_and_shift("over the features, per example"),
    hypers=(Hyper("eps", "Added to the variance before the square root.", "float", 1e-5, gt=0),),
    states=(),
    forward=forward,
    backward=backward,
    check=same_shape,
    source_text=source_text,
    price=price,
    formulas=Formulas(
        forward="out = gamma xhat + beta, xhat = (x - mean) / sqrt(var + eps), mean and var over the features of "
                "each example",
        forward_latex=r"\hat{x}^{(i)} = \frac{x^{(i)} - \mu^{(i)}}{\sqrt{\sigma^{(i)2} + \epsilon}},\quad "
                      r"y = \gamma \hat{x} + \beta",
        backward="g = dout gamma; dx = (1 / (D sigma)) (D g - sum_d g - xhat sum_d (g xhat)), per example",
        backward_latex=r"dx = \frac{1}{D\sigma}\left(D g - \sum_d g - \hat{x}\sum_d g\,\hat{x}\right),\ g = dy\,\gamma",
        grads={"gamma": ("dgamma = (1/m) sum over examples of dZ xhat (dZ = dout per example)",
                         r"d\gamma = \frac{1}{m} \sum_i dZ\,\hat{x}"),
               "beta": ("dbeta = (1/m) sum over examples of dZ", r"d\beta = \frac{1}{m} \sum_i dZ")},
    ),
    mistakes=(
        Mistake("layernorm_wrong_axis", "layernorm normalised over the examples instead of the features",
                "layer {layer} (layernorm): the mean and variance were taken over the examples (batch "
                "normalisation's axis); layer normalisation takes them over each example's features",
                forward=_over_examples_forward, backward=_over_examples_backward),
    ),
    new_state=None,
    cache_values=lambda cache: {"xhat": cache[0], "mean": cache[3], "var": cache[4], "std": cache[1]},
    explain_input=explain_input,
    default_activation="linear",
))
