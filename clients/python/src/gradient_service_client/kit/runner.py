"""Run functions of a student's module and save what they return. Standalone: the standard library and numpy
only, so that it runs under the interpreter the student's code is given (which need not have this package, nor
the service). The grader starts it as ``python -I runner.py REQUEST.json FD`` in a subprocess with its limits.

REQUEST.json: ``{"module": path, "calls": [{"function": name, "args": spec, "arrays": in.npz, "out": out.npz,
"status": status.json}, ...]}``; the module is imported once and the calls run in order, each announced on the
pipe FD (``start i``, ``done i``) so that the grader can time each one. A spec is JSON where ``{"$a": name}`` is an
array of the .npz, ``{"$t": [...]}`` a tuple, ``{"$d": {"items": [[key, spec], ...]}}`` a dict; lists and numbers
are themselves. A result is written the same way, its arrays to ``out``; each status file says
``{"ok": true, "value": spec}`` or ``{"ok": false, "stage": ..., "error": text}`` with stage ``import``,
``function``, ``call``, ``memory`` or ``output``.
"""

import importlib.util
import json
import os
import sys
import traceback

import numpy as np

MAX_ITEMS = 10_000  # containers in a returned value (the course's grads and caches hold a few dozen)


def decode(spec, arrays):
    if isinstance(spec, dict) and "$a" in spec:
        return np.array(arrays[spec["$a"]])  # a fresh, writable copy: the student's code may change it in place
    if isinstance(spec, dict) and "$t" in spec:
        return tuple(decode(v, arrays) for v in spec["$t"])
    if isinstance(spec, dict) and "$d" in spec:
        return {k: decode(v, arrays) for k, v in spec["$d"]["items"]}
    if isinstance(spec, list):
        return [decode(v, arrays) for v in spec]
    return spec


class Encoder:
    """A returned value -> a spec and its arrays (numbers as float64 arrays where numpy reads them so)."""

    def __init__(self):
        self.arrays, self.items = {}, 0

    def __call__(self, value):
        self.items += 1
        if self.items > MAX_ITEMS:
            raise ValueError(f"the returned value holds more than {MAX_ITEMS} items")
        if isinstance(value, np.ndarray) or isinstance(value, np.generic):
            return self.array(value)
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return {"$x": type(value).__name__, "repr": repr(value)[:80]}
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, tuple):
            return {"$t": [self(v) for v in value]}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {"$d": {"items": [[str(k), self(v)] for k, v in value.items()]}}
        return {"$x": type(value).__name__, "repr": repr(value)[:80]}

    def array(self, value):
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            return {"$x": f"array of {a.dtype}", "repr": repr(a)[:80]}
        name = f"r{len(self.arrays)}"
        self.arrays[name] = a.astype(np.float64)
        return {"$a": name}


def _student_trace(exc):
    """The traceback from the student's frames on (the runner's own are left out), at most 40 lines."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if os.path.abspath(f.filename) != os.path.abspath(__file__) and not f.filename.startswith("<frozen")]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).rstrip()
    return "\n".join(text.splitlines()[-40:])


def _write(path, status):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, path)  # whole or absent: a crash leaves no half-written status


def _call(module, name, call):
    """One call: its arguments from the .npz, the student's function, its value saved; the status written."""
    with np.load(call["arrays"], allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    args = decode(call["args"], arrays)
    function = getattr(module, call["function"], None)
    if not callable(function):
        return _write(call["status"], {"ok": False, "stage": "function",
                                       "error": f"{name} defines no function {call['function']}"})
    try:
        value = function(*args)
    except MemoryError as exc:
        return _write(call["status"], {"ok": False, "stage": "memory", "error": _student_trace(exc)})
    except BaseException as exc:
        return _write(call["status"], {"ok": False, "stage": "call", "error": _student_trace(exc)})
    try:
        encode = Encoder()
        spec = encode(value)
        np.savez(call["out"], **encode.arrays)
    except (ValueError, MemoryError) as exc:
        return _write(call["status"], {"ok": False, "stage": "output", "error": f"{type(exc).__name__}: {exc}"})
    _write(call["status"], {"ok": True, "value": spec})


def main(request_path, fd):
    with open(request_path) as f:
        req = json.load(f)
    pipe = os.fdopen(fd, "w", buffering=1)

    def tell(event, i):
        pipe.write(f"{event} {i}\n")

    name = os.path.basename(req["module"])
    sys.path.insert(0, os.path.dirname(os.path.abspath(req["module"])))  # the student's other files import
    try:
        spec = importlib.util.spec_from_file_location("student_submission", req["module"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except BaseException as exc:  # a SyntaxError, an exception at import, sys.exit()
        error = {"ok": False, "stage": "import", "error": _student_trace(exc)}
        for i, call in enumerate(req["calls"]):
            _write(call["status"], error)
            tell("done", i)
        return
    for i, call in enumerate(req["calls"]):
        tell("start", i)
        _call(module, name, call)
        tell("done", i)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
