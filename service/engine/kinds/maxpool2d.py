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

Both passes loop over the ph * pw offsets of the window, each step vectorised over examples, channels and pixels;
the forward keeps each window's first maximum (its position in the window), which ``first`` routes to.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from service.engine.kinds.base import Formulas, Hyper, InputStory, Kind, Mistake, register
from service.engine.kinds.windows import (POOL_HYPERS_DOC, at_offset, check_pool, pool_check, pool_price,
                                          pool_source_text, pool_window)

Array = np.ndarray
TIES = ("first", "all")


class Cache(NamedTuple):
    """The input, the output, the window, the stride, the ties policy, and for each window the position (u pw + v)
    of its first maximum in row-major order."""

    x: Array
    out: Array
    size: tuple[int, int]
    stride: tuple[int, int]
    ties: str
    first: Array


def _offsets(size: tuple[int, int]) -> list[tuple[int, int]]:
    """The window's offsets (u, v) in row-major order."""
    return [(u, v) for u in range(size[0]) for v in range(size[1])]


def forward(x, params, hyper, state):
    """x (m, C, H, W) -> out (m, C, Ho, Wo), the maximum of each window, and the position of its first maximum
    (a strictly larger entry replaces the maximum so far: the first of equal ones stays, as PyTorch's loop does)."""
    size, stride = pool_window(hyper)
    out_hw = check_pool(x.shape[1:], hyper, "")[0][1:]
    offsets = _offsets(size)
    out = np.copy(at_offset(x, 0, 0, out_hw, stride), order="K")  # keeps the input's memory order
    first = np.zeros_like(out, dtype=np.uint8 if len(offsets) <= 256 else np.uint16)
    for k, (u, v) in enumerate(offsets[1:], start=1):
        part = at_offset(x, u, v, out_hw, stride)
        larger = np.greater(part, out)
        np.maximum(out, part, out=out)
        # where(larger, k, first) in one cheap pass: k exceeds every position stored so far.
        np.maximum(first, np.multiply(larger, first.dtype.type(k), dtype=first.dtype), out=first)
    return out, Cache(x, out, size, stride, hyper.get("ties", "first"), first)


def _route(dout: Array, cache: Cache, ties: str) -> Array:
    """dx: each window's dout to its maximum, ties by ``ties`` (see the module docstring). Windows that tile the
    input write their slice of dx once; overlapping ones add up."""
    x, out = cache.x, cache.out
    out_hw = out.shape[2:]
    tiling = cache.stride[0] >= cache.size[0] and cache.stride[1] >= cache.size[1]
    covered = tiling and cache.stride == cache.size and (out_hw[0] * cache.size[0], out_hw[1] * cache.size[1]) == \
        x.shape[2:]  # every entry of dx is written once below
    dx = np.empty_like(x, order="K") if covered else np.zeros_like(x, order="K")
    for k, (u, v) in enumerate(_offsets(cache.size)):
        hit = cache.first == k if ties == "first" else at_offset(x, u, v, out_hw, cache.stride) == out
        target = at_offset(dx, u, v, out_hw, cache.stride)
        if tiling:
            np.multiply(dout, hit, out=target)
        else:
            target += dout * hit
    return dx


def backward(dout, cache: Cache):
    """dout (m, C, Ho, Wo) -> dx (m, C, H, W); no parameters."""
    return _route(dout, cache, cache.ties), {}


def _spread_evenly_backward(dout, cache: Cache):
    """The mistake: dout spread evenly over the window (average pooling's backward), not routed to the maximum."""
    x, out = cache.x, cache.out
    share = dout / (cache.size[0] * cache.size[1])
    dx = np.zeros_like(x, order="K")
    for u, v in _offsets(cache.size):
        at_offset(dx, u, v, out.shape[2:], cache.stride)[...] += share
    return dx, {}


def _ties_all_backward(dout, cache: Cache):
    return _route(dout, cache, "all"), {}


def _ties_first_backward(dout, cache: Cache):
    return _route(dout, cache, "first"), {}


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
    check=pool_check,
    source_text=pool_source_text,
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
