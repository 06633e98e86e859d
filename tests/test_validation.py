"""Input validation of POST /v1/gradients: every negative test is ONE mutation of a valid request.

The contract (from the issue): malformed JSON -> 400, wrong Content-Type -> 415, body over the size limit -> 413
(tested in test_errors.py), anything else that fails validation -> 422, always as RFC 9457 problem details
(application/problem+json) whose ``errors`` items carry a ``location`` such as ``layers[1].W``, ``X[0][3]``,
``Y``, ``cost``, ``dropout.masks[0]`` or ``body``, a ``message`` and a ``type`` code.

Each parametrized case states the expected status, the exact location, the error type and (where it helps the
caller) a substring of the message. ``assert_problem`` also checks the common problem shape on every error.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import create_app

URL = "/v1/gradients"
PROBLEM_FIELDS = ("type", "title", "status", "detail", "instance", "errors")
ALLOWED_STATUSES = {200, 400, 413, 415, 422}

ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "softmax")
COSTS = ("binary_cross_entropy", "categorical_cross_entropy", "mean_squared_error")
LAYOUTS = ("features_first", "examples_first")

BCE, CCE, MSE = COSTS
FF, EF = LAYOUTS


# --- the valid request and how to mutate it ------------------------------------------------------------------

def _t(rows: list[list[Any]]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows)]


def valid_request(cost: str = BCE, layout: str = FF, n_out: int | None = None) -> dict:
    """A valid 2 -> 3 -> n_out network with m = 4 examples that exercises every optional field.

    layers[0]: leaky_relu with negative_slope 0.05, b as a column (3, 1); layers[1]: the cost's canonical output
    (sigmoid / softmax / linear), b as a flat vector; dropout with one 0/1 mask; l2, intermediates, include_caches.
    Shapes (features_first): X (2, 4), W1 (3, 2), b1 (3, 1), W2 (n_out, 3), b2 (n_out,), Y (n_out, 4), D1 (3, 4);
    with examples_first X, Y and D1 are transposed.
    """
    if n_out is None:
        n_out = {BCE: 1, CCE: 3, MSE: 2}[cost]
    output = {BCE: "sigmoid", CCE: "softmax", MSE: "linear"}[cost]
    X = [[1.0, 2.0, -1.0, 0.5], [0.5, -1.5, 2.0, 1.0]]
    W2 = [[0.7, -0.8, 0.9], [-0.2, 0.3, 0.1], [0.4, 0.5, -0.6]][:n_out]
    if cost == BCE:
        Y = [[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]][:n_out]
    elif cost == CCE:
        classes = [0, 2, 1, 0]
        Y = [[1 if c % n_out == k else 0 for c in classes] for k in range(n_out)]
    else:
        Y = [[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -0.75, 3.0], [0.1, 0.2, 0.3, 0.4]][:n_out]
    D1 = [[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]]
    if layout == EF:
        X, Y, D1 = _t(X), _t(Y), _t(D1)
    return {
        "layers": [
            {"W": [[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]], "b": [[0.01], [0.02], [0.03]],
             "activation": "leaky_relu", "negative_slope": 0.05},
            {"W": W2, "b": [0.05, -0.05, 0.0][:n_out], "activation": output},
        ],
        "X": X,
        "Y": Y,
        "cost": cost,
        "layout": layout,
        "l2": 0.01,
        "dropout": {"keep_prob": 0.8, "masks": [D1]},
        "intermediates": "mean",
        "include_caches": True,
    }


class Raw:
    """A JSON token written verbatim (NaN, Infinity, 1e400, ...), which json.dumps cannot produce from a float."""

    def __init__(self, token: str):
        self.token = token


_RAW = re.compile(r'"@@RAW@@(.*?)@@"')


def encode(body: Any) -> bytes:
    """JSON with Raw tokens spliced in; NaN / Infinity floats are written as the NaN / Infinity tokens."""
    def default(o):
        if isinstance(o, Raw):
            return f"@@RAW@@{o.token}@@"
        raise TypeError(type(o))

    return _RAW.sub(lambda m: m.group(1), json.dumps(body, default=default)).encode()


def _walk(body: Any, path: tuple) -> tuple[Any, Any]:
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    return parent, path[-1]


def set_(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(body: dict) -> None:
        parent, key = _walk(body, path)
        parent[key] = copy.deepcopy(value)
    mutate.__name__ = f"set {path}"
    return mutate


def del_(path: tuple) -> Callable[[dict], None]:
    def mutate(body: dict) -> None:
        parent, key = _walk(body, path)
        del parent[key]
    return mutate


def rename(path: tuple, new_key: str) -> Callable[[dict], None]:
    def mutate(body: dict) -> None:
        parent, key = _walk(body, path)
        parent[new_key] = parent.pop(key)
    return mutate


# --- helpers -------------------------------------------------------------------------------------------------

def make_app(**config):
    # api_keys=[] so that a GRADIENT_API_KEYS in the environment cannot turn every case into a 401.
    return create_app({"api_keys": [], **config})


@pytest.fixture(scope="module")
def vclient():
    return make_app().test_client()


def send(client, body: Any, content_type: str | None = "application/json"):
    data = body if isinstance(body, bytes) else encode(body)
    if content_type is None:
        return client.post(URL, data=data)
    return client.post(URL, data=data, content_type=content_type)


def assert_problem(resp, status: int) -> dict:
    """The common shape of every error: problem+json, the RFC 9457 fields, status equal, no traceback."""
    text = resp.get_data(as_text=True)
    assert resp.status_code == status, text
    assert "Traceback" not in text
    assert resp.mimetype == "application/problem+json", resp.mimetype
    body = orjson.loads(resp.data)
    for field in PROBLEM_FIELDS:
        assert field in body, f"problem field {field!r} missing: {body}"
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["type"], str) and body["type"]
    assert body["instance"] == URL
    assert isinstance(body["errors"], list) and body["errors"], "errors must list at least one item"
    for item in body["errors"]:
        assert set(item) >= {"location", "message", "type"}, item
        assert all(isinstance(item[k], str) and item[k] for k in ("location", "message", "type")), item
    return body


def assert_error(resp, status: int, location: str, type_: str | None = None, message: str | None = None,
                 others: frozenset[str] | set[str] = frozenset()) -> dict:
    """Status, the problem shape, and an error item at exactly ``location`` (with ``type_`` and a ``message``
    substring); any other item must be at one of ``others`` (a single mutation should not cause noise)."""
    body = assert_problem(resp, status)
    locations = [e["location"] for e in body["errors"]]
    assert location in locations, f"expected an error at {location!r}, got {body['errors']}"
    item = next(e for e in body["errors"] if e["location"] == location)
    if type_ is not None:
        assert item["type"] == type_, item
    if message is not None:
        assert message in item["message"], item
    unexpected = set(locations) - {location} - set(others)
    assert not unexpected, f"unexpected extra errors at {unexpected}: {body['errors']}"
    return item


def assert_ok(resp) -> dict:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    return orjson.loads(resp.data)  # orjson rejects NaN / Infinity: a 200 never carries them


# --- baselines: every builder variant is accepted -----------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cost,n_out", [(BCE, 1), (BCE, 2), (CCE, 3), (CCE, 2), (MSE, 2), (MSE, 1)])
def test_valid_request_is_accepted(vclient, cost, layout, n_out):
    body = assert_ok(send(vclient, valid_request(cost, layout, n_out)))
    m = 4
    AL = body["AL"]
    assert (len(AL), len(AL[0])) == ((n_out, m) if layout == FF else (m, n_out))
    assert set(body["gradients"]) >= {"dW1", "dW2", "db1", "db2", "dZ1", "dZ2", "dA0", "dA1", "dA2"}
    assert body["caches"] is not None


def test_minimal_valid_request_without_optional_fields(vclient):
    body = valid_request()
    for key in ("layout", "l2", "dropout", "intermediates", "include_caches"):
        del body[key]
    assert_ok(send(vclient, body))


@pytest.mark.parametrize("output", ACTIVATIONS)
def test_mean_squared_error_pairs_with_every_output(vclient, output):
    body = valid_request(MSE)
    body["layers"][1]["activation"] = output
    assert_ok(send(vclient, body))


@pytest.mark.parametrize("mutate", [
    set_(("layers", 0, "b"), [0.01, 0.02, 0.03]),            # b as a vector
    set_(("layers", 1, "b"), [[0.05]]),                       # b as a column
    set_(("Y",), [1, 0, 1, 0]),                               # flat Y when n_y = 1
    set_(("dropout", "keep_prob"), 1),                        # keep_prob = 1 is inside (0, 1]
    set_(("l2",), 0),
    set_(("dropout",), None),
    set_(("layers", 0, "negative_slope"), None),
    set_(("X", 0, 0), 7),                                     # ints are numbers
    set_(("X", 0, 0), Raw("1e-400")),                         # underflow rounds to 0: finite
], ids=["b_vector", "b_column", "flat_Y", "keep_prob_1", "l2_0", "dropout_null",
        "negative_slope_null", "int_element", "underflow"])
def test_accepted_variants(vclient, mutate):
    body = valid_request()
    mutate(body)
    assert_ok(send(vclient, body))


def test_cce_class_indices_are_accepted(vclient):
    for layout in LAYOUTS:
        body = valid_request(CCE, layout)
        body["Y"] = [0, 2, 1.0, 0]
        assert_ok(send(vclient, body))


# --- the mutation table --------------------------------------------------------------------------------------
# (base kwargs, mutation, expected status, location, type, message substring[, other allowed locations])

def case(id, mutate, location, type_=None, message=None, status=422, base=None, others=()):
    return pytest.param(base or {}, mutate, status, location, type_, message, frozenset(others), id=id)


STRUCTURE = [
    # ragged matrices
    case("X_ragged", set_(("X", 1), [1.0, 2.0]), "X", "ragged_matrix", "row 1 has 2 entries but row 0 has 4"),
    case("W1_ragged", set_(("layers", 0, "W", 2), [0.1]), "layers[0].W", "ragged_matrix", "row 2 has 1 entries"),
    case("W2_ragged", set_(("layers", 1, "W"), [[0.1, 0.2, 0.3], [0.1]]), "layers[1].W", "ragged_matrix"),
    case("b_matrix_ragged", set_(("layers", 0, "b"), [[0.1], [0.2, 0.3], [0.1]]), "layers[0].b", "ragged_matrix"),
    case("mask_ragged", set_(("dropout", "masks", 0, 1), [1, 0]), "dropout.masks[0]", "ragged_matrix",
         "row 1 has 2 entries"),
    case("Y_ragged", set_(("Y", 1), [0.5]), "Y", "ragged_matrix", base={"cost": MSE}),
    # empty matrices, rows, lists: located at the empty list itself
    case("X_empty", set_(("X",), []), "X", None, "empty"),
    case("X_empty_row", set_(("X",), [[]]), "X[0]", None, "empty"),
    case("X_row_empty_later", set_(("X", 1), []), "X[1]", None, "empty"),
    case("W_empty", set_(("layers", 0, "W"), []), "layers[0].W", None, "empty"),
    case("W_empty_row", set_(("layers", 1, "W"), [[]]), "layers[1].W[0]", None, "empty"),
    case("b_empty", set_(("layers", 1, "b"), []), "layers[1].b", None, "empty"),
    case("b_empty_row", set_(("layers", 0, "b"), [[]]), "layers[0].b[0]", None, "empty"),
    case("Y_empty", set_(("Y",), []), "Y", None, "empty"),
    case("Y_empty_row", set_(("Y",), [[]]), "Y[0]", None, "empty"),
    case("mask_empty", set_(("dropout", "masks", 0), []), "dropout.masks[0]", None, "empty"),
    case("mask_empty_row", set_(("dropout", "masks", 0, 2), []), "dropout.masks[0][2]", None, "empty"),
    case("layers_empty", set_(("layers",), []), "layers", None, "empty"),
    # wrong containers
    case("layers_object", set_(("layers",), {"W": [[1.0]]}), "layers", "list_type"),
    case("layer_number", set_(("layers", 0), 5), "layers[0]", "model_type", "got 5"),
    case("X_flat", set_(("X",), [1.0, 2.0, 3.0, 4.0]), "X[0]", "list_type", "got 1.0", others={"X[1]", "X[2]", "X[3]"}),
    case("X_string", set_(("X",), "abc"), "X", "list_type", "got the string 'abc'"),
    case("W_flat", set_(("layers", 1, "W"), [0.7, -0.8, 0.9]), "layers[1].W[0]", "list_type",
         others={"layers[1].W[1]", "layers[1].W[2]"}),
    case("Y_string", set_(("Y",), "abc"), "Y", "matrix_or_vector_type", "list of numbers or a list of rows"),
    case("Y_object", set_(("Y",), {}), "Y", "matrix_or_vector_type"),
    case("Y_matrix_then_number", set_(("Y",), [[1, 0, 1, 0], 1]), "Y[1]", "list_type"),
    case("Y_vector_then_list", set_(("Y",), [1, [0], 1, 0]), "Y[1]", "float_type", "got a list"),
    case("b_column_then_number", set_(("layers", 0, "b"), [[0.1], 0.2, [0.3]]), "layers[0].b[1]", "list_type"),
    case("dropout_list", set_(("dropout",), [0.8]), "dropout", "model_type"),
    case("masks_object", set_(("dropout", "masks"), {"0": [[1]]}), "dropout.masks", "list_type"),
    # required fields
    case("missing_layers", del_(("layers",)), "layers", "missing", "'layers' is missing"),
    case("missing_X", del_(("X",)), "X", "missing", "'X' is missing"),
    case("missing_Y", del_(("Y",)), "Y", "missing", "'Y' is missing"),
    case("missing_cost", del_(("cost",)), "cost", "missing", "'cost' is missing"),
    case("missing_W", del_(("layers", 1, "W")), "layers[1].W", "missing"),
    case("missing_b", del_(("layers", 1, "b")), "layers[1].b", "missing"),
    case("missing_activation", del_(("layers", 0, "activation")), "layers[0].activation", "missing"),
    case("missing_keep_prob", del_(("dropout", "keep_prob")), "dropout.keep_prob", "missing"),
    case("missing_masks", del_(("dropout", "masks")), "dropout.masks", "missing"),
]

SHAPES = [
    case("W1_cols_vs_X_features", set_(("layers", 0, "W"), [[0.1, 0.2, 0.3]] * 3), "layers[0].W", "shape_mismatch",
         "needs 2 columns because X has 2 features"),
    case("W2_cols_vs_W1_rows", set_(("layers", 1, "W"), [[0.1, 0.2]]), "layers[1].W", "shape_mismatch",
         "needs 3 columns because layers[0].W has 3 rows"),
    case("W1_rows_break_chain", set_(("layers", 0, "W"), [[0.1, 0.2]] * 2), "layers[1].W", "shape_mismatch",
         "needs 2 columns", others={"layers[0].b", "dropout.masks[0]"}),
    case("b1_rows", set_(("layers", 0, "b"), [[0.1], [0.2]]), "layers[0].b", "shape_mismatch", "W has 3 rows"),
    case("b2_rows", set_(("layers", 1, "b"), [0.1, 0.2]), "layers[1].b", "shape_mismatch", "W has 1 rows"),
    case("b_n_by_2", set_(("layers", 0, "b"), [[0.0, 0.0]] * 3), "layers[0].b", "shape_mismatch", "b is (3, 2)"),
    case("b_row_vector", set_(("layers", 0, "b"), [[0.1, 0.2, 0.3]]), "layers[0].b", "shape_mismatch",
         "b is (1, 3)"),
    case("Y_rows_vs_units", set_(("Y",), [[1, 0, 1, 0], [0, 1, 0, 1]]), "Y", "shape_mismatch",
         "must be (1, 4)"),
    case("Y_cols_vs_m", set_(("Y",), [[1, 0, 1]]), "Y", "shape_mismatch", "m = 4"),
    case("Y_flat_wrong_m", set_(("Y",), [1, 0, 1]), "Y", "shape_mismatch", "flat list of 3 labels but X has m = 4"),
    case("mse_Y_rows", set_(("Y",), [[0.5, -1.0, 2.0, 0.0]]), "Y", "shape_mismatch", "must be (2, 4)",
         base={"cost": MSE}),
    # flat Y means one output unit (BCE and MSE)
    case("bce_flat_Y_two_units", set_(("Y",), [1, 0, 1, 0]), "Y", "shape_mismatch", "send Y as a matrix",
         base={"cost": BCE, "n_out": 2}),
    case("mse_flat_Y_two_units", set_(("Y",), [0.5, -1.0, 2.0, 0.0]), "Y", "shape_mismatch", "send Y as a matrix",
         base={"cost": MSE}),
    # examples_first: the same arrays sent features-first are caught
    case("ef_X_transposed", set_(("X",), [[1.0, 2.0, -1.0, 0.5], [0.5, -1.5, 2.0, 1.0]]), "layers[0].W",
         "shape_mismatch", "needs 4 columns because X has 4 features", base={"layout": EF},
         others={"dropout.masks[0]"}),
    case("ef_Y_transposed", set_(("Y",), [[1, 0, 1, 0]]), "Y", "shape_mismatch", "must be (4, 1) (examples_first)",
         base={"layout": EF}),
    case("ef_mse_Y_transposed", set_(("Y",), [[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -0.75, 3.0]]), "Y",
         "shape_mismatch", "must be (4, 2)", base={"layout": EF, "cost": MSE}),
    case("ef_Y_flat_wrong_m", set_(("Y",), [1, 0, 1]), "Y", "shape_mismatch", base={"layout": EF}),
    case("ef_mask_transposed", set_(("dropout", "masks", 0), [[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]]),
         "dropout.masks[0]", "shape_mismatch", "mask D1 is (3, 4) but A1 is (4, 3)", base={"layout": EF}),
    case("ef_W1_cols", set_(("layers", 0, "W"), [[0.1, 0.2, 0.3]] * 3), "layers[0].W", "shape_mismatch",
         "needs 2 columns because X has 2 features", base={"layout": EF}),
    case("ef_b_rows", set_(("layers", 1, "b"), [0.1, 0.2]), "layers[1].b", "shape_mismatch", base={"layout": EF}),
]

LABELS = [
    case("bce_label_above_1", set_(("Y", 0, 2), 1.5), "Y", "label_domain", "[0, 1]"),
    case("bce_label_below_0", set_(("Y", 0, 1), -0.1), "Y", "label_domain", "[0, 1]"),
    case("bce_flat_label_above_1", set_(("Y",), [1, 0, 2, 0]), "Y", "label_domain", "[0, 1]"),
    case("ef_bce_label_above_1", set_(("Y", 2, 0), 1.5), "Y", "label_domain", "[0, 1]", base={"layout": EF}),
    case("cce_two_ones", set_(("Y", 1, 0), 1), "Y", "label_domain", "one-hot", base={"cost": CCE}),
    case("cce_all_zero_column", set_(("Y", 0, 0), 0), "Y", "label_domain", "one-hot", base={"cost": CCE}),
    case("cce_soft_column", set_(("Y",), [[0.5, 0, 0, 1], [0, 0, 1, 0], [0.5, 1, 0, 0]]), "Y", "label_domain",
         "one-hot", base={"cost": CCE}),
    case("cce_value_2", set_(("Y",), [[2, 0, 0, 1], [0, 0, 1, 0], [-1, 1, 0, 0]]), "Y", "label_domain",
         "one-hot", base={"cost": CCE}),
    case("ef_cce_two_ones", set_(("Y", 0, 1), 1), "Y", "label_domain", "one-hot", base={"cost": CCE, "layout": EF}),
    case("cce_index_fraction", set_(("Y",), [0, 1.5, 2, 0]), "Y[1]", "label_domain", "integers in [0, 3)",
         base={"cost": CCE}),
    case("cce_index_negative", set_(("Y",), [0, -1, 2, 0]), "Y[1]", "label_domain", "got -1",
         base={"cost": CCE}),
    case("cce_index_too_big", set_(("Y",), [0, 1, 3, 0]), "Y[2]", "label_domain", "integers in [0, 3)",
         base={"cost": CCE}),
    case("cce_index_huge", set_(("Y",), [0, 1, 2, 1e300]), "Y[3]", "label_domain", base={"cost": CCE}),
    case("ef_cce_index_too_big", set_(("Y",), [0, 1, 2, 5]), "Y[3]", "label_domain", base={"cost": CCE, "layout": EF}),
    case("cce_indices_wrong_m", set_(("Y",), [0, 1, 2]), "Y", "shape_mismatch", "m = 4", base={"cost": CCE}),
]

DROPOUT = [
    case("masks_too_few", set_(("dropout", "masks"), []), "dropout.masks", "shape_mismatch",
         "1 for 2 layers, got 0"),
    case("masks_too_many", set_(("dropout", "masks"), [[[1] * 4] * 3] * 2), "dropout.masks", "shape_mismatch",
         "got 2"),
    case("mask_rows", set_(("dropout", "masks", 0), [[1] * 4] * 2), "dropout.masks[0]", "shape_mismatch",
         "mask D1 is (2, 4) but A1 is (3, 4)"),
    case("mask_cols", set_(("dropout", "masks", 0), [[1] * 3] * 3), "dropout.masks[0]", "shape_mismatch",
         "mask D1 is (3, 3)"),
    case("mask_value_half", set_(("dropout", "masks", 0, 1, 2), 0.5), "dropout.masks[0]", "mask_values", "0 and 1"),
    case("mask_value_2", set_(("dropout", "masks", 0, 0, 0), 2), "dropout.masks[0]", "mask_values", "0 and 1"),
    case("mask_value_minus_1", set_(("dropout", "masks", 0, 2, 3), -1), "dropout.masks[0]", "mask_values"),
    case("ef_mask_value", set_(("dropout", "masks", 0, 3, 2), 0.5), "dropout.masks[0]", "mask_values",
         base={"layout": EF}),
    case("keep_prob_0", set_(("dropout", "keep_prob"), 0), "dropout.keep_prob", "greater_than", "greater than 0"),
    case("keep_prob_negative", set_(("dropout", "keep_prob"), -0.1), "dropout.keep_prob", "greater_than",
         "got -0.1"),
    case("keep_prob_1.5", set_(("dropout", "keep_prob"), 1.5), "dropout.keep_prob", "less_than_equal",
         "less than or equal to 1"),
    case("keep_prob_NaN", set_(("dropout", "keep_prob"), Raw("NaN")), "dropout.keep_prob", "finite_number",
         "finite"),
    case("keep_prob_string", set_(("dropout", "keep_prob"), "0.5"), "dropout.keep_prob", "float_type",
         "got the string '0.5'"),
    case("keep_prob_true", set_(("dropout", "keep_prob"), True), "dropout.keep_prob", "float_type", "got true"),
]

FIELDS = [
    # unknown fields
    case("unknown_top", set_(("learning_rate",), 0.1), "learning_rate", "extra_forbidden",
         "unknown field 'learning_rate'"),
    case("unknown_in_layer", set_(("layers", 1, "bias"), [0.1]), "layers[1].bias", "extra_forbidden",
         "unknown field 'bias'"),
    case("unknown_in_dropout", set_(("dropout", "seed"), 1), "dropout.seed", "extra_forbidden",
         "unknown field 'seed'"),
    case("unknown_top_named_vector", set_(("vector",), 1), "vector", "extra_forbidden", "unknown field 'vector'"),
    case("unknown_in_layer_named_matrix", set_(("layers", 0, "matrix"), 1), "layers[0].matrix", "extra_forbidden",
         "unknown field 'matrix'"),
    case("alpha_and_negative_slope", set_(("layers", 0, "alpha"), 0.1), "layers[0].alpha", "extra_forbidden",
         "did you mean 'negative_slope'"),
    # enums
    case("activation_unknown", set_(("layers", 0, "activation"), "swish"), "layers[0].activation", "literal_error",
         "got the string 'swish'", others={"layers[0].negative_slope"}),
    case("activation_case", set_(("layers", 1, "activation"), "Sigmoid"), "layers[1].activation", "literal_error",
         "'sigmoid'"),
    case("activation_null", set_(("layers", 1, "activation"), None), "layers[1].activation", "literal_error",
         "got null"),
    case("cost_unknown", set_(("cost",), "hinge"), "cost", "literal_error", "'binary_cross_entropy'"),
    case("cost_number", set_(("cost",), 1), "cost", "literal_error"),
    case("layout_unknown", set_(("layout",), "rows"), "layout", "literal_error", "'features_first'"),
    case("layout_null", set_(("layout",), None), "layout", "literal_error"),
    case("intermediates_unknown", set_(("intermediates",), "sum"), "intermediates", "literal_error", "'per_example'"),
    case("intermediates_bool", set_(("intermediates",), True), "intermediates", "literal_error"),
    # placement and options of activations
    case("softmax_hidden", set_(("layers", 0, "activation"), "softmax"), "layers[0].activation",
         "activation_placement", "output layer only", others={"layers[0].negative_slope"}),
    case("softmax_hidden_no_slope", set_(("layers", 0), {"W": [[0.1, -0.2]] * 3, "b": [0, 0, 0],
                                                         "activation": "softmax"}),
         "layers[0].activation", "activation_placement", "output layer only"),
    case("negative_slope_on_sigmoid", set_(("layers", 1, "negative_slope"), 0.1), "layers[1].negative_slope",
         None, "leaky_relu only, not sigmoid"),
    case("alpha_is_not_a_field", set_(("layers", 1, "alpha"), 0.1), "layers[1].alpha", "extra_forbidden",
         "did you mean 'negative_slope'"),
    case("negative_slope_string", set_(("layers", 0, "negative_slope"), "0.1"), "layers[0].negative_slope",
         "float_type", "got the string '0.1'"),
    # l2 and include_caches
    case("l2_negative", set_(("l2",), -1), "l2", "greater_than_equal", "got -1"),
    case("l2_tiny_negative", set_(("l2",), -1e-300), "l2", "greater_than_equal"),
    case("l2_string", set_(("l2",), "0.1"), "l2", "float_type", "got the string '0.1'"),
    case("l2_null", set_(("l2",), None), "l2", "float_type", "got null"),
    case("l2_true", set_(("l2",), True), "l2", "float_type", "got true"),
    case("l2_list", set_(("l2",), [0.1]), "l2", "float_type", "got a list"),
    case("l2_NaN", set_(("l2",), Raw("NaN")), "l2", "finite_number"),
    case("l2_1e400", set_(("l2",), Raw("1e400")), "l2", "finite_number"),
    case("include_caches_string", set_(("include_caches",), "true"), "include_caches", "bool_type",
         "got the string 'true'"),
    case("include_caches_1", set_(("include_caches",), 1), "include_caches", "bool_type", "got 1"),
    case("include_caches_0", set_(("include_caches",), 0), "include_caches", "bool_type"),
    case("include_caches_null", set_(("include_caches",), None), "include_caches", "bool_type", "got null"),
]


def _pairing_cases():
    out = []
    for output in ACTIVATIONS:
        if output != "sigmoid":
            out.append(case(f"bce_with_{output}", set_(("layers", 1, "activation"), output), "cost", "cost_pairing",
                            base={"cost": BCE}))
        if output != "softmax":
            out.append(case(f"cce_with_{output}", set_(("layers", 1, "activation"), output), "cost", "cost_pairing",
                            base={"cost": CCE}))
    return out


PAIRINGS = _pairing_cases()


@pytest.mark.parametrize("base,mutate,status,location,type_,message,others",
                         STRUCTURE + SHAPES + LABELS + DROPOUT + FIELDS + PAIRINGS)
def test_single_mutation_is_rejected(vclient, base, mutate, status, location, type_, message, others):
    body = valid_request(**base)
    mutate(body)
    item = assert_error(send(vclient, body), status, location, type_, message, others)
    if type_ == "cost_pairing":
        # the message names both sides of the pair
        assert body["cost"] in item["message"], item
        assert repr(body["layers"][1]["activation"]) in item["message"] or \
            body["layers"][1]["activation"] in item["message"], item
        needed = {BCE: "sigmoid", CCE: "softmax"}[body["cost"]]
        assert needed in item["message"], item


# --- element-level problems: every numeric slot, every bad kind -----------------------------------------------

# path to one element -> its expected location (features_first mean_squared_error base: n_out = 2, m = 4, so
# that b2 is a flat vector of two numbers; a list in b2[0] would turn b2 into a valid column)
ELEMENT_SLOTS = {
    ("X", 0, 3): "X[0][3]",
    ("layers", 0, "W", 1, 0): "layers[0].W[1][0]",
    ("layers", 1, "W", 0, 2): "layers[1].W[0][2]",
    ("layers", 0, "b", 2, 0): "layers[0].b[2][0]",
    ("layers", 1, "b", 1): "layers[1].b[1]",
    ("Y", 0, 2): "Y[0][2]",
    ("dropout", "masks", 0, 1, 2): "dropout.masks[0][1][2]",
}
SCALAR_SLOTS = {
    ("dropout", "keep_prob"): "dropout.keep_prob",
    ("l2",): "l2",
    ("layers", 0, "negative_slope"): "layers[0].negative_slope",
}

NOT_A_NUMBER = {
    "string": ("0.5", "got the string '0.5'"),
    "empty_string": ("", "got the string ''"),
    "null": (None, "got null"),
    "object": ({"value": 1}, "got an object"),
    "nested_list": ([1.0], "got a list"),
    "deep_list": ([[[[1.0]]]], "got a list"),
    "true": (True, "got true"),
    "false": (False, "got false"),
}

NON_FINITE = {
    "NaN": Raw("NaN"),
    "Infinity": Raw("Infinity"),
    "-Infinity": Raw("-Infinity"),
    "1e400": Raw("1e400"),
    "-1e400": Raw("-1e400"),
    "int_10^400": Raw("1" + "0" * 400),
    # The hardening issue: a 5,000-digit integer was a 400 "malformed" while 1e999999 was a 422; both are 422.
    "int_5000_digits": Raw("9" * 5000),
    "-int_5000_digits": Raw("-" + "9" * 5000),
    "1e999999": Raw("1e999999"),
}


@pytest.mark.parametrize("kind", list(NOT_A_NUMBER))
@pytest.mark.parametrize("path,location", list(ELEMENT_SLOTS.items()) + list(SCALAR_SLOTS.items()),
                         ids=list(ELEMENT_SLOTS.values()) + list(SCALAR_SLOTS.values()))
def test_non_number_where_number_belongs(vclient, path, location, kind):
    value, message = NOT_A_NUMBER[kind]
    body = valid_request(MSE)
    set_(path, value)(body)
    if path == ("layers", 0, "negative_slope") and value is None:
        assert_ok(send(vclient, body))  # negative_slope is optional: null means the default
        return
    assert_error(send(vclient, body), 422, location, "float_type", message)


@pytest.mark.parametrize("kind", list(NON_FINITE))
@pytest.mark.parametrize("path,location", list(ELEMENT_SLOTS.items()) + list(SCALAR_SLOTS.items()),
                         ids=list(ELEMENT_SLOTS.values()) + list(SCALAR_SLOTS.values()))
def test_non_finite_number_is_rejected_with_its_location(vclient, path, location, kind):
    body = valid_request(MSE)
    set_(path, NON_FINITE[kind])(body)
    assert_error(send(vclient, body), 422, location, "finite_number", "finite")


@pytest.mark.parametrize("layout,path,location", [
    (EF, ("X", 3, 1), "X[3][1]"),
    (EF, ("Y", 2, 0), "Y[2][0]"),
    (EF, ("dropout", "masks", 0, 3, 2), "dropout.masks[0][3][2]"),
    (FF, ("Y", 1), "Y[1]"),  # flat Y
])
@pytest.mark.parametrize("value,type_", [(Raw("NaN"), "finite_number"), (True, "float_type"),
                                         ("1", "float_type")], ids=["NaN", "true", "string"])
def test_element_location_in_other_shapes(vclient, layout, path, location, value, type_):
    body = valid_request(layout=layout)
    if path == ("Y", 1):
        body["Y"] = [1, 0, 1, 0]
    set_(path, value)(body)
    assert_error(send(vclient, body), 422, location, type_)


def test_every_bad_element_is_listed(vclient):
    body = valid_request()
    body["X"][0][1] = Raw("NaN")
    body["X"][1][3] = "x"
    body["layers"][1]["W"][0][0] = True
    resp = send(vclient, body)
    problem = assert_problem(resp, 422)
    assert {e["location"] for e in problem["errors"]} == {"X[0][1]", "X[1][3]", "layers[1].W[0][0]"}
    assert problem["detail"].startswith("3 problems in the request")


@pytest.mark.parametrize("raw,location,key", [
    ('"cost": "mean_squared_error", "cost": "binary_cross_entropy"', "cost", "cost"),
    ('"l2": 0.1, "l2": 0.2', "l2", "l2"),
], ids=["cost", "l2"])
def test_duplicate_top_level_keys_are_422_naming_the_key(vclient, raw, location, key):
    body = encode(valid_request(MSE))
    raw_body = body[:1] + raw.encode() + b", " + body[1:].replace(b'"cost":"mean_squared_error",', b"")
    item = assert_error(send(vclient, raw_body), 422, location, "duplicate_key")
    assert repr(key) in item["message"]


def test_duplicate_key_in_a_layer_is_422_at_the_layer(vclient):
    body = encode(valid_request(MSE))
    raw = body.replace(b'"activation": "leaky_relu"', b'"activation": "leaky_relu", "activation": "relu"', 1)
    assert raw != body
    assert_error(send(vclient, raw), 422, "layers[0].activation", "duplicate_key")


# --- the body as a whole -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,message", [
    (b"[]", "got a list"),
    (b'[{"cost": "mean_squared_error"}]', "got a list"),
    (b'"layers"', "got the string 'layers'"),
    (b"42", "got 42"),
    (b"null", "got null"),
    (b"true", "got true"),
    (b"NaN", None),
], ids=["array", "array_of_object", "string", "number", "null", "true", "NaN"])
def test_body_not_an_object(vclient, raw, message):
    assert_error(send(vclient, raw), 422, "body", "model_type", message)


def test_valid_request_wrapped_in_array(vclient):
    raw = b"[" + encode(valid_request()) + b"]"
    assert_error(send(vclient, raw), 422, "body", "model_type", "got a list")


@pytest.mark.parametrize("raw", [
    b"",
    b"   \n",
    b"{",
    b'{"layers": [}',
    b"{'cost': 'mean_squared_error'}",
    b'{"cost": "mean_squared_error",}',
    b'{"cost": mean_squared_error}',
    b'{"X": [[1, 2]]} trailing',
    b'{"X": [[1 2]]}',
    b'{"X": [[0x10]]}',
    b'{"X": [[.5]]}',
    b'{"X": [[+1]]}',
    b'{"X": [[1.]]}',
    b'{"cost": "\\q"}',
], ids=["empty", "whitespace", "unclosed", "bad_bracket", "single_quotes", "trailing_comma", "bare_word",
        "trailing_garbage", "missing_comma", "hex", "leading_dot", "plus_sign", "trailing_dot", "bad_escape"])
def test_malformed_json_is_400(vclient, raw):
    item = assert_error(send(vclient, raw), 400, "body", "json_invalid")
    assert "JSON" in item["message"]


def test_truncated_valid_request_is_400(vclient):
    raw = encode(valid_request())
    assert_error(send(vclient, raw[: len(raw) // 2]), 400, "body", "json_invalid")


@pytest.mark.parametrize("raw", [
    b"\xff\xfe{}",
    b'{"cost": "\xff"}',
    b'{"cost": "binary_cross_entropy\xc3"}',
    b'{"cost": "\xed\xa0\x80"}',  # an encoded surrogate
], ids=["leading_ff", "ff_in_string", "truncated_sequence", "surrogate"])
def test_invalid_utf8_is_400(vclient, raw):
    assert_error(send(vclient, raw), 400, "body", "json_invalid")


@pytest.mark.parametrize("where", ["top", "X", "W", "Y"])
def test_deeply_nested_arrays_are_refused_without_crashing(vclient, where):
    deep = "[" * 10_000 + "]" * 10_000
    body = valid_request()
    if where == "top":
        raw = deep.encode()
    else:
        target = {"X": ("X", 0, 0), "W": ("layers", 0, "W", 0, 0), "Y": ("Y", 0, 0)}[where]
        set_(target, Raw(deep))(body)
        raw = encode(body)
    item = assert_error(send(vclient, raw), 400, "body", "json_invalid")
    assert "recursion limit" in item["message"]


def test_moderately_nested_list_in_a_number_slot_is_422_at_the_element(vclient):
    body = valid_request()
    body["X"][1][2] = Raw("[" * 50 + "1" + "]" * 50)
    assert_error(send(vclient, body), 422, "X[1][2]", "float_type", "got a list")


# --- content type --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json",
                                          "application/xml", None],
                         ids=["text_plain", "urlencoded", "text_json", "xml", "missing"])
def test_wrong_content_type_is_415(vclient, content_type):
    item = assert_error(send(vclient, valid_request(), content_type), 415, "header.Content-Type", "http_415")
    assert "application/json" in item["message"]


def test_form_data_is_415(vclient):
    resp = vclient.post(URL, data={"layers": "[]", "cost": "mean_squared_error"})
    assert_error(resp, 415, "header.Content-Type", "http_415")
    resp = vclient.post(URL, data={"file": (__import__("io").BytesIO(encode(valid_request())), "req.json")},
                        content_type="multipart/form-data")
    item = assert_error(resp, 415, "header.Content-Type", "http_415")
    assert "multipart/form-data" in item["message"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/JSON"])
def test_json_content_type_variants_are_accepted(vclient, content_type):
    assert_ok(send(vclient, valid_request(), content_type))


# --- configurable limits -------------------------------------------------------------------------------------
# the valid request: L = 2, units 3 and 1, n_x = 2, m = 4,
# elements X 8 + Y 4 + W1 6 + b1 3 + W2 3 + b2 1 + D1 12 = 37, work 3*2*4 + 1*3*4 = 36,
# activations (2 + 3 + 1) * 4 = 24

@pytest.mark.parametrize("config,location,message", [
    ({"max_layers": 1}, "layers", "the number of layers is 2, over this service's limit of 1"),
    ({"max_units": 2}, "layers[0].W", "the number of units is 3, over this service's limit of 2"),
    ({"max_examples": 3}, "X", "the number of examples m is 4, over this service's limit of 3"),
    ({"max_elements": 36}, "body", "the total number of array elements is 37"),
    ({"max_work": 35}, "body", "is 36, over this service's limit of 35"),
    ({"max_activations": 23}, "body", "activation entries (sum over l = 0..L of n_l * m), which sizes memory and "
                                      "the response, is 24, over this service's limit of 23"),
], ids=["max_layers", "max_units", "max_examples", "max_elements", "max_work", "max_activations"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_limits_are_422_limit_exceeded(config, location, message, layout):
    client = make_app(**config).test_client()
    resp = send(client, valid_request(layout=layout))
    assert_error(resp, 422, location, "limit_exceeded", message)
    assert orjson.loads(resp.data)["type"].endswith("limit-exceeded")


def test_input_features_over_max_units():
    client = make_app(max_units=1).test_client()
    resp = send(client, valid_request())
    assert_error(resp, 422, "X", "limit_exceeded", "the number of input features is 2", others={"layers[0].W"})


@pytest.mark.parametrize("config", [{"max_layers": 2}, {"max_units": 3}, {"max_examples": 4},
                                    {"max_elements": 37}, {"max_work": 36}, {"max_activations": 24}],
                         ids=["max_layers", "max_units", "max_examples", "max_elements", "max_work",
                              "max_activations"])
def test_limits_are_inclusive(config):
    assert_ok(send(make_app(**config).test_client(), valid_request()))


def test_a_small_body_cannot_ask_for_a_huge_pass():
    """114 KB of JSON that would make 4096 x 4000 activation arrays (and a response of hundreds of MB)."""
    m = 4000
    body = {"layers": [{"W": [[0.01]] * 4096, "b": [0.0] * 4096, "activation": "tanh"},
                       {"W": [[0.001] * 4096], "b": [0.0], "activation": "sigmoid"}],
            "X": [[0.5] * m], "Y": [[1.0] * m], "cost": "binary_cross_entropy"}
    resp = send(make_app().test_client(), body)
    assert_error(resp, 422, "body", "limit_exceeded", f"is {(1 + 4096 + 1) * m}, over this service's limit of 4000000")


def test_limits_are_checked_before_the_shape_chain():
    client = make_app(max_layers=1).test_client()
    body = valid_request()
    body["layers"][1]["W"] = [[0.1, 0.2]]  # also a shape error; the limit is reported alone
    problem = assert_problem(send(client, body), 422)
    assert [e["type"] for e in problem["errors"]] == ["limit_exceeded"]


# --- numerical overflow --------------------------------------------------------------------------------------

def _mse_linear(W, X, Y, b=None):
    return {"layers": [{"W": W, "b": b or [0.0] * len(W), "activation": "linear"}], "X": X, "Y": Y,
            "cost": MSE}


@pytest.mark.parametrize("body,location,quantity", [
    pytest.param(None, "layers[0]", "Z1", id="forward_W_X_1e200"),
    pytest.param(_mse_linear([[1e308, 1e308]], [[1e308], [1e308]], [[0.0]]), "layers[0]", "Z1",
                 id="forward_sum_overflows"),
    pytest.param(_mse_linear([[1e160]], [[1.0]], [[0.0]]), "cost", "cost", id="cost"),
    pytest.param(_mse_linear([[1e308], [1e308]], [[1e-300]], [[0.0], [0.0]]), "layers[0]", "dA0",
                 id="backward_dA0"),
])
def test_numerical_overflow_is_422_never_nan(vclient, body, location, quantity):
    if body is None:
        body = valid_request()
        body["layers"][0]["W"] = [[1e200, 1e200]] * 3
        body["X"] = [[1e200] * 4] * 2
    resp = send(vclient, body)
    item = assert_error(resp, 422, location, "numerical_overflow", quantity)
    assert "overflows float64" in item["message"]
    assert orjson.loads(resp.data)["type"].endswith("numerical-overflow")
    assert b"NaN" not in resp.data and b"Infinity" not in resp.data


def test_tiny_keep_prob_overflow_is_422(vclient):
    body = valid_request()
    body["dropout"]["keep_prob"] = 1e-320
    assert_error(send(vclient, body), 422, "layers[1]", "numerical_overflow")


# --- property: nothing a client sends is a 500 ---------------------------------------------------------------

_HAPP = make_app()

json_leaf = (st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=5)
                           | st.dictionaries(st.text(max_size=10), kids, max_size=5), max_leaves=25)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _check_any_response(resp) -> None:
    assert resp.status_code in ALLOWED_STATUSES, (resp.status_code, resp.get_data(as_text=True)[:2000])
    if resp.status_code == 200:
        assert_ok(resp)
    else:
        assert_problem(resp, resp.status_code)


PROPERTY = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(value=json_values)
def test_property_random_json_body_is_never_500(value):
    resp = _HAPP.test_client().post(URL, data=json.dumps(value), content_type="application/json")
    _check_any_response(resp)


@PROPERTY
@given(raw=st.binary(max_size=200))
def test_property_random_bytes_are_never_500(raw):
    resp = _HAPP.test_client().post(URL, data=raw, content_type="application/json")
    _check_any_response(resp)


@PROPERTY
@given(data=st.data())
def test_property_random_mutation_of_valid_request_is_never_500(data):
    base = data.draw(st.sampled_from([(c, lay) for c in COSTS for lay in LAYOUTS]), label="base")
    body = valid_request(*base)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(body)
        path = data.draw(st.sampled_from(paths), label="path")
        parent, key = _walk(body, path)
        op = data.draw(st.sampled_from(["replace", "delete", "add_key", "number", "duplicate"]), label="op")
        if op == "replace":
            parent[key] = data.draw(json_values, label="value")
        elif op == "number":
            parent[key] = data.draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                              st.integers(-5, 5), st.sampled_from([0, 1, -1, 0.5, 1e308, 5e-324])),
                                    label="number")
        elif op == "delete":
            del parent[key]
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op == "add_key" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10), label="new key")] = data.draw(json_values, label="value")
    resp = _HAPP.test_client().post(URL, data=json.dumps(body), content_type="application/json")
    _check_any_response(resp)
