"""The fully connected layer: Z = W A_prev + b.

Shapes (features first, m examples): A_prev (n_in, m), W (n_out, n_in), b (n_out, 1), Z (n_out, m). The wire may
hold W as (n_in, n_out) (``weight_layout: in_out``, as cs231n's affine layer and Keras kernels do) and b as a
vector (n_out,); gradients go back in the form sent.

    forward:   Z = W A_prev + b
    backward:  dW = dZ A_prev^T,  db = sum over examples of dZ,  dA_prev = W^T dZ
"""

from __future__ import annotations

import numpy as np

from service.engine.kinds.base import (Checked, Formulas, InputStory, Kind, Layouts, Param, Price, ShapeError,
                                       as_sent, column, register, shape_text)


def _weights(sent, layouts: Layouts):
    """W as (n_out, n_in): the wire's (n_in, n_out) transposed with ``weight_layout: in_out`` (a view)."""
    return sent.T if layouts.weights_in_out else sent


def _weights_back(grad, sent, layouts: Layouts):
    return grad.T if layouts.weights_in_out else grad


def forward(x, params, hyper, state):
    """x (n_in, m) -> Z (n_out, m) and the cache (x, W)."""
    W = params["W"]
    Z = W @ x
    Z += params["b"]
    return Z, (x, W)


def backward(dZ, cache):
    """dZ (n_out, m) -> dA_prev (n_in, m), {W: (n_out, n_in), b: (n_out, 1)}."""
    x, W = cache
    dW = dZ @ x.T
    db = np.add.reduce(dZ, axis=1, keepdims=True)  # what dZ.sum(axis=1) calls, without its Python wrapper
    return W.T @ dZ, {"W": dW, "b": db}


def input_grad_bound(dZ, cache):
    """A bound on every |entry| of dA_prev = W^T dZ (backward's), n_out max|W| max|dZ|, when reading W and dZ
    twice costs less than reading dA_prev once (a wide input, as [12288, 20, ...]); None otherwise. Each entry is
    a sum of n_out products, each at most max|W| max|dZ|; rounding adds a relative (1 + u)^n_out, which the
    caller's margin covers. NaN when W or dZ holds one (numpy's max and min propagate it)."""
    x, W = cache
    if 2 * (W.size + dZ.size) >= x.size:
        return None
    return W.shape[0] * max(abs(float(W.max())), abs(float(W.min()))) * max(abs(float(dZ.max())),
                                                                           abs(float(dZ.min())))


def check(in_shape, params, hyper, layouts: Layouts, where: str, source: str) -> Checked:
    """W must take the input's n_in features; b must have W's n_out entries."""
    W, b = params["W"], params["b"]
    n_in = in_shape[0]
    in_out = layouts.weights_in_out
    n_out, n_w = (W.shape[1], W.shape[0]) if in_out else W.shape
    errors = []
    if n_w != n_in:
        other = "out_in" if layouts.weights_in_out else "in_out"
        if n_out == n_in:  # the transpose would chain: the other weight layout
            want = W.shape[::-1]
            errors.append(ShapeError("W", f"W is {shape_text(W.shape)} but needs {shape_text(want)}: did you mean "
                                          f"weight_layout {other}?"))
            # Read on as the other layout holds W, so that b and the layers after this one are checked against
            # the fix named here rather than reported as more mistakes.
            n_out, in_out = n_w, not in_out
        elif layouts.weights_in_out:
            errors.append(ShapeError("W", f"W is {shape_text(W.shape)}: it needs {n_in} rows because {source} "
                                          f"(weight_layout in_out holds W as (n_in, n_out))"))
        else:
            errors.append(ShapeError("W", f"W is {shape_text(W.shape)}: it needs {n_in} columns because {source}"))
    if b.shape not in ((n_out,), (n_out, 1)):
        side = "columns" if in_out else "rows"
        errors.append(ShapeError("b", f"b is {shape_text(b.shape)} but W has {n_out} {side}: send ({n_out}, 1) or "
                                      f"({n_out},)"))
    return Checked((n_out,), tuple(errors))


def source_text(where: str, params, out_shape, layouts: Layouts) -> str:
    in_out = layouts.weights_in_out
    if params["W"].shape[1 if in_out else 0] != out_shape[0]:
        in_out = not in_out  # check read W in the other layout (the fix it named)
    return f"{where}.W has {out_shape[0]} {'columns' if in_out else 'rows'}"


def price(in_shape, out_shape, params, hyper, m: int) -> Price:
    """From W's own size (the limits price a layer even when the chain is broken)."""
    weights = params["W"].size
    forward_work = weights * m
    return Price(work=3 * forward_work, stored=(in_shape[0] + 2 * out_shape[0]) * m, reads=weights,
                 forward_work=forward_work)


def explain_input(h: int, params, hyper) -> InputStory:
    return InputStory(
        reason=f"A{h} reaches the cost only through Z{h + 1} = W{h + 1} A{h} + b{h + 1}, so its gradient is what "
               f"flows back through W{h + 1}: ",
        rule=f"dA{h} = W{h + 1}^T dZ{h + 1}",
        latex=r"dA^{[l]} = W^{[l+1]T} dZ^{[l+1]}",
        values={f"W{h + 1}": params["W"]},
        through="the next layer, Z_(l+1) = W_(l+1) A_l + b_(l+1), so its gradient is the next layer's dZ sent back "
                "through the weights, W_(l+1)^T dZ_(l+1)",
        through_latex=r"\frac{\partial J}{\partial A^{[l]}} = W^{[l+1]T}\,\frac{\partial J}{\partial Z^{[l+1]}}")


DENSE = register(Kind(
    name="dense",
    description="Fully connected: Z = W A_prev + b.",
    input_rank=1,
    params=(
        Param("W", "Weights, (n_l, n_{l-1}) (weight_layout out_in, the default) or (n_{l-1}, n_l) (in_out); dW comes "
                   "back in the layout sent.", l2=True, ranks=(2,), to_engine=_weights, to_wire=_weights_back),
        Param("b", "Biases, a column (n_l, 1) or a vector (n_l,); db comes back in the same shape.", l2=False,
              ranks=(1, 2), to_engine=column, to_wire=as_sent),
    ),
    hypers=(),
    states=(),
    forward=forward,
    backward=backward,
    check=check,
    source_text=source_text,
    price=price,
    formulas=Formulas(
        forward="Z = W A_prev + b",
        forward_latex=r"Z^{[l]} = W^{[l]} A^{[l-1]} + b^{[l]}",
        backward="dA_prev = W^T dZ",
        backward_latex=r"dA^{[l-1]} = W^{[l]T} dZ^{[l]}",
        grads={"W": ("dW = (1/m) dZ A_prev^T (+ (lambda/m) W with l2)",
                     r"dW^{[l]} = \frac{1}{m} dZ^{[l]} A^{[l-1]T} + \frac{\lambda}{m} W^{[l]}"),
               "b": ("db = (1/m) sum over examples of dZ", r"db^{[l]} = \frac{1}{m}\sum_{i=1}^{m} dZ^{[l](i)}")},
    ),
    mistakes=(),
    new_state=None,
    cache_values=lambda cache: {},
    explain_input=explain_input,
    default_activation=None,
    input_grad_bound=input_grad_bound,
))
