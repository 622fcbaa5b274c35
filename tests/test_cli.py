"""The ``daunce-fast`` command: info, score, inspect, help and version (in-process through
daunce_fast.cli.main, except the end-to-end checks). Wrong invocations: tests/test_cli_errors.py;
the demo: tests/test_cli_demo.py."""

import json
import subprocess
import sys

import numpy as np
import pytest

from daunce_fast import storage
from daunce_fast.cli import build_parser, main


def run_cli(*args, timeout=600, **kw):
    return subprocess.run(
        [sys.executable, "-m", "daunce_fast", *args], capture_output=True, text=True, timeout=timeout, **kw
    )


def test_info_prints_build_and_backends():
    res = run_cli("info", timeout=120)  # end to end: python -m daunce_fast
    assert res.returncode == 0, res.stderr
    for needle in ("daunce_fast", "extension:", "backends:", "torch", "numpy", "device:"):
        assert needle in res.stdout


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["backends"]["torch"] == "live"
    assert set(d) >= {"daunce_fast", "extension", "backends", "torch", "triton", "numpy", "device"}


def test_version(capsys):
    from daunce_fast import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"daunce-fast {__version__}"


def _subparsers(p):
    import argparse

    (act,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return act


def test_help_describes_every_command_and_option_with_defaults():
    p = build_parser()
    sub = _subparsers(p)
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert set(helps) == {"info", "demo", "score", "inspect"} and all(helps.values())
    for name, sp in sub.choices.items():
        assert sp.description, name
        text = " ".join(sp.format_help().split())
        for a in sp._actions:
            assert a.help, (name, a.dest)
            if a.option_strings and a.default not in (None, False) and a.dest != "help":
                assert f"default: {a.default}" in text or "default:" in a.help, (name, a.dest)
    score_help = " ".join(sub.choices["score"].format_help().split())
    assert "default: pearson" in score_help and "--nan-policy" in score_help


def test_score_default_method_matches_the_python_api():
    import inspect

    import daunce_fast as df

    p = build_parser()
    args = p.parse_args(["score", "a.npy", "b.npy"])
    assert args.method == inspect.signature(df.correlate).parameters["method"].default
    assert args.method == inspect.signature(df.topk).parameters["method"].default


@pytest.fixture
def mats(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((16, 50)), rng.standard_normal((16, 7))
    np.save("a.npy", a.astype(np.float32))
    np.save("b.npy", b.astype(np.float32))
    return a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)


def _cov(a, b):
    ac, bc = a - a.mean(0), b - b.mean(0)
    return ac.T @ bc / (a.shape[0] - 1)


def _pearson(a, b):
    az, bz = (a - a.mean(0)) / a.std(0), (b - b.mean(0)) / b.std(0)
    return az.T @ bz / a.shape[0]


def test_score_topk_and_full_to_file(mats, capsys):
    a, b = mats
    assert main(["score", "a.npy", "b.npy", "--topk", "3", "--method", "covariance", "--out", "top.safetensors"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("method: covariance") and "top.safetensors" in out
    with storage.open("top.safetensors") as r:
        assert r.metadata["method"] == "covariance"
        assert np.array_equal(np.array(r["indices"]), np.argsort(-_cov(a, b), axis=0)[:3].T)
    assert main(["score", "a.npy", "b.npy", "--out", "s.safetensors"]) == 0
    assert capsys.readouterr().out.startswith("method: pearson")
    with storage.open("s.safetensors") as r:
        np.testing.assert_allclose(np.array(r["scores"]), _pearson(a, b), rtol=1e-4, atol=1e-5)
    assert main(["inspect", "s.safetensors"]) == 0
    out = capsys.readouterr().out
    assert "scores" in out and "complete" in out


def test_score_prints_method_and_magnitudes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    x = 1e-5 * rng.standard_normal((8, 6))  # covariances ~1e-10: %+.3f would print only +0.000
    np.save("x.npy", x)
    assert main(["score", "x.npy", "x.npy", "--method", "covariance", "--topk", "2", "--show", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("method: covariance")
    rows = [line for line in out if line.startswith("test ")]
    assert len(rows) == 3
    vals = [float(t.split(":")[1]) for line in rows for t in line.split(": ", 1)[1].split(", ")]
    cov = _cov(x, x)
    np.testing.assert_allclose(vals[:2], np.sort(cov[:, 0])[::-1][:2], rtol=1e-3)
    assert all(v != 0 for v in vals)
    assert main(["score", "x.npy", "x.npy", "--method", "covariance", "--show", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("method: covariance") and "covariance scores [6, 6]" in out[1]
    printed = np.array([[float(v) for v in line.split()] for line in out[2:4]])
    np.testing.assert_allclose(printed, cov[:2, :2], rtol=1e-3)


def test_score_least_and_show_zero(mats, capsys):
    a, b = mats
    assert main(["score", "a.npy", "b.npy", "--topk", "2", "--least", "--show", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "least" in out[0] and "pearson" in out[0]


@pytest.mark.parametrize("code", ["BF16", "F8_E4M3", "F8_E5M2"])
def test_score_reads_reduced_float_stores_as_numbers(tmp_path, monkeypatch, capsys, code):
    import torch

    monkeypatch.chdir(tmp_path)
    tdt = {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}[code]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 30, generator=g).to(tdt)
    b = torch.randn(12, 4, generator=g).to(tdt)
    for name, t in (("a", a), ("b", b)):
        bits = t.view(torch.uint16 if t.element_size() == 2 else torch.uint8).numpy()
        with storage.create(f"{name}.safetensors", {"t": (tuple(t.shape), code)}) as w:
            w["t"][...] = bits
    assert main(["score", "a.safetensors", "b.safetensors", "--out", "s.safetensors"]) == 0
    capsys.readouterr()
    with storage.open("s.safetensors") as r:
        got = np.array(r["scores"])
    np.testing.assert_allclose(got, _pearson(a.double().numpy(), b.double().numpy()), atol=1e-5)


def test_inspect_partial_and_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    w = storage.create("x.safetensors", {"t": ((3, 4), "float32")})
    w.mark_done("tile7")
    w.flush()
    try:
        assert main(["inspect", "x.safetensors"]) == 0
        out = capsys.readouterr().out
        assert "INCOMPLETE" in out and "tile7" in out
        assert main(["inspect", "x.safetensors.partial"]) == 0
        assert "INCOMPLETE" in capsys.readouterr().out
    finally:
        w.abort()
    assert main(["inspect", "nope.safetensors"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_inspect_escapes_and_truncates(tmp_path, monkeypatch, capsys):
    from daunce_fast.storage import inspect as inspect_store

    monkeypatch.chdir(tmp_path)
    evil = "\x1b[2J\x1b]0;owned\x07\r\u202e"
    meta = {f"k{i:03d}": "v" * 5000 for i in range(200)}
    meta["name" + evil] = "value" + evil
    tensors = {f"t{i:03d}" + (evil if i == 0 else ""): ((2,), "float32") for i in range(120)}
    with storage.create("m.safetensors", tensors, metadata=meta):
        pass
    assert main(["inspect", "m.safetensors"]) == 0
    out = capsys.readouterr().out
    assert not any(ch in out for ch in "\x1b\x07\r\u202e")
    assert "\\x1b[2J" in out and "\\u202e" in out
    assert len(out) < 20_000  # 1 MB of metadata prints a few KB
    assert f"{200 + 1 - inspect_store.MAX_META} more metadata keys" in out
    assert f"{120 - inspect_store.MAX_TENSORS} more tensors" in out
    assert "more characters" in out


def test_escape():
    from daunce_fast.storage.inspect import escape

    assert escape("θ0 ok") == "θ0 ok"
    assert escape("a\nb\x00\x1b\u200b\U000e0001") == "a\\x0ab\\x00\\x1b\\u200b\\U000e0001"
    assert escape("x" * 10, limit=4) == "xxxx... (6 more characters)"
