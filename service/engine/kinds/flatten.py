"""Flatten: an image batch into feature vectors, so that dense layers can follow.

Shapes: x (m, C, H, W) (engine, examples first) -> out (C H W, m) (vectors, features first). Each example's
features are in the request's image-layout order, so that a dense W that follows matches what the course
computes: (C, H, W) with ``image_layout: NCHW`` (PyTorch's flatten, cs231n's x.reshape(N, -1)), (H, W, C) with
``NHWC`` (Keras' Flatten, deeplearning.ai's reshape).

    forward:   out[:, i] = x[i] read in the layout's order
    backward:  dx[i] = dout[:, i] put back in the image's shape
"""

from __future__ import annotations

import numpy as np

from service.engine.kinds.base import Checked, Formulas, InputStory, Kind, Layouts, Price, register

Array = np.ndarray


def forward(x, params, hyper, state):
    """x (m, C, H, W) -> out (C H W, m), each column one example in the layout's order."""
    # Copies, never views of the neighbours' arrays: the network scales a layer's dx in place (dropout), and a
    # view of dout would change the dZ it already keeps.
    m, channels_last = x.shape[0], hyper.get("channels_last", False)
    rows = x.transpose(0, 2, 3, 1) if channels_last else x
    return np.array(rows.reshape(m, -1)).T, (x.shape, channels_last)


def backward(dout, cache):
    """dout (n, m) -> dx (m, C, H, W), a new array."""
    (m, C, H, W), channels_last = cache
    if channels_last:
        return np.array(dout.T.reshape(m, H, W, C).transpose(0, 3, 1, 2)), {}
    return np.array(dout.T.reshape(m, C, H, W)), {}


def engine_hyper(hyper: dict, layouts: Layouts) -> dict:
    """The feature order is the request's image layout's."""
    return {**hyper, "channels_last": layouts.channels_last}


def check(in_shape, params, hyper, layouts, where: str, source: str) -> Checked:
    return Checked((int(np.prod(in_shape)),))


def source_text(where: str, params, out_shape, layouts: Layouts) -> str:
    return f"{where} flattens its input into {out_shape[0]} features"


def price(in_shape, out_shape, params, hyper, m: int) -> Price:
    n = int(np.prod(in_shape)) * m
    return Price(work=2 * n, stored=2 * n, reads=0, forward_work=n)


def explain_input(h: int, params, hyper) -> InputStory:
    n = h + 1
    order = "(H, W, C)" if hyper.get("channels_last") else "(C, H, W)"
    return InputStory(
        reason=f"A{h} reaches the cost only through Z{n} = flatten(A{h}), which only reorders its entries (each "
               f"example's {order} read row by row), so its gradient is dZ{n} put back in the image's shape: ",
        rule=f"dA{h} = reshape(dZ{n}^T, A{h}'s shape)",
        latex=r"dA^{[l]} = \mathrm{reshape}\left(dZ^{[l+1]}\right)",
        values={})


FLATTEN = register(Kind(
    name="flatten",
    description="Flatten an image batch into vectors (C H W features per example, in the image layout's order: "
                "(C, H, W) with NCHW, (H, W, C) with NHWC), so that dense layers can follow.",
    input_rank=3,
    output_rank=1,
    params=(),
    hypers=(),
    states=(),
    forward=forward,
    backward=backward,
    check=check,
    source_text=source_text,
    price=price,
    formulas=Formulas(
        forward="Z[:, i] = A_prev[i] read in the image layout's order, (C, H, W) or (H, W, C)",
        forward_latex=r"Z^{(i)} = \mathrm{vec}\left(A^{(i)}\right)",
        backward="dA_prev[i] = dZ[:, i] put back in the image's shape",
        backward_latex=r"dA^{(i)} = \mathrm{vec}^{-1}\left(dZ^{(i)}\right)",
        grads={},
    ),
    mistakes=(),
    new_state=None,
    cache_values=lambda cache: {},
    explain_input=explain_input,
    default_activation="linear",
    engine_hyper=engine_hyper,
))
