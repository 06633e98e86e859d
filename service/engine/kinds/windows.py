"""Shared pieces of the image kinds (conv2d, the poolings, the spatial norms): sliding windows, pairs, sizes.

Images are examples first in the engine, ``x: (m, C, H, W)``. A window of ``(kh, kw)`` slides with strides
``(sh, sw)``; the output has ``Ho = floor((H - kh) / sh) + 1`` rows (and the same for the columns), after any
zero padding. Everything here is vectorised over the examples, the channels and the pixels; the only Python
loops run over the ``kh * kw`` offsets of a window (``scatter_windows``), as cs231n's col2im does.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from service.engine.kinds.base import Checked, Layouts, Param, Price, ShapeError, shape_text

Array = np.ndarray


def pair(value) -> tuple[int, int]:
    """An int or [a, b] (a request's ``stride``, ``pad``, ``size``) -> (a, b)."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def out_size(n: int, k: int, s: int) -> int:
    """floor((n - k) / s) + 1 positions of a window k with stride s along n (padded) entries; <= 0 if none."""
    return (n - k) // s + 1 if n >= k else 0


def windows(x: Array, kh: int, kw: int, sh: int, sw: int) -> Array:
    """The (m, C, Ho, Wo, kh, kw) view of every window of x (m, C, H, W): no copy."""
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def scatter_windows(dwin: Array, shape: tuple[int, ...], sh: int, sw: int) -> Array:
    """The adjoint of ``windows``: dwin (m, C, Ho, Wo, kh, kw) -> dx of ``shape`` (m, C, H, W), each window's
    entries added back where they were read (overlapping windows add up). One vectorised addition per kernel
    offset (i, j): dx[:, :, i + sh*r, j + sw*c] += dwin[:, :, r, c, i, j]."""
    m, C, Ho, Wo, kh, kw = dwin.shape
    if sh == kh and sw == kw:  # windows tile the image: one reshape, no loop
        dx = np.zeros(shape)
        dx[:, :, :Ho * kh, :Wo * kw] = dwin.transpose(0, 1, 2, 4, 3, 5).reshape(m, C, Ho * kh, Wo * kw)
        return dx
    dx = np.zeros(shape)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += dwin[:, :, :, :, i, j]
    return dx


def per_channel(sent: Array, layouts: Layouts) -> Array:
    """A per-channel array sent as (C,) or (1, C, 1, 1) / (1, 1, 1, C) -> (1, C, 1, 1), the shape that broadcasts
    with the engine's (m, C, H, W)."""
    return sent.reshape(1, -1, 1, 1)


def per_channel_back(grad: Array, sent: Array | None, layouts: Layouts) -> Array:
    """A per-channel gradient (or statistic) in the shape its array was sent in; (C,) when nothing was sent."""
    if sent is None:
        return grad.reshape(-1)
    return grad.reshape(sent.shape) if grad.size == sent.size else grad


def channel_shapes(C: int, layouts: Layouts) -> tuple[tuple[int, ...], ...]:
    """The shapes a per-channel array may be sent in: (C,), or the one that broadcasts with the layout's images."""
    return (C,), ((1, 1, 1, C) if layouts.channels_last else (1, C, 1, 1))


def check_per_channel(names: tuple[str, ...], C: int, arrays: dict, layouts: Layouts, source: str,
                      extra: tuple[tuple[int, ...], ...] = ()) -> list[ShapeError]:
    """Each of ``names`` (when present) must hold one entry per channel, in one of ``channel_shapes`` (or
    ``extra``)."""
    allowed = channel_shapes(C, layouts) + tuple(extra)
    errors = []
    for name in names:
        a = arrays.get(name)
        if a is not None and a.shape not in allowed:
            forms = " or ".join(shape_text(s) for s in allowed)
            errors.append(ShapeError(name, f"{name} is {shape_text(a.shape)} but the input has {C} channels because "
                                           f"{source}: send {forms}"))
    return errors


def image_text(shape: tuple[int, ...], layouts: Layouts) -> str:
    """(C, H, W) -> 'C channels of H x W' (the words every image message uses)."""
    C, H, W = shape
    return f"{C} channel{'s' if C != 1 else ''} of {H} x {W}"


def image_shape_text(shape: tuple[int, ...], layouts: Layouts) -> str:
    """An engine image shape (C, H, W) as the wire holds one example: '(C, H, W)' or '(H, W, C)'."""
    C, H, W = shape
    return shape_text((H, W, C) if layouts.channels_last else (C, H, W))


def at_offset(x: Array, i: int, j: int, out_hw: tuple[int, int], stride: tuple[int, int]) -> Array:
    """The (m, C, Ho, Wo) view of the entries at offset (i, j) of every window: x[:, :, i + sh r, j + sw c]."""
    (Ho, Wo), (sh, sw) = out_hw, stride
    return x[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]


def pool_window(hyper) -> tuple[tuple[int, int], tuple[int, int]]:
    """A pooling layer's window (ph, pw) and stride (sh, sw); the stride defaults to the window."""
    size = pair(hyper["size"])
    return size, (size if hyper.get("stride") is None else pair(hyper["stride"]))


def check_pool(in_shape, hyper, source: str):
    """A pooling window must fit the (unpadded) input: the output shape (C, Ho, Wo), or None and the error."""
    C, H, W = in_shape
    (ph, pw), (sh, sw) = pool_window(hyper)
    if ph > H or pw > W:
        return None, ShapeError("size", f"the window is {ph} x {pw} but the input is only {H} x {W} because {source} "
                                        f"(pooling does not pad): use a window of at most {H} x {W}",
                                "kernel_too_large")
    return (C, out_size(H, ph, sh), out_size(W, pw, sw)), None


def pool_check(in_shape, params, hyper, layouts, where: str, source: str) -> Checked:
    """The pooling kinds' shape rule (Kind.check): the window must fit the input."""
    out_shape, error = check_pool(in_shape, hyper, source)
    return Checked(out_shape, (error,) if error else ())


def pool_source_text(where: str, params, out_shape, layouts) -> str:
    """What fixes a pooling layer's output size, for the next layer's errors (Kind.source_text)."""
    return f"{where} outputs {image_text(out_shape, layouts)}"


def pool_price(in_shape, out_shape, hyper, m: int, per_entry: int) -> Price:
    """A pooling layer: ``per_entry`` operations per window entry forward, twice that backward; the output, its
    gradient and the input's gradient in memory."""
    (ph, pw), _ = pool_window(hyper)
    C, Ho, Wo = out_shape
    entries = m * C * Ho * Wo * ph * pw
    stored = 3 * m * C * Ho * Wo + m * int(np.prod(in_shape))
    return Price(work=3 * per_entry * entries + m * int(np.prod(in_shape)), stored=stored, reads=0,
                 forward_work=per_entry * entries, window=max(ph, pw))


POOL_HYPERS_DOC = ("Pooling window: an int or [ph, pw], positive.",
                   "Stride: an int or [sh, sw], positive; default the window (non-overlapping windows).")


def channel_scale_and_shift(over: str, forms: str) -> tuple:
    """gamma and beta of a normalisation of images over ``over``, one per channel, sent as ``forms``."""
    return (Param("gamma", f"Scale, one per channel (normalised {over}): {forms}; dgamma comes back in the shape "
                           f"sent.", l2=False, ranks=(1, 4), to_engine=per_channel, to_wire=per_channel_back),
            Param("beta", f"Shift, one per channel: {forms}; dbeta comes back in the shape sent.", l2=False,
                  ranks=(1, 4), to_engine=per_channel, to_wire=per_channel_back))
