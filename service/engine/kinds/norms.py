"""Shared pieces of the normalisation kinds: gamma and beta, and their shape rule."""

from __future__ import annotations

import numpy as np

from service.engine.kinds.base import Checked, Layouts, Param, ShapeError, as_sent, column, shape_text


def scale_and_shift(over: str) -> tuple[Param, Param]:
    """gamma and beta of a normalisation over ``over``, one per feature."""
    return (Param("gamma", f"Scale, one per feature: a vector (D,) or a column (D, 1) (normalised {over}); dgamma "
                           f"comes back in the shape sent.", l2=False, ranks=(1, 2), to_engine=column,
                  to_wire=as_sent),
            Param("beta", "Shift, one per feature: a vector (D,) or a column (D, 1); dbeta comes back in the shape "
                          "sent.", l2=False, ranks=(1, 2), to_engine=column, to_wire=as_sent))


def check_per_feature(names: tuple[str, ...], in_shape, arrays: dict, where: str, source: str) -> list[ShapeError]:
    """Each of ``names`` (present in ``arrays``) must hold one entry per input feature, as (D,) or (D, 1)."""
    D = in_shape[0]
    errors = []
    for name in names:
        a = arrays.get(name)
        if a is not None and a.shape not in ((D,), (D, 1)):
            errors.append(ShapeError(name, f"{name} is {shape_text(a.shape)} but the layer's input has {D} features "
                                           f"because {source}: send ({D},) or ({D}, 1)"))
    return errors


def normalise(x: np.ndarray, axis: int, eps: float):
    """(x - mean) / sqrt(var + eps) over ``axis`` (biased variance): xhat, mean, var, std (keepdims)."""
    mean = x.mean(axis=axis, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=axis, keepdims=True)
    std = np.sqrt(var + eps)
    return centred / std, mean, var, std


def same_shape(in_shape, params, hyper, layouts: Layouts, where: str, source: str, extra=()) -> Checked:
    """A normalisation keeps its input's shape; gamma, beta (and ``extra`` arrays) are per feature."""
    return Checked(tuple(in_shape), tuple(check_per_feature(("gamma", "beta", *extra), in_shape, params, where,
                                                            source)))


def source_text(where: str, params, out_shape, layouts: Layouts) -> str:
    return f"{where} keeps its input's {out_shape[0]} features"
