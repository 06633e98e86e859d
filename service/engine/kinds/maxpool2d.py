"""2-D max pooling: cs231n's ``max_pool_forward_naive`` / ``_backward_naive``, deeplearning.ai's ``pool_forward`` /
``pool_backward`` (mode max, ``create_mask_from_window``), PyTorch's max_pool2d. No padding.

Shapes (engine, examples first): x (m, C, H, W), out (m, C, Ho, Wo), Ho = floor((H - ph) / sh) + 1, Wo likewise;
window (ph, pw), stride (sh, sw) (default: the window).

    forward:   out[i, c, r, s] = max over u < ph, v < pw of x[i, c, sh r + u, sw s + v]
    backward:  each window's dout goes to its maximum; for a tie (several entries equal to the maximum):
               ties first  the first maximum in row-major order of the window (PyTorch, cs231n's argmax)
               ties all    every entry equal to the maximum gets the whole dout (deeplearning.ai's
                           mask = (x == max), not split)
               overlapping windows (stride < window) add up.

Both passes loop over the ph * pw offsets of the window, each step vectorised over examples, channels and pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from service.engine.kinds.base import Checked, Formulas, Hyper, InputStory, Kind, Mistake, register
from service.engine.kinds.windows import (POOL_HYPERS_DOC, at_offset, check_pool, image_text, pool_price,
                                          pool_window)

Array = np.ndarray
TIES = ("first", "all")


class Cache(NamedTuple):
    x: Array
    out: Array
    size: tuple[int, int]
    stride: tuple[int, int]
    ties: str


def forward(x, params, hyper, state):
    """x (m, C, H, W) -> out (m, C, Ho, Wo), the maximum of each window."""
    size, stride = pool_window(hyper)
    C, Ho, Wo = check_pool(x.shape[1:], hyper, "")[0]
    out = None
    for i in range(size[0]):
        for j in range(size[1]):
            part = at_offset(x, i, j, (Ho, Wo), stride)
            out = part.copy() if out is None else np.maximum(out, part, out=out)
    return out, Cache(x, out, size, stride, hyper.get("ties", "first"))


def _route(dout: Array, cache: Cache, ties: str) -> Array:
    """dx: each window's dout to its maximum, ties by ``ties`` (see the module docstring)."""
    x, out = cache.x, cache.out
    out_hw = out.shape[2:]
    dx = np.zeros(x.shape)
    taken = np.zeros(out.shape, dtype=bool) if ties == "first" else None
    for i in range(cache.size[0]):
        for j in range(cache.size[1]):  # row-major order of the window: the first maximum is met first
            hit = at_offset(x, i, j, out_hw, cache.stride) == out
            if taken is not None:
                hit &= ~taken
                taken |= hit
            at_offset(dx, i, j, out_hw, cache.stride)[...] += dout * hit
    return dx


def backward(dout, cache: Cache):
    """dout (m, C, Ho, Wo) -> dx (m, C, H, W); no parameters."""
    return _route(dout, cache, cache.ties), {}


def _spread_evenly_backward(dout, cache: Cache):
    """The mistake: dout spread evenly over the window (average pooling's backward), not routed to the maximum."""
    x, out = cache.x, cache.out
    share = dout / (cache.size[0] * cache.size[1])
    dx = np.zeros(x.shape)
    for i in range(cache.size[0]):
        for j in range(cache.size[1]):
            at_offset(dx, i, j, out.shape[2:], cache.stride)[...] += share
    return dx, {}


def _ties_all_backward(dout, cache: Cache):
    return _route(dout, cache, "all"), {}


def _ties_first_backward(dout, cache: Cache):
    return _route(dout, cache, "first"), {}


def check(in_shape, params, hyper, layouts, where: str, source: str) -> Checked:
    out_shape, error = check_pool(in_shape, hyper, source)
    return Checked(out_shape, (error,) if error else ())


def source_text(where: str, params, out_shape, layouts) -> str:
    return f"{where} outputs {image_text(out_shape, layouts)}"


def price(in_shape, out_shape, params, hyper, m: int):
    return pool_price(in_shape, out_shape, hyper, m, per_entry=2)


def explain_input(h: int, params, hyper) -> InputStory:
    n = h + 1
    return InputStory(
        reason=f"A{h} reaches the cost only through Z{n} = maxpool(A{h}): each window's output is its largest "
               f"entry, which alone moves it, so each window's gradient goes back to where its maximum was "
               f"(ties: {hyper.get('ties', 'first')}): ",
        rule=f"dA{h}[window's argmax] += dZ{n}[window], 0 elsewhere",
        latex=r"dA^{[l]}_{i,c,s_h r+u,s_w s+v} \mathrel{+}= dZ^{[l+1]}_{i,c,r,s}\,[\,A^{[l]}_{i,c,s_h r+u,s_w s+v} = "
              r"\max\,]",
        values={})


MAXPOOL2D = register(Kind(
    name="maxpool2d",
    description="2-D max pooling without padding: each window's maximum, per example and channel.",
    input_rank=3,
    params=(),
    hypers=(
        Hyper("size", POOL_HYPERS_DOC[0], "int_pair", ge=1),
        Hyper("stride", POOL_HYPERS_DOC[1], "int_pair", None, ge=1),
        Hyper("ties", "Which entries of a window get its gradient when several equal the maximum: `first` (the "
                      "first in row-major order of the window, as PyTorch and cs231n's argmax) or `all` (every one, "
                      "each the whole gradient, as deeplearning.ai's create_mask_from_window, x == max).",
              "choice", "first", choices=TIES),
    ),
    states=(),
    forward=forward,
    backward=backward,
    check=check,
    source_text=source_text,
    price=price,
    formulas=Formulas(
        forward="Z[i, c, r, s] = max over u < ph, v < pw of A_prev[i, c, sh r + u, sw s + v]",
        forward_latex=r"Z_{i,c,r,s} = \max_{u<p_h,\,v<p_w} A_{i,c,s_h r+u,s_w s+v}",
        backward="dA_prev = dZ routed to each window's maximum (ties: the first in row-major order, or all), "
                 "overlapping windows adding up",
        backward_latex=r"dA_{i,c,s_h r+u,s_w s+v} \mathrel{+}= dZ_{i,c,r,s}\,[\,(u, v) = \arg\max\,]",
        grads={},
    ),
    mistakes=(
        Mistake("maxpool_gradient_spread_evenly", "max pooling's gradient spread evenly over the window (average "
                "pooling's backward)", "layer {layer} (maxpool2d): the gradient was spread evenly over each window; "
                "max pooling sends it all to the window's maximum (create_mask_from_window)",
                backward=_spread_evenly_backward),
        Mistake("maxpool_ties_to_all", "max pooling's gradient given to every tied maximum where ties is first",
                "layer {layer} (maxpool2d): where several entries of a window equal its maximum, each got the whole "
                "gradient (x == max); with ties `first` only the first in row-major order does (PyTorch's and "
                "cs231n's argmax)", backward=_ties_all_backward, applies=lambda hyper: hyper.get("ties") == "first"),
        Mistake("maxpool_ties_to_one", "max pooling's gradient given to one tied maximum where ties is all",
                "layer {layer} (maxpool2d): where several entries of a window equal its maximum, only the first got "
                "the gradient; with ties `all` each of them does (deeplearning.ai's mask x == max)",
                backward=_ties_first_backward, applies=lambda hyper: hyper.get("ties") == "all"),
    ),
    new_state=None,
    cache_values=lambda cache: {},
    explain_input=explain_input,
    default_activation="linear",
))
