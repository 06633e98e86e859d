"""2-D average pooling: deeplearning.ai's ``pool_forward`` / ``pool_backward`` (mode average,
``distribute_value``), PyTorch's avg_pool2d. No padding.

Shapes (engine, examples first): x (m, C, H, W), out (m, C, Ho, Wo), Ho = floor((H - ph) / sh) + 1, Wo likewise;
window (ph, pw), stride (sh, sw) (default: the window).

    forward:   out[i, c, r, s] = (1 / (ph pw)) sum over u < ph, v < pw of x[i, c, sh r + u, sw s + v]
    backward:  each window's dout / (ph pw) to every entry of the window; overlapping windows add up
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from service.engine.kinds.base import Formulas, Hyper, InputStory, Kind, Mistake, register
from service.engine.kinds.windows import (POOL_HYPERS_DOC, at_offset, check_pool, pool_check, pool_price,
                                          pool_source_text, pool_window)

Array = np.ndarray


class Cache(NamedTuple):
    x: Array
    size: tuple[int, int]
    stride: tuple[int, int]
    out_hw: tuple[int, int]


def forward(x, params, hyper, state):
    """x (m, C, H, W) -> out (m, C, Ho, Wo), the mean of each window."""
    size, stride = pool_window(hyper)
    _, Ho, Wo = check_pool(x.shape[1:], hyper, "")[0]
    out = None
    for i in range(size[0]):
        for j in range(size[1]):
            part = at_offset(x, i, j, (Ho, Wo), stride)
            out = np.copy(part, order="K") if out is None else np.add(out, part, out=out)
    out /= size[0] * size[1]
    return out, Cache(x, size, stride, (Ho, Wo))


def _spread(dout: Array, cache: Cache, divisor: float) -> Array:
    dx = np.zeros_like(cache.x, order="K")  # the input's memory order
    share = dout / divisor if divisor != 1 else dout
    for i in range(cache.size[0]):
        for j in range(cache.size[1]):
            at_offset(dx, i, j, cache.out_hw, cache.stride)[...] += share
    return dx


def backward(dout, cache: Cache):
    """dout (m, C, Ho, Wo) -> dx (m, C, H, W); no parameters."""
    return _spread(dout, cache, cache.size[0] * cache.size[1]), {}


def _not_divided_backward(dout, cache: Cache):
    """The mistake: dout copied to every entry of the window, not divided by the window's size."""
    return _spread(dout, cache, 1), {}


def price(in_shape, out_shape, params, hyper, m: int):
    return pool_price(in_shape, out_shape, hyper, m, per_entry=1)


def explain_input(h: int, params, hyper) -> InputStory:
    n = h + 1
    (ph, pw), _ = pool_window(hyper)
    return InputStory(
        reason=f"A{h} reaches the cost only through Z{n} = avgpool(A{h}): each entry of a window counts for "
               f"1/({ph} x {pw}) of its mean, so each gets that share of the window's gradient: ",
        rule=f"dA{h}[window] += dZ{n}[window] / ({ph} x {pw})",
        latex=r"dA^{[l]}_{i,c,s_h r+u,s_w s+v} \mathrel{+}= \frac{dZ^{[l+1]}_{i,c,r,s}}{p_h p_w}",
        values={})


AVGPOOL2D = register(Kind(
    name="avgpool2d",
    description="2-D average pooling without padding: each window's mean, per example and channel.",
    input_rank=3,
    params=(),
    hypers=(
        Hyper("size", POOL_HYPERS_DOC[0], "int_pair", ge=1),
        Hyper("stride", POOL_HYPERS_DOC[1], "int_pair", None, ge=1),
    ),
    states=(),
    forward=forward,
    backward=backward,
    check=pool_check,
    source_text=pool_source_text,
    price=price,
    formulas=Formulas(
        forward="Z[i, c, r, s] = (1 / (ph pw)) sum over u < ph, v < pw of A_prev[i, c, sh r + u, sw s + v]",
        forward_latex=r"Z_{i,c,r,s} = \frac{1}{p_h p_w}\sum_{u<p_h,\,v<p_w} A_{i,c,s_h r+u,s_w s+v}",
        backward="dA_prev = dZ / (ph pw) spread over each window, overlapping windows adding up",
        backward_latex=r"dA_{i,c,s_h r+u,s_w s+v} \mathrel{+}= \frac{dZ_{i,c,r,s}}{p_h p_w}",
        grads={},
    ),
    mistakes=(
        Mistake("avgpool_not_divided_by_window", "average pooling's gradient not divided by the window's size",
                "layer {layer} (avgpool2d): each window's gradient was copied to its entries without dividing by the "
                "window's size ph pw (distribute_value divides dz by n_H n_W)", backward=_not_divided_backward),
    ),
    new_state=None,
    cache_values=lambda cache: {},
    explain_input=explain_input,
    default_activation="linear",
))
