"""The layer-kind unit: everything about one kind of layer in one registered value.

A kind is cs231n's pair of pure functions, ``forward(x, params, hyper, state) -> (out, cache)`` and
``backward(dout, cache) -> (dx, grads)``, with what every other module needs to know about it: its parameters
(which L2 regularizes, how the wire holds them), its hyperparameters with defaults and domains (schemas builds
the request fields from them), its running statistics, its shape rule with located errors, its price in
multiply-adds and stored numbers (the limits use it before any work), its formulas in text and LaTeX (/v1,
OpenAPI, explain), and its typical mistakes (grading). Nothing outside this package knows a kind by name.

Shapes: a kind sees its input features first with the examples on the last axis for vectors, ``x: (n, m)``, and
examples first for images, ``x: (m, C, H, W)`` (``input_rank`` says which: 1 or 3 feature axes). ``backward``
returns the exact vector-Jacobian products for the ``dout`` it is given; the network scales them to the
request's convention (the products are linear in ``dout``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np

Array = np.ndarray
REQUIRED = object()  # a hyperparameter's default when it has none


@dataclass(frozen=True)
class Layouts:
    """How the wire holds arrays: examples first ((m, n) rather than (n, m)), dense weights as (n_in, n_out)
    rather than (n_out, n_in), images as (m, H, W, C) rather than (m, C, H, W)."""

    examples_first: bool = False
    weights_in_out: bool = False
    channels_last: bool = False

    def to_engine_activation(self, a: Array) -> Array:
        """A per-example array (X, a dropout mask, a submitted dZ/dA/AL) as the wire holds it -> the engine's form:
        a matrix (units, m) (transposed from (m, units) with ``examples_first``), an image batch (m, C, H, W)
        (from (m, H, W, C) with ``channels_last``). Other ranks are left alone. A view, not a copy."""
        if a.ndim == 2 and self.examples_first:
            return a.T
        if a.ndim == 4 and self.channels_last:
            return a.transpose(0, 3, 1, 2)
        return a

    def to_wire_activation(self, a: Array) -> Array:
        """The inverse of ``to_engine_activation``: an engine array (a response's dZ, dA, Z, A, AL) as the wire
        holds it. A view, not a copy."""
        if a.ndim == 2 and self.examples_first:
            return a.T
        if a.ndim == 4 and self.channels_last:
            return a.transpose(0, 2, 3, 1)
        return a

    def index_to_wire(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """An index (or a shape) into an engine per-example array -> the same entry in the wire's form."""
        if len(index) == 2 and self.examples_first:
            return index[1], index[0]
        if len(index) == 4 and self.channels_last:
            return index[0], index[2], index[3], index[1]
        return tuple(index)


@dataclass(frozen=True)
class Param:
    """A parameter. ``ranks``: the numbers of dimensions the wire may send it with; ``to_engine(sent, layouts)``
    gives the kind's form; ``to_wire(grad, sent, layouts)`` puts its gradient back in the form it was sent in."""

    name: str
    description: str
    l2: bool
    ranks: tuple[int, ...]
    to_engine: Callable[[Array, Layouts], Array]
    to_wire: Callable[[Array, Array, Layouts], Array]


@dataclass(frozen=True)
class State:
    """A running statistic the kind reads (optional in the request) and returns updated, e.g. batchnorm's
    running mean. ``initial(n)`` is its value when not sent, for ``n`` features."""

    name: str
    description: str
    ranks: tuple[int, ...]
    initial: Callable[[int], Array]
    to_engine: Callable[[Array, Layouts], Array]
    to_wire: Callable[[Array, Array | None, Layouts], Array]


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter, declared without pydantic (schemas turns it into a request field). ``type``: 'float',
    'int', 'int_pair' (an int or [a, b]) or 'choice' (one of ``choices``); bounds as in pydantic."""

    name: str
    description: str
    type: str
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    gt: float | None = None
    ge: float | None = None
    le: float | None = None


@dataclass(frozen=True)
class ShapeError:
    """A located shape error: ``field`` of the layer (W, b, gamma, ...) or '' for the layer itself."""

    field: str
    message: str
    type: str = "shape_mismatch"


@dataclass(frozen=True)
class Checked:
    """The outcome of a kind's shape rule: the output's feature shape (None when it cannot be told) and errors."""

    out_shape: tuple[int, ...] | None
    errors: tuple[ShapeError, ...] = ()


@dataclass(frozen=True)
class Price:
    """What one layer costs for m examples, from shapes alone: ``work`` multiply-adds of forward and backward,
    ``stored`` numbers its cache and output keep (im2col buffers included), ``reads`` numbers of its parameters
    read per evaluation, ``forward_work`` the forward's share of ``work`` (the gradient check re-runs forward
    passes only), ``window`` the largest side of the kernel or window it slides over an image (0: none)."""

    work: int
    stored: int
    reads: int
    forward_work: int
    window: int = 0


@dataclass(frozen=True)
class Formulas:
    """The kind's math in text and LaTeX: the forward, the input's gradient, and each parameter's gradient."""

    forward: str
    forward_latex: str
    backward: str
    backward_latex: str
    grads: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class InputStory:
    """How the gradient flows back through a layer, for /v1/explain's hidden step (layer h + 1's kind telling
    dA_h): ``reason`` (why, ending where the rule follows), ``rule`` (``dA1 = W2^T dZ2``), ``latex`` (with
    ``[l]`` and ``[l+1]`` for the layers), and the parameter ``values`` it uses."""

    reason: str
    rule: str
    latex: str
    values: dict
    # For explain's closing step: how a hidden activation reaches J through this kind, in words ending with the
    # rule, and that rule in LaTeX (with [l] and [l+1]); empty: said from ``rule`` and ``latex``.
    through: str = ""
    through_latex: str = ""


@dataclass(frozen=True)
class Mistake:
    """A typical mistake in this kind's math, for grading: the wrong ``forward`` or ``backward`` (same signatures
    as the kind's; None: the kind's own). A wrong forward changes everything from this layer on; a wrong backward
    this layer's gradients and everything upstream of it; ``grads_only``: only this layer's parameter gradients.
    ``message`` may use {layer}."""

    code: str
    description: str
    message: str
    forward: Callable | None = None
    backward: Callable | None = None
    grads_only: bool = False
    applies: Callable[[dict], bool] = lambda hyper: True  # with these hyperparameters (e.g. train mode only)


@dataclass(frozen=True)
class Kind:
    """A registered layer kind; see the module docstring. ``check(in_shape, params, hyper, layouts, where,
    source)`` is the shape rule: ``params`` as sent, ``where`` the layer's location (``layers[1]``), ``source``
    what fixed its input size (``layers[0].W has 3 rows``); ``source_text(where, params, out_shape)`` says what
    fixes this layer's output size, for the next layer's errors. ``price(in_shape, out_shape, params, hyper, m)``.
    ``new_state(cache, hyper, state)`` returns the updated running statistics (kinds with ``states``).
    ``cache_values(cache)`` names what the cache holds for a learner (``xhat``, ``mean``, ``var``): a value with
    one entry per feature or per channel is 1-D ``(D,)`` or ``(C,)`` (sent back in its parameter's shape, e.g.
    spatial batchnorm's mean); a value shaped like the kind's activations, 2-D ``(rows, m)`` for vectors or 4-D
    ``(m, C, H, W)`` for images, is per example (sent back in the layout or the image layout: xhat, layernorm's
    (1, m) mean); any other rank is sent back as the kind gives it and says so in its docstring (group norm's
    (m, G) statistics per example and group), so that m = 1 cannot confuse the three.
    ``explain_input(h, params, hyper)``: how dA_h flows back through this kind (the layer h + 1), for explain.
    ``default_activation``: None when ``activation`` must be sent. ``source_text`` also takes the layouts.
    ``output_rank``: the feature axes of its output when they differ from ``input_rank`` (flatten: 3 -> 1); the
    shape chain names the kinds that change ranks when a layer gets the wrong one. ``engine_hyper(hyper,
    layouts)``: the hyperparameters the engine runs with, when they depend on how the wire holds arrays
    (flatten's feature order); None: the request's."""

    name: str
    description: str
    input_rank: int
    params: tuple[Param, ...]
    hypers: tuple[Hyper, ...]
    states: tuple[State, ...]
    forward: Callable
    backward: Callable
    check: Callable[..., Checked]
    source_text: Callable[..., str]
    price: Callable[..., Price]
    formulas: Formulas
    mistakes: tuple[Mistake, ...]
    new_state: Callable | None
    cache_values: Callable[[Any], dict[str, Array]]
    explain_input: Callable[[int, dict, dict], InputStory]
    default_activation: str | None
    notes: tuple[str, ...] = field(default=())
    output_rank: int | None = None
    engine_hyper: Callable[[dict, Layouts], dict] | None = None
    # Optional: ``input_grad_bound(dout, cache)``, a cheap upper bound on every |entry| of backward's dx, or None
    # when it would not be cheaper than reading dx. The network skips dx's finiteness reduction when the bound
    # proves it finite (the first layer's dA0 can be the largest array of all).
    input_grad_bound: Callable | None = None

    @property
    def out_rank(self) -> int:
        return self.input_rank if self.output_rank is None else self.output_rank

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name not in ("new_state", "default_activation", "output_rank", "engine_hyper",
                                                "input_grad_bound"):
                raise TypeError(f"layer kind {self.name!r}: {f.name} is required")
        if self.states and self.new_state is None:
            raise TypeError(f"layer kind {self.name!r} has running statistics but no new_state")
        names = [p.name for p in self.params]
        missing = set(names) - set(self.formulas.grads)
        if missing:
            raise TypeError(f"layer kind {self.name!r}: no gradient formula for {sorted(missing)}")
        if self.input_rank not in (1, 3) or self.out_rank not in (1, 3):
            raise TypeError(f"layer kind {self.name!r}: input_rank and output_rank must be 1 or 3")


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if kind.name in KINDS:
        raise ValueError(f"layer kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def param_names() -> frozenset[str]:
    """Every parameter name of every registered kind (the keys module parses d<param><l> with them)."""
    return frozenset(p.name for k in KINDS.values() for p in k.params)


def state_names() -> frozenset[str]:
    return frozenset(s.name for k in KINDS.values() for s in k.states)


# --- shared pieces -----------------------------------------------------------------------------------------

def column(sent: Array, layouts: Layouts) -> Array:
    """A vector (n,) or column (n, 1) -> the column (n, 1) a (n, m) input broadcasts with."""
    return sent.reshape(-1, 1)


def as_sent(grad: Array, sent: Array | None, layouts: Layouts) -> Array:
    """A gradient (or state) in the shape its array was sent in (a column when nothing was sent). A gradient of
    another size (grading's candidate of a mistake that sums over the wrong axis) keeps its entries: as a vector
    when a vector was sent."""
    if sent is None:
        return grad
    if grad.size == sent.size:
        return grad.reshape(sent.shape)
    return grad.reshape(-1) if sent.ndim == 1 else grad


def shape_text(shape: tuple[int, ...]) -> str:
    """(3, 2) -> '(3, 2)'; (3,) -> '(3)' (the form every shape message has used)."""
    return "(" + ", ".join(str(n) for n in shape) + ")"
