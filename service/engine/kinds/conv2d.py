"""2-D convolution as both courses and PyTorch compute it (a cross-correlation): cs231n's ``conv_forward_naive`` /
``conv_backward_naive`` and deeplearning.ai's ``conv_forward`` / ``conv_backward``, by im2col and one matrix
product per layer.

Shapes (engine, examples first): x (m, C, H, W), W (F, C, kh, kw), b (F,), out (m, F, Ho, Wo) with
Ho = floor((H + 2 ph - kh) / sh) + 1 and Wo = floor((W + 2 pw - kw) / sw) + 1 (zero padding ph, pw; strides sh,
sw). The wire holds W as (F, C, kh, kw) with ``image_layout: NCHW`` (cs231n, PyTorch) and as (kh, kw, C, F) with
``NHWC`` (deeplearning.ai, TensorFlow); b as (F,) or (1, 1, 1, F) (deeplearning.ai's); gradients go back in the
form sent.

    forward:   out[i, f, r, c] = sum over c', u, v of xpad[i, c', sh r + u, sw c + v] W[f, c', u, v] + b[f]
               im2col: colsT (C kh kw + 1, m Ho Wo) holds every window (one copy per kernel offset) and a row
               of ones; out = [W2 | b] colsT with W2 = W as (F, C kh kw)
    backward:  d2 = dout as (F, m Ho Wo);  [dW2 | db] = (colsT d2^T)^T (db: the sum over examples and pixels);
               dcolsT = W2^T d2, added back window by window (col2im, one addition per kernel offset), unpadded
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from service.engine.kinds.base import (Checked, Formulas, Hyper, InputStory, Kind, Layouts, Mistake, Param, Price,
                                       ShapeError, register, shape_text)
from service.engine.kinds.windows import channel_shapes, image_text, out_size, pair, per_channel_back

Array = np.ndarray


class Cache(NamedTuple):
    """What backward needs: the transposed im2col matrix colsT (C kh kw + 1, m Ho Wo), the weights, the input
    (unpadded), strides, padding, the output's size, and whether the kernel was flipped (the mistake of a true
    convolution)."""

    colsT: Array
    W: Array
    x: Array
    stride: tuple[int, int]
    pad: tuple[int, int]
    out_hw: tuple[int, int]
    flipped: bool = False


def _weights(sent: Array, layouts: Layouts) -> Array:
    """W as (F, C, kh, kw): the wire's (kh, kw, C, F) transposed with image_layout NHWC (a view)."""
    return sent.transpose(3, 2, 0, 1) if layouts.channels_last else sent


def _weights_back(grad: Array, sent, layouts: Layouts) -> Array:
    return grad.transpose(2, 3, 1, 0) if layouts.channels_last else grad


# Inside a layer the images are held channels first, (C, m, H, W) in memory: each kernel offset's slice of the
# padded input is then one block per channel, contiguous along the rows, and the output of the product
# W2 (F, C kh kw) @ colsT (C kh kw, m Ho Wo) is (F, m, Ho, Wo) as it comes, returned as its (m, F, Ho, Wo) view.

def _padded_T(x: Array, before: tuple[int, int], after: tuple[int, int]) -> Array:
    """x (m, C, H, W) -> (C, m, H + top + bottom, W + left + right), zeros around (a copy)."""
    m, C, H, W = x.shape
    (top, left), (bottom, right) = before, after
    xpT = np.zeros((C, m, H + top + bottom, W + left + right))
    xpT[:, :, top:top + H, left:left + W] = x.transpose(1, 0, 2, 3)
    return xpT


def _im2col_T(xpT: Array, kh: int, kw: int, stride: tuple[int, int], out_hw: tuple[int, int]) -> Array:
    """colsT (C kh kw + 1, m Ho Wo): row (c, u, v) holds every window's entry at offset (u, v) of channel c (one
    vectorised copy per kernel offset); the last row is ones, so that the product with [W2 | b] adds the bias and
    the one with dout gives db."""
    C, m = xpT.shape[:2]
    (Ho, Wo), (sh, sw) = out_hw, stride
    K, N = C * kh * kw, m * Ho * Wo
    colsT = np.empty((K + 1, N))
    windows = colsT[:K].reshape(C, kh, kw, m, Ho, Wo)
    for u in range(kh):
        for v in range(kw):
            windows[:, u, v] = xpT[:, :, u:u + sh * (Ho - 1) + 1:sh, v:v + sw * (Wo - 1) + 1:sw]
    colsT[K] = 1.0
    return colsT


def _convolve(x: Array, W: Array, b: Array, stride, pad, flipped: bool = False) -> tuple[Array, Cache]:
    m, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    out_hw = (out_size(H + 2 * pad[0], kh, stride[0]), out_size(Wd + 2 * pad[1], kw, stride[1]))
    colsT = _im2col_T(_padded_T(x, pad, pad), kh, kw, stride, out_hw)
    Wb = np.empty((F, colsT.shape[0]))
    Wb[:, :-1], Wb[:, -1] = W.reshape(F, -1), b
    outT = Wb @ colsT  # (F, m Ho Wo), the bias included
    out = outT.reshape(F, m, *out_hw).transpose(1, 0, 2, 3)
    return out, Cache(colsT, W, x, stride, pad, out_hw, flipped)


def forward(x, params, hyper, state):
    """x (m, C, H, W) -> out (m, F, Ho, Wo) and the cache."""
    return _convolve(x, params["W"], params["b"], pair(hyper["stride"]), pair(hyper["pad"]))


def _dout_T(dout: Array) -> Array:
    """dout (m, F, Ho, Wo) -> (F, m Ho Wo), the layout of the product's output (no copy when it is that)."""
    m, F, Ho, Wo = dout.shape
    return dout.transpose(1, 0, 2, 3).reshape(F, m * Ho * Wo)


def _input_gradient(d2T: Array, cache: Cache, stride, origin: tuple[int, int]) -> Array:
    """dx (m, C, H, W) from d2T (F, m Ho Wo): dcolsT = W2^T d2T, added back window by window (one addition per
    kernel offset) into the padded input the windows were read from (``origin``: its padding before the image),
    then the padding cut off."""
    x, W = cache.x, cache.W
    m, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    (Ho, Wo), (sh, sw), (ph, pw) = cache.out_hw, stride, cache.pad
    dcolsT = (W.reshape(F, -1).T @ d2T).reshape(C, kh, kw, m, Ho, Wo)
    top, left = origin
    Hp = max(H + top + ph, sh * (Ho - 1) + kh)
    Wp = max(Wd + left + pw, sw * (Wo - 1) + kw)
    dxpT = np.zeros((C, m, Hp, Wp))
    for u in range(kh):
        for v in range(kw):
            dxpT[:, :, u:u + sh * (Ho - 1) + 1:sh, v:v + sw * (Wo - 1) + 1:sw] += dcolsT[:, u, v]
    return dxpT[:, :, top:top + H, left:left + Wd].transpose(1, 0, 2, 3)


def _param_gradients(d2T: Array, colsT: Array, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """dW (shape) and db from one product: colsT d2T^T is (C kh kw + 1, F), its last row (the ones') db."""
    dWb = colsT @ d2T.T
    return np.ascontiguousarray(dWb[:-1].T).reshape(shape), dWb[-1].copy()


def backward(dout, cache: Cache):
    """dout (m, F, Ho, Wo) -> dx (m, C, H, W), {W: (F, C, kh, kw), b: (F,)}."""
    d2T = _dout_T(dout)
    dW, db = _param_gradients(d2T, cache.colsT, cache.W.shape)
    if cache.flipped:  # the gradient of the flipped kernel, flipped back onto W's own entries
        dW = np.ascontiguousarray(dW[:, :, ::-1, ::-1])
    return _input_gradient(d2T, cache, cache.stride, cache.pad), {"W": dW, "b": db}


# --- mistakes (grading) ----------------------------------------------------------------------------------------

def _flipped_forward(x, params, hyper, state):
    """The mistake: a true convolution, the kernel flipped on both spatial axes (scipy.signal.convolve2d)."""
    W = params["W"][:, :, ::-1, ::-1]
    return _convolve(x, W, params["b"], pair(hyper["stride"]), pair(hyper["pad"]), flipped=True)


def _wrong_windows_backward(dout, cache: Cache, colsT: Array, stride, origin):
    d2T = _dout_T(dout)
    dW, db = _param_gradients(d2T, colsT, cache.W.shape)
    return _input_gradient(d2T, cache, stride, origin), {"W": dW, "b": db}


def _stride_ignored_backward(dout, cache: Cache):
    """The mistake: the backward reads and writes window (r, c) at (r, c) instead of (sh r, sw c)."""
    F, _, kh, kw = cache.W.shape
    colsT = _im2col_T(_padded_T(cache.x, cache.pad, cache.pad), kh, kw, (1, 1), cache.out_hw)
    return _wrong_windows_backward(dout, cache, colsT, (1, 1), cache.pad)


def _padding_ignored_backward(dout, cache: Cache):
    """The mistake: the backward indexes the unpadded input (and its gradient) with the padded input's window
    positions: windows read from x itself (zeros past its far edges), dx the first H x W block of the padded
    gradient."""
    F, _, kh, kw = cache.W.shape
    ph, pw = cache.pad
    colsT = _im2col_T(_padded_T(cache.x, (0, 0), (2 * ph, 2 * pw)), kh, kw, cache.stride, cache.out_hw)
    return _wrong_windows_backward(dout, cache, colsT, cache.stride, (0, 0))


def _last_example_backward(dout, cache: Cache):
    """The mistake: dW and db hold the last example's contribution only (the accumulator reset for each
    example, or the sum over the examples left out)."""
    m = dout.shape[0]
    d2T = _dout_T(dout).reshape(dout.shape[1], m, -1)[:, -1]
    colsT = cache.colsT.reshape(cache.colsT.shape[0], m, -1)[:, -1]
    dW, db = _param_gradients(d2T, colsT, cache.W.shape)
    return None, {"W": dW, "b": db}


def _strided(hyper) -> bool:
    return pair(hyper["stride"]) != (1, 1)


def _padded_hyper(hyper) -> bool:
    return pair(hyper["pad"]) != (0, 0)


# --- shapes, price, story --------------------------------------------------------------------------------------

def _engine_shape(W: Array, layouts: Layouts) -> tuple[int, int, int, int]:
    return tuple(int(n) for n in _weights(np.empty(W.shape, dtype=np.bool_), layouts).shape)


def _channel_error(W: Array, C: int, Cw: int, layouts: Layouts, source: str) -> ShapeError:
    axis = "third" if layouts.channels_last else "second"
    message = (f"W is {shape_text(W.shape)}: its {axis} axis is the input's channels, {Cw}, but the input has {C} "
               f"channels because {source}")
    if not layouts.channels_last and W.shape[2] == C:
        message += ("; W looks like deeplearning.ai's (kh, kw, C, F): with image_layout NCHW send W as (F, C, kh, "
                    "kw), or set image_layout NHWC")
    elif layouts.channels_last and W.shape[1] == C:
        message += ("; W looks like cs231n's and PyTorch's (F, C, kh, kw): with image_layout NHWC send W as (kh, kw, "
                    "C, F), or set image_layout NCHW")
    return ShapeError("W", message)


def check(in_shape, params, hyper, layouts: Layouts, where: str, source: str) -> Checked:
    """W's channels must be the input's; b one per filter; the kernel must fit the padded input."""
    C, H, Wd = in_shape
    W, b = params["W"], params["b"]
    F, Cw, kh, kw = _engine_shape(W, layouts)
    (sh, sw), (ph, pw) = pair(hyper["stride"]), pair(hyper["pad"])
    errors = []
    if Cw != C:
        errors.append(_channel_error(W, C, Cw, layouts, source))
    allowed = tuple(dict.fromkeys(channel_shapes(F, layouts) + ((1, 1, 1, F),)))
    if b.shape not in allowed:
        errors.append(ShapeError("b", f"b is {shape_text(b.shape)} but W has {F} filters: send "
                                      f"{' or '.join(shape_text(s) for s in allowed)}"))
    Hp, Wp = H + 2 * ph, Wd + 2 * pw
    if kh > Hp or kw > Wp:
        errors.append(ShapeError("W", f"the kernel is {kh} x {kw} but the padded input is only {Hp} x {Wp} ({H} x "
                                      f"{Wd} because {source}, padded by {ph}, {pw}): use a kernel of at most "
                                      f"{Hp} x {Wp}, or more padding", "kernel_too_large"))
        return Checked(None, tuple(errors))
    return Checked((F, out_size(Hp, kh, sh), out_size(Wp, kw, sw)), tuple(errors))


def source_text(where: str, params, out_shape, layouts: Layouts) -> str:
    return f"{where} outputs {image_text(out_shape, layouts)}"


def price(in_shape, out_shape, params, hyper, m: int) -> Price:
    """The product's multiply-adds (forward: one; backward: two, dW and dcols), the im2col copy and col2im adds,
    and what stays in memory: the padded input, cols and dcols, the output and its gradient."""
    C, H, Wd = in_shape
    F, Ho, Wo = out_shape
    # W as sent (either layout) or in engine form: (F, C, kh, kw) or (kh, kw, C, F). Read the other way round when
    # ambiguous, kh kw and max(kh, kw) come out the same, which is all the price needs.
    W = params["W"].shape
    kh, kw = W[2:] if W[:2] == (F, C) else W[:2]
    ph, pw = pair(hyper["pad"])
    padded = m * C * (H + 2 * ph) * (Wd + 2 * pw)
    cols = m * Ho * Wo * C * kh * kw
    product = cols * F
    forward_work = product + 2 * cols + padded
    return Price(work=3 * product + 5 * cols + 3 * padded, stored=2 * padded + 2 * cols + 2 * m * F * Ho * Wo,
                 reads=int(params["W"].size), forward_work=forward_work, window=max(kh, kw))


def explain_input(h: int, params, hyper) -> InputStory:
    n = h + 1
    return InputStory(
        reason=f"A{h} reaches the cost only through Z{n} = W{n} * A{h} + b{n} (a cross-correlation): each pixel of "
               f"A{h} is read by every window that covers it, so its gradient adds W{n} times dZ{n} over those "
               f"windows, a transposed convolution: ",
        rule=f"dA{h}[i, c, y, x] = sum over f and the windows (r, s) covering (y, x) of W{n}[f, c, y - sh r + ph, "
             f"x - sw s + pw] dZ{n}[i, f, r, s]",
        latex=r"dA^{[l]} = \mathrm{col2im}\left(dZ^{[l+1]} W^{[l+1]}\right)",
        values={f"W{n}": params["W"]})


CONV2D = register(Kind(
    name="conv2d",
    description="2-D convolution (a cross-correlation, as cs231n, deeplearning.ai and PyTorch compute it) with "
                "zero padding and strides: Z[i, f] = sum over channels of W[f, c] * pad(A_prev[i, c]) + b[f].",
    input_rank=3,
    params=(
        Param("W", "Kernels: (F, C, kh, kw) with image_layout NCHW (cs231n, PyTorch), (kh, kw, C, F) with NHWC "
                   "(deeplearning.ai, TensorFlow); dW comes back in the form sent.", l2=True, ranks=(4,),
              to_engine=_weights, to_wire=_weights_back),
        Param("b", "Biases, one per filter: (F,) or, as deeplearning.ai holds it, (1, 1, 1, F); db comes back in the "
                   "shape sent.", l2=False, ranks=(1, 4), to_engine=lambda sent, layouts: sent.reshape(-1),
              to_wire=per_channel_back),
    ),
    hypers=(
        Hyper("stride", "Stride: an int or [sh, sw], positive; default 1.", "int_pair", 1, ge=1),
        Hyper("pad", "Zero padding on each side: an int or [ph, pw], >= 0; default 0.", "int_pair", 0, ge=0),
    ),
    states=(),
    forward=forward,
    backward=backward,
    check=check,
    source_text=source_text,
    price=price,
    formulas=Formulas(
        forward="Z[i, f, r, c] = sum over c', u, v of pad(A_prev)[i, c', sh r + u, sw c + v] W[f, c', u, v] + b[f], "
                "Ho = floor((H + 2 ph - kh) / sh) + 1",
        forward_latex=r"Z_{i,f,r,c} = \sum_{c',u,v} \tilde{A}_{i,c',s_h r+u,s_w c+v} W_{f,c',u,v} + b_f",
        backward="dA_prev = col2im(dZ W): each input pixel adds W times dZ over the windows that read it",
        backward_latex=r"dA^{[l-1]} = \mathrm{col2im}\left(dZ^{[l]} W^{[l]}\right)",
        grads={"W": ("dW[f, c', u, v] = (1/m) sum over i, r, c of dZ[i, f, r, c] pad(A_prev)[i, c', sh r + u, sw c + v] "
                     "(+ (lambda/m) W with l2)",
                     r"dW_{f,c',u,v} = \frac{1}{m}\sum_{i,r,c} dZ_{i,f,r,c}\,\tilde{A}_{i,c',s_h r+u,s_w c+v}"),
               "b": ("db[f] = (1/m) sum over examples and pixels of dZ[i, f]",
                     r"db_f = \frac{1}{m}\sum_{i,r,c} dZ_{i,f,r,c}")},
    ),
    mistakes=(
        Mistake("conv_flipped_kernel", "a true convolution: the kernel flipped on both spatial axes, where both "
                "courses and PyTorch compute a cross-correlation",
                "layer {layer} (conv2d): the kernel was flipped (a true convolution, as scipy.signal.convolve2d "
                "computes); a convolution layer computes the cross-correlation sum of A_prev[r + u, c + v] "
                "W[u, v], the kernel not flipped", forward=_flipped_forward),
        Mistake("conv_stride_ignored", "the convolution's backward pass ignored the stride",
                "layer {layer} (conv2d): the backward pass placed window (r, c) at (r, c) instead of "
                "(stride r, stride c): vert_start = h * stride, horiz_start = w * stride",
                backward=_stride_ignored_backward, applies=_strided),
        Mistake("conv_padding_ignored", "the convolution's backward pass ignored the padding",
                "layer {layer} (conv2d): the backward pass read the windows from the unpadded input and wrote dA_prev "
                "without removing the padding offset: slice A_prev_pad and da_prev_pad, then cut the padding off",
                backward=_padding_ignored_backward, applies=_padded_hyper),
        Mistake("conv_grads_not_summed_over_examples", "dW and db not summed over the examples",
                "layer {layer} (conv2d): dW and db hold the last example's contribution only; they add up every "
                "example's (dW += ... inside the loop over the examples, not dW = ...)",
                backward=_last_example_backward, grads_only=True),
    ),
    new_state=None,
    cache_values=lambda cache: {},
    explain_input=explain_input,
    default_activation=None,
))
