"""Every malformed input raises CorruptFileError naming the defect; hypothesis fuzzes the parser."""

import json
import os
import signal
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from safetensors import safe_open

import daunce_fast.storage as st
from daunce_fast.storage import format as fmt

from ._util import raw_file, valid_header, write

F32 = lambda shape, a, b: {"dtype": "F32", "shape": shape, "data_offsets": [a, b]}  # noqa: E731


def _good():
    return valid_header(
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(2, dtype=np.int64)}, metadata={"k": "v"}
    )


def _official_rejects(path) -> bool:
    try:
        with safe_open(path, "np") as f:
            for k in f.keys():
                f.get_tensor(k)
    except Exception:
        return True
    return False


CASES = {
    # name: (file bytes, expected message fragment, does the official reader reject it too)
    "empty file": (b"", "truncated", True),
    "shorter than the length field": (b"\x10\x00\x00", "truncated", True),
    "header length past the end": (struct.pack("<Q", 1000) + b'{"a":1}', "runs past the end", True),
    "header length over 100 MB": (struct.pack("<Q", 100_000_001) + b"{}", "exceeds the limit", True),
    "header length 2**64-1": (struct.pack("<Q", 2**64 - 1) + b"{}", "exceeds the limit", True),
    "invalid UTF-8": (raw_file(b'{"\xff\xfe": 1}'), "UTF-8", True),
    "invalid JSON": (raw_file(b'{"a": {"dtype": "F32",'), "not valid JSON", True),
    "NaN constant": (raw_file(b'{"a": NaN}'), "not valid JSON", True),
    "header is a list": (raw_file(b"[1, 2, 3]"), "not a JSON object", True),
    "header is a string": (raw_file(b'"hello"'), "not a JSON object", True),
    "metadata not an object": (raw_file({"__metadata__": [1]}), "__metadata__", True),
    "metadata value not a string": (raw_file({"__metadata__": {"k": 1}}), "not a string", True),
    "nested metadata": (raw_file({"__metadata__": {"k": {"x": "y"}}}), "not a string", True),
    "unknown dtype": (
        raw_file({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "unknown dtype",
        True,
    ),
    "dtype not a string": (
        raw_file({"a": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "dtype must be a string",
        True,
    ),
    "shape/size mismatch": (raw_file({"a": F32([2, 3], 0, 20)}, b"\0" * 20), "shape/size mismatch", True),
    "huge shape": (raw_file({"a": F32([2**62, 2**62], 0, 4)}, b"\0" * 4), "too large for numpy", True),
    "negative dim": (raw_file({"a": F32([-1], 0, 4)}, b"\0" * 4), "non-negative", True),
    "float dim": (raw_file({"a": F32([1.0], 0, 4)}, b"\0" * 4), "non-negative integers", True),
    "bool dim": (raw_file({"a": F32([True], 0, 4)}, b"\0" * 4), "non-negative integers", True),
    "shape not a list": (raw_file({"a": F32(3, 0, 12)}, b"\0" * 12), "shape must be a list", True),
    "offsets wrong arity": (
        raw_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4),
        "data_offsets must be",
        True,
    ),
    "offsets end before begin": (raw_file({"a": F32([0], 4, 0)}, b"\0" * 4), "end before they begin", True),
    "missing data_offsets": (raw_file({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "missing", True),
    "entry not an object": (raw_file({"a": [1, 2]}, b""), "entry must be an object", True),
    "overlapping offsets": (raw_file({"a": F32([2], 0, 8), "b": F32([2], 4, 12)}, b"\0" * 12), "overlaps", True),
    "gap between tensors": (raw_file({"a": F32([1], 0, 4), "b": F32([1], 8, 12)}, b"\0" * 12), "gap", True),
    "not starting at 0": (raw_file({"a": F32([1], 4, 8)}, b"\0" * 8), "does not start at offset 0", True),
    "offsets past the end": (raw_file({"a": F32([4], 0, 16)}, b"\0" * 8), "past the end", True),
    "offsets far past the end": (raw_file({"a": F32([2**40], 0, 2**42)}, b"\0" * 8), "past the end", True),
    "trailing bytes": (raw_file({"a": F32([1], 0, 4)}, b"\0" * 12), "trailing bytes", True),
    "duplicate tensor name": (
        raw_file(
            b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
            b"\0" * 4,
        ),
        "twice",
        False,
    ),  # the official reader keeps the last one
    "deeply nested JSON": (raw_file(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "nested too deeply", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_corruption_is_named(tmp_path, case):
    blob, fragment, official_rejects = CASES[case]
    path = write(tmp_path / "bad.safetensors", blob)
    with pytest.raises(st.CorruptFileError, match=fragment) as info:
        st.open(path)
    assert path in str(info.value)  # the message names the file too
    assert isinstance(info.value, ValueError) and isinstance(info.value, st.StorageError)
    assert _official_rejects(path) == official_rejects, "the official reader disagrees"


def test_truncated_real_file_at_every_region(tmp_path):
    src = tmp_path / "good.safetensors"
    with st.create(src, {"x": ((64, 33), "float32")}) as w:
        w["x"][...] = 1
    blob = open(src, "rb").read()
    for cut in (0, 5, 8, 100, 4095, 4096, 4097, len(blob) // 2, len(blob) - 1):
        path = write(tmp_path / "cut.safetensors", blob[:cut])
        with pytest.raises(st.CorruptFileError, match="truncated|past the end"):
            st.open(path)


def test_incomplete_marker_raises_incomplete(tmp_path):
    hdr, data = valid_header({"a": np.zeros(2, np.float32)}, metadata={"daunce_fast.complete": "0"})
    path = write(tmp_path / "x.safetensors", raw_file(hdr, data))
    with pytest.raises(st.IncompleteFileError, match="incomplete"):
        st.open(path)


def test_valid_hand_built_file_opens(tmp_path):
    hdr, data = _good()
    path = write(tmp_path / "x.safetensors", raw_file(hdr, data))
    with st.open(path) as r:
        np.testing.assert_array_equal(r["a"], np.arange(6).reshape(2, 3))
        assert r.metadata == {"k": "v"}


# -------------------------------------------------------------------------------------- fuzzing
FUZZ = {"cases": 0, "accepted": 0, "corrupt": 0, "incomplete": 0, "rejected_but_official_accepts": 0}
STRICTER = []  # a few examples of what we reject and the official reader accepts

json_leaf = hs.one_of(
    hs.none(), hs.booleans(), hs.integers(-(2**70), 2**70), hs.floats(allow_nan=False), hs.text(max_size=8)
)
json_value = hs.recursive(
    json_leaf, lambda c: hs.lists(c, max_size=4) | hs.dictionaries(hs.text(max_size=6), c, max_size=4), max_leaves=10
)
codes = hs.sampled_from(sorted(st.dtypes.CODES | st.dtypes.SUBBYTE_CODES) + ["X", ""])
huge_shapes = hs.one_of(
    hs.lists(hs.sampled_from([0, 1, 2**61, 2**62, 2**63, 2**64 - 1]), max_size=4),
    hs.builds(lambda n, d: [d] * n, hs.integers(60, 70), hs.sampled_from([0, 1])),
)


@hs.composite
def mutated_file(draw):
    n_t = draw(hs.integers(1, 3))
    tensors = {f"t{i}": np.arange(draw(hs.integers(0, 6)), dtype=np.float32) for i in range(n_t)}
    hdr, data = valid_header(tensors, metadata={"k": "v"} if draw(hs.booleans()) else None)
    kind = draw(hs.sampled_from(["field", "entry", "bytes", "length", "truncate", "append", "none"]))
    if kind == "field":  # one header field replaced by a plausible or absurd value
        name = draw(hs.sampled_from(list(hdr)))
        if name == "__metadata__":
            hdr[name] = draw(hs.one_of(json_value, hs.dictionaries(hs.text(max_size=4), json_leaf, max_size=3)))
        else:
            field = draw(hs.sampled_from(["dtype", "shape", "data_offsets"]))
            hdr[name][field] = draw(
                hs.one_of(
                    codes,
                    json_value,
                    hs.lists(hs.integers(-3, 2**65), max_size=3),
                    huge_shapes,
                    hs.lists(hs.integers(0, len(data) + 8), min_size=2, max_size=2),
                )
            )
    elif kind == "entry":  # an entry added or deleted
        if draw(hs.booleans()):
            hdr[draw(hs.text(max_size=5))] = draw(json_value)
        else:
            hdr.pop(draw(hs.sampled_from(list(hdr))))
    body = json.dumps(hdr).encode()
    pad = draw(hs.sampled_from([0, 1, 7, 4096 - 8 - len(body) % 4096]))
    blob = bytearray(struct.pack("<Q", len(body) + pad) + body + b" " * pad + data)
    if kind == "bytes":  # random bytes overwritten anywhere
        for _ in range(draw(hs.integers(1, 6))):
            blob[draw(hs.integers(0, len(blob) - 1))] = draw(hs.integers(0, 255))
    elif kind == "length":
        blob[:8] = struct.pack("<Q", draw(hs.one_of(hs.integers(0, len(blob) + 16), hs.integers(0, 2**64 - 1))))
    elif kind == "truncate":
        del blob[draw(hs.integers(0, len(blob))) :]
    elif kind == "append":
        blob += draw(hs.binary(min_size=1, max_size=16))
    return bytes(blob)


@settings(
    max_examples=int(os.environ.get("DAUNCE_FAST_FUZZ_EXAMPLES", "600")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(blob=mutated_file())
def test_fuzz_mutated_files(tmp_path, blob):
    """Any mutation either opens (and every tensor then reads within the file, agreeing with the
    official reader) or raises CorruptFileError / IncompleteFileError: nothing else escapes."""
    path = write(tmp_path / "fuzz.safetensors", blob)
    FUZZ["cases"] += 1
    try:
        r = st.open(path)
    except st.CorruptFileError as exc:
        FUZZ["corrupt"] += 1
        if not _official_rejects(path):
            FUZZ["rejected_but_official_accepts"] += 1
            if len(STRICTER) < 5:
                STRICTER.append(str(exc).split(": ", 1)[1][:120])
        return
    except st.IncompleteFileError:
        FUZZ["incomplete"] += 1
        return
    FUZZ["accepted"] += 1
    with r:
        total = 0
        for name in r.names():
            a = r[name]
            total += a.nbytes
            bytes(np.ascontiguousarray(a).view(np.uint8))  # touch every byte of the view
        assert r.header.data_start + total == len(blob)
        for name in r.names():  # every accepted dtype decodes (or refuses with TypeError)
            try:
                st.decode_float32(r[name], r.dtype_code(name))
            except TypeError:
                assert r.dtype_code(name) in st.dtypes.NOT_DECODABLE
        numpy_ok = all(r.dtype_code(n) not in ("BF16", "F8_E4M3") for n in r.names())
        if numpy_ok:
            with safe_open(path, "np") as f:
                assert sorted(f.keys()) == sorted(r.names())
                for name in r.names():
                    np.testing.assert_array_equal(f.get_tensor(name), r[name])


def test_fuzz_report():
    """Runs after the fuzz test (file order): prints and checks how many cases were tried."""
    if FUZZ["cases"] == 0:
        pytest.skip("fuzz test not run in this session")
    print(f"\nstorage fuzz: {FUZZ}; stricter than the official reader on e.g. {STRICTER}")
    assert FUZZ["cases"] >= min(300, int(os.environ.get("DAUNCE_FAST_FUZZ_EXAMPLES", "600")))
    assert FUZZ["corrupt"] > 0 and FUZZ["accepted"] > 0


# ------------------------------------------------------------------------- inputs that are not files
def _entry_points(path):
    """Every way storage opens an input path; each must raise the same documented error."""
    return {
        "open": lambda: st.open(path),
        "open_any": lambda: st.open_any(path),
        "open_sharded": lambda: st.open_sharded(path),
    }


def _fifo(tmp_path):
    p = tmp_path / "fifo.safetensors"
    os.mkfifo(p)
    return str(p)


def _directory(tmp_path):
    p = tmp_path / "dir.safetensors"
    p.mkdir()
    return str(p)


def _socket(tmp_path):
    import socket

    p = str(tmp_path / "sock.safetensors")
    s = socket.socket(socket.AF_UNIX)
    s.bind(p)
    _socket.keep = s  # alive until the next test
    return p


def _loop(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    os.symlink(b, a)
    os.symlink(a, b)
    return str(a)


def _dangling(tmp_path):
    p = tmp_path / "dangling.safetensors"
    os.symlink(tmp_path / "nowhere.safetensors", p)
    return str(p)


PATH_CASES = {
    # name: (make path, expected exception, message fragment)
    "FIFO": (_fifo, st.NotARegularFileError, "FIFO"),
    "directory": (_directory, st.NotARegularFileError, "directory"),
    "socket": (_socket, st.NotARegularFileError, "socket"),
    "symlink loop": (_loop, st.UnreadableFileError, "symbolic link loop"),
    "dangling symlink": (_dangling, FileNotFoundError, "dangling"),
}


@pytest.fixture
def alarm():
    """A blocking open (the FIFO bug) fails the test after 10 s instead of hanging the suite."""

    def _raise(*_):
        raise TimeoutError("blocked opening the input")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_inputs_that_are_not_regular_files(tmp_path, alarm, case):
    make, exc, fragment = PATH_CASES[case]
    path = make(tmp_path)
    for entry, call in _entry_points(path).items():
        with pytest.raises(exc, match=fragment) as info:
            call()
        assert path in str(info.value), entry
    assert not st.stores.is_index(path)
    as_index = str(tmp_path / "x.index.json")  # the same kinds reached under an index's name
    os.symlink(path, as_index)
    for call in _entry_points(as_index).values():
        with pytest.raises(exc, match=fragment):
            call()


def test_load_index_of_a_fifo_does_not_block(tmp_path, alarm):
    p = tmp_path / "x.index.json"
    os.mkfifo(p)
    with pytest.raises(st.NotARegularFileError):
        st.sharded.load_index(p)


# ------------------------------------------------------------------------- header resource budget


def _timed_reject(tmp_path, blob, fragment, exc=None):
    path = write(tmp_path / "big.safetensors", blob)
    t0 = time.perf_counter()
    with pytest.raises(exc or st.ResourceLimitError, match=fragment) as info:
        st.open(path)
    took = time.perf_counter() - t0
    assert took < 2.0, f"took {took:.1f} s"
    assert isinstance(info.value, st.CorruptFileError)


def test_many_metadata_keys_fail_before_json_parsing(tmp_path, monkeypatch):
    n = fmt.MAX_JSON_KEYS + 1
    body = b'{"__metadata__":{' + b",".join(b'"%d":""' % i for i in range(n)) + b"}}"
    monkeypatch.setattr(fmt.json, "loads", lambda *a, **k: pytest.fail("json.loads reached"))
    _timed_reject(tmp_path, raw_file(body), "JSON keys")


def test_metadata_keys_over_their_own_limit(tmp_path):
    meta = {str(i): "" for i in range(fmt.MAX_METADATA_KEYS + 1)}
    _timed_reject(tmp_path, raw_file({"__metadata__": meta}), "__metadata__ has")


def test_metadata_bytes_and_name_lengths(tmp_path):
    _timed_reject(tmp_path, raw_file({"__metadata__": {"k": "x" * (fmt.MAX_METADATA_BYTES + 1)}}), "holds")
    _timed_reject(tmp_path, raw_file({"__metadata__": {"k" * (fmt.MAX_NAME_BYTES + 1): ""}}), "metadata key")
    _timed_reject(tmp_path, raw_file({"n" * (fmt.MAX_NAME_BYTES + 1): F32([0], 0, 0)}), "tensor name")


def test_many_tensors(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "MAX_TENSORS", 10)
    hdr = {f"t{i}": F32([0], 0, 0) for i in range(11)}
    _timed_reject(tmp_path, raw_file(hdr), "11 tensors")
    hdr = {f"t{i}": F32([0], 0, 0) for i in range(10)}
    st.open(write(tmp_path / "ok.safetensors", raw_file(hdr))).close()


def test_nesting_is_checked_by_a_byte_scan(tmp_path):
    _timed_reject(tmp_path, raw_file(b'{"a":' + b"[" * 9 + b"]" * 9 + b"}"), "nested too deeply")
    # brackets, colons and escaped quotes inside strings are not structure
    meta = {"k": '[[[[[[[[[[{{{{{{{{ : \\" \\\\" ' * 50, 'q"\\': "::::"}
    with st.open(write(tmp_path / "ok.safetensors", raw_file({"__metadata__": meta}))) as r:
        assert r.metadata == meta


json_text = hs.recursive(
    json_leaf,
    lambda c: hs.lists(c, max_size=4) | hs.dictionaries(hs.text(alphabet='ab"\\:{}[] ', max_size=6), c, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(obj=json_text, chunk=hs.integers(1, 9))
def test_json_shape_matches_a_parse(obj, chunk):
    """The byte scan's depth and key count equal those of the parsed JSON, at any chunk boundary."""

    def walk(o, d):
        if isinstance(o, dict):
            return max([d + 1] + [walk(v, d + 1)[0] for v in o.values()]), len(o) + sum(
                walk(v, d + 1)[1] for v in o.values()
            )
        if isinstance(o, list):
            return max([d + 1] + [walk(v, d + 1)[0] for v in o]), sum(walk(v, d + 1)[1] for v in o)
        return d, 0

    raw = json.dumps(obj, ensure_ascii=False).encode()
    old = fmt._SCAN_CHUNK
    fmt._SCAN_CHUNK = chunk
    try:
        assert fmt.json_shape(raw) == walk(obj, 0)
    finally:
        fmt._SCAN_CHUNK = old


@pytest.mark.parametrize(
    "shape,ok",
    [
        ([2**62, 0], False),
        ([2**61 - 1, 0], True),
        ([2**61, 0], False),
        ([2**31, 2**30, 0], False),
        ([1] * 64, True),
        ([1] * 65, False),
        ([0] * 65, False),
    ],
)
def test_shapes_numpy_cannot_hold(tmp_path, shape, ok):
    """A shape is accepted exactly when numpy can hold an array of it (F32)."""
    try:
        np.empty(shape, np.float32)
        numpy_ok = True
    except ValueError:
        numpy_ok = False
    assert numpy_ok == ok
    size = 0 if 0 in shape else 4
    path = write(tmp_path / "s.safetensors", raw_file({"a": F32(shape, 0, size)}, b"\0" * size))
    if ok:
        with st.open(path) as r:
            assert r["a"].shape == tuple(shape) and r.read("a").shape == tuple(shape)
    else:
        with pytest.raises(st.ResourceLimitError, match="numpy"):
            st.open(path)
    with pytest.raises(ValueError) if not ok else _nullcontext():
        st.create(tmp_path / "w.safetensors", {"a": (shape, "float32")}).abort()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_other_formats_are_named_not_safetensors(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(st.CorruptFileError, match=r"not a safetensors file \(it looks like a \.npy array\)"):
        st.open(tmp_path / "a.npy")
    png = write(tmp_path / "a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(st.CorruptFileError, match="PNG image"):
        st.open(png)
