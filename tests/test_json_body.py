"""service.wire.json_body and json_dense: structural caps, strict decoding, duplicate keys, the dense path, and
encoding.

The dense path (numeric arrays parsed straight into float64 from the raw bytes) must decide every body exactly as
the plain path (orjson, then the array validators on nested lists) does: the same arrays, or errors at the same
locations with the same types, or a 400 for both. ``test_dense_path_agrees_with_plain_path`` checks that on
seeded random bodies that mix every feature (ragged rows, mixed depths, nulls, booleans, NaN and huge-number
tokens, strings holding brackets and escaped quotes, whitespace), forcing the dense path on bodies of any size.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import orjson
import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.arrays import Matrix, MatrixOrVector, NullableMatrixOrVector, Vector, array_list
from schemas.errors import InvalidRequest, from_validation_error
from service.wire import json_body, json_dense

CAPS = json_body.Structure(values=10**8, arrays=10**7, objects=10**5, strings=10**5)


class Fields(BaseModel):
    """Every kind of array field, validated from a decoded body."""

    model_config = ConfigDict(extra="forbid")
    X: Optional[Matrix] = None
    Y: Optional[MatrixOrVector] = None
    N: Optional[NullableMatrixOrVector] = None
    V: Optional[Vector] = None
    masks: Optional[array_list(Optional[Matrix])] = None
    name: Optional[str] = None


def outcome(body: bytes, dense: bool):
    """('ok', arrays) | ('invalid', sorted (location, type)) | ('http', status) for one decoding path."""
    try:
        value = json_body.decode(body, CAPS, dense=dense)
    except InvalidRequest as exc:
        return ("http", exc.status, exc.errors[0].type)
    try:
        model = Fields.model_validate(value)
    except ValidationError as exc:
        problem = from_validation_error(exc)
        return ("invalid", sorted((e.location, e.type) for e in problem.errors), problem.truncated)
    return ("ok", {k: v for k, v in model.model_dump().items() if v is not None})


def fields_in_error(result) -> set[str]:
    return {location.split("[")[0].split(".")[0] for location, _ in result[1]}


def same(a, b, exact: bool = True) -> bool:
    """Same outcome; for valid bodies the same arrays; for invalid ones the same errors (``exact``) or the same
    fields in error."""
    if a[0] != b[0]:
        return False
    if a[0] == "invalid" and not exact:
        return fields_in_error(a) == fields_in_error(b)
    if a[0] != "ok":
        return a == b
    if a[1].keys() != b[1].keys():
        return False
    for k in a[1]:
        x, y = a[1][k], b[1][k]
        if isinstance(x, list):
            if len(x) != len(y) or any((p is None) != (q is None) or (p is not None and not
                                       np.array_equal(p, q, equal_nan=True)) for p, q in zip(x, y)):
                return False
        elif isinstance(x, np.ndarray):
            if x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
                return False
        elif x != y:
            return False
    return True


# --- a generator of JSON text with every feature ---------------------------------------------------------------

NUMBERS = ["0", "-0", "1", "-7", "0.5", "-2.25e-3", "1E5", "3.141592653589793", "18446744073709551616",
           "123456789012345678901234567890", "1e-320", "-0.0"]
ODD = ["null", "true", "false", "NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400, '"7"', '"a]["',
       '"q\\"[1,2]"', "{}", "[]"]


def number(rng) -> str:
    if rng.random() < 0.5:
        return repr(float(rng.standard_normal() * 10.0 ** int(rng.integers(-5, 6))))
    return NUMBERS[rng.integers(len(NUMBERS))]


def ws(rng) -> str:
    return "" if rng.random() < 0.7 else [" ", "\n", "\t", " \r\n "][rng.integers(4)]


def array_text(rng, shape: tuple[int, ...], odd: float) -> str:
    """A nested array of ``shape`` with occasional odd entries, ragged rows and mixed depths."""
    if len(shape) == 1:
        n = shape[0] + (int(rng.integers(-1, 2)) if rng.random() < odd else 0)
        items = [ODD[rng.integers(len(ODD))] if rng.random() < odd else number(rng) for _ in range(max(n, 0))]
        return "[" + ws(rng) + ("," + ws(rng)).join(items) + ws(rng) + "]"
    parts = []
    for _ in range(shape[0]):
        r = rng.random()
        if r < odd / 3:
            parts.append(number(rng))  # a number where a row belongs
        elif r < odd / 2:
            parts.append(array_text(rng, (shape[1] + 1,) + shape[2:], 0.0))  # a longer row
        else:
            parts.append(array_text(rng, shape[1:], odd))
    return "[" + ws(rng) + ("," + ws(rng)).join(parts) + ws(rng) + "]"


def random_body(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    odd = [0.0, 0.0, 0.002, 0.02, 0.1][seed % 5]
    fields = {}
    for name, rank in (("X", 2), ("Y", int(rng.integers(1, 3))), ("N", int(rng.integers(1, 3))), ("V", 1)):
        if rng.random() < 0.8:
            shape = tuple(int(n) for n in rng.integers(1, 40, size=rank))
            fields[name] = array_text(rng, shape, odd)
    if rng.random() < 0.5:
        masks = []
        for _ in range(int(rng.integers(1, 4))):
            masks.append("null" if rng.random() < 0.2 else
                         array_text(rng, tuple(int(n) for n in rng.integers(1, 30, size=2)), odd / 4))
        fields["masks"] = "[" + ",".join(masks) + "]"
    if rng.random() < 0.3:
        fields["name"] = '"w[i]: \\"x\\" {y}"'
    text = "{" + ",".join(f'{ws(rng)}"{k}"{ws(rng)}:{ws(rng)}{v}' for k, v in fields.items()) + "}"
    return text.encode()


@pytest.mark.parametrize("seed", range(400))
def test_dense_path_agrees_with_plain_path(seed):
    body = random_body(seed)
    plain, dense = outcome(body, dense=False), outcome(body, dense=True)
    # Exact locations may differ for an invalid body (the dense path reports a ragged row's entries through
    # its converted rows); the outcome, every value of a valid body, and the fields in error may not.
    assert same(plain, dense, exact=False), (body[:400], plain, dense)


# --- crafted bodies --------------------------------------------------------------------------------------------

def big_matrix(rows: int, cols: int, value: str = "0.5") -> str:
    return "[" + ",".join("[" + ",".join([value] * cols) + "]" for _ in range(rows)) + "]"


CRAFTED = {
    "plain_matrix": '{"X": %s}' % big_matrix(40, 30),
    "ragged_last_row": '{"X": %s}' % (big_matrix(40, 30)[:-1] + ",[1,2]]"),
    "null_in_nullable": '{"N": %s}' % big_matrix(20, 30).replace("0.5", "null", 3),
    "null_in_matrix": '{"X": %s}' % big_matrix(20, 30).replace("0.5", "null", 2),
    "true_in_matrix": '{"X": %s}' % big_matrix(20, 30).replace("0.5", "true", 1),
    "nan_tokens": '{"X": %s}' % big_matrix(20, 30).replace("0.5", "NaN", 5),
    "huge_numbers": '{"X": %s}' % big_matrix(20, 30).replace("0.5", "1e400", 2).replace("0.5", "1" + "0" * 5000, 1),
    "empty_row": '{"X": %s}' % (big_matrix(40, 30)[:-1] + ",[]]"),
    "number_instead_of_row": '{"X": %s}' % (big_matrix(40, 30)[:-1] + ",7]"),
    "string_with_brackets_next_to_array": '{"name": "]]][[[\\"]", "X": %s}' % big_matrix(10, 30),
    "string_inside_array": '{"X": %s}' % big_matrix(10, 30).replace("0.5", '"0.5"', 1),
    "vector_with_list": '{"Y": [1, [0], %s]}' % ",".join(["0.25"] * 100),
    "masks_different_shapes": '{"masks": [%s, null, %s]}' % (big_matrix(5, 40), big_matrix(7, 9)),
    "deep_array": '{"X": [[%s]]}' % ("[" * 50 + "1" + "]" * 50),
    "rank3_for_matrix": '{"X": [%s, %s]}' % (big_matrix(5, 5), big_matrix(5, 5)),
    "top_level_array": big_matrix(30, 30),
    "whitespace_everywhere": '{ "X" : [ [ 1 , 2 ] ,\n [ 3 , 4 ] , [ %s ] ] }' % " , ".join(["5", "6"]),
}
CRAFTED["whitespace_everywhere"] = '{ "X" : [ %s ] }' % " ,\n ".join(["[ " + " , ".join(["1.5"] * 30) + " ]"] * 10)


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_bodies_agree(name):
    body = CRAFTED[name].encode()
    assert same(outcome(body, dense=False), outcome(body, dense=True)), name


@pytest.mark.parametrize("raw", [
    '{"X": [[1,2],[3,4]' + ",[0.5]" * 40 + "}",  # unbalanced
    '{"X": [[1,2] [3,4]' + ",[0.5]" * 40 + "]}",  # missing comma between rows
    '{"X": [[1,2],,[3,4]' + ",[0.5]" * 40 + "]}",  # double comma
    '{"X": [[1,2],[3,4],' + ",".join(["[0.5]"] * 40) + ",]}",  # trailing comma
    '{"X": [[1 2]' + ",[0.5]" * 40 + "]}",  # missing comma in a row
    '{"X": [[+1]' + ",[0.5]" * 40 + "]}",
    '{"X": [[.5]' + ",[0.5]" * 40 + "]}",
    '{"X": [[01]' + ",[0.5]" * 40 + "]}",
    '{"X": [[1}' + ",[0.5]" * 40 + "]}",  # mismatched
    '{"X": [[0x10]' + ",[0.5]" * 40 + "]}",
    '{"X": "unterminated' + "[0.5]," * 40,
])
def test_malformed_bodies_are_400_on_both_paths(raw):
    body = raw.encode()
    for dense in (False, True):
        with pytest.raises(InvalidRequest) as exc:
            json_body.decode(body, CAPS, dense=dense)
        assert exc.value.status == 400 and exc.value.errors[0].type == "json_invalid", (dense, exc.value.errors)


def test_dense_decoding_of_a_large_body_builds_arrays_not_lists():
    body = b'{"X": ' + big_matrix(2000, 500, "0.5").encode() + b', "name": "a"}'
    value = json_body.decode(body, CAPS, dense=True)
    assert isinstance(value["X"], np.ndarray) and value["X"].shape == (2000, 500)
    assert np.all(value["X"] == 0.5) and value["name"] == "a"


def test_the_dense_path_is_taken_only_for_large_dense_bodies():
    short = b'{"X": ' + big_matrix(2000, 1100, "0").encode() + b"}"  # ~4.4 MB of 2-byte numbers
    long = b'{"X": ' + big_matrix(300, 800, "0.123456789012345").encode() + b"}"  # ~4.2 MB of 18-byte numbers
    assert len(short) >= json_body.DENSE_MIN_BYTES and len(long) >= json_body.DENSE_MIN_BYTES
    assert json_body.is_dense(short) and not json_body.is_dense(long)
    assert not json_body.is_dense(b'{"X": [[0,0,0,0]]}')


def test_placeholders_cannot_be_forged():
    # A client string that looks like a placeholder stays a string: the placeholder carries a random nonce.
    body = ('{"name": "\\u0000gs-0000000000000000-0", "X": %s}' % big_matrix(10, 30)).encode()
    value = json_body.decode(body, CAPS, dense=True)
    assert value["name"] == "\x00gs-0000000000000000-0" and isinstance(value["X"], np.ndarray)


# --- caps, duplicates, numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body,what", [
    (b'{"layers": [' + b",".join([b"{}"] * 101) + b"]}", "'{'"),
    (b'{"X": [' + b",".join([b"[1]"] * 101) + b"]}", "'['"),
    (b'{"X": [[' + b",".join([b"0"] * 1002) + b"]]}", "commas"),
    (b'{"a": [' + b",".join([b'"s"'] * 60) + b"]}", "'\"'"),
])
def test_structural_caps_are_checked_on_raw_bytes(body, what):
    caps = json_body.Structure(values=1000, arrays=100, objects=100, strings=50)
    with pytest.raises(InvalidRequest) as exc:
        json_body.decode(body, caps)
    assert exc.value.status == 422 and exc.value.errors[0].type == "limit_exceeded"
    assert what in exc.value.errors[0].message


@pytest.mark.parametrize("raw,location,key", [
    ('{"X": [[1]], "X": [[2]]}', "X", "X"),
    ('{"layers": [{"W": [[1]], "b": [0], "W": [[2]]}]}', "layers[0].W", "W"),
    ('{"dropout": {"keep_prob": 0.5, "masks": [], "keep_prob": 0.9}}', "dropout.keep_prob", "keep_prob"),
    ('{"a": {"b\\u0041": 1, "bA": 2}}', "a.bA", "bA"),  # the same key once escaped
    ('{"s": "x:y", "t": 1, "t": 2}', "t", "t"),  # colons inside strings do not hide it
])
def test_duplicate_keys_are_422_naming_the_key(raw, location, key):
    for dense in (False, True):
        with pytest.raises(InvalidRequest) as exc:
            json_body.decode(raw.encode(), CAPS, dense=dense)
        item = exc.value.errors[0]
        assert exc.value.status == 422 and item.type == "duplicate_key", item
        assert item.location == location and repr(key) in item.message, item


def test_keys_that_only_look_alike_are_not_duplicates():
    value = json_body.decode(b'{"a": 1, "A": 2, "a ": 3, "s": "k:v:w", "o": {"a": 1}}', CAPS)
    assert value == {"a": 1, "A": 2, "a ": 3, "s": "k:v:w", "o": {"a": 1}}


def test_non_finite_numbers_become_markers_not_errors_of_the_parser():
    value = json_body.decode(b'{"a": 1e999999, "b": ' + b"9" * 5000 + b', "c": NaN, "d": -Infinity}', CAPS)
    assert value["a"] == float("inf") and value["b"] == float("inf") and value["d"] == float("-inf")
    assert value["c"] != value["c"]
    assert all(type(value[k]).__name__ == "NonFinite" for k in "abcd")


# --- encoding --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3,), (2, 5), (1000, 700), (700_000,), (40, 3, 20, 30)])
def test_chunked_encoding_is_byte_identical(shape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape)
    a.reshape(-1)[::97] = np.nan
    value = {"cost": 0.25, "AL": a, "gradients": {"dW1": a, "db1": [0.5, 1.5]}, "warnings": [],
             "nested": [{"x": a}, 3]}
    assert b"".join(json_body.encode_chunks(value)) == orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    if a.nbytes > json_body.CHUNK_BYTES:
        assert max(len(c) for c in json_body.encode_chunks(value)) < 4 * json_body.CHUNK_BYTES
