"""Every wrong invocation of ``daunce-fast``: exit code 2 and exactly one line on stderr naming the
problem, no traceback (in-process through daunce_fast.cli.main, so these run in milliseconds)."""

import os
import sys

import numpy as np
import pytest

from daunce_fast import storage
from daunce_fast.cli import main


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working directory with valid and invalid inputs; returns its path."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save("a.npy", rng.standard_normal((8, 20)).astype(np.float32))
    np.save("b.npy", rng.standard_normal((8, 5)).astype(np.float32))
    np.save("complex.npy", np.zeros((8, 5), complex))
    np.save("bool.npy", np.zeros((8, 5), bool))
    np.save("str.npy", np.full((8, 5), "x"))
    nan = rng.standard_normal((8, 5))
    nan[2, 3] = np.nan
    np.save("nan.npy", nan)
    with storage.create("two.safetensors", {"x": ((8, 5), "float32"), "y": ((8, 5), "float32")}) as w:
        w["x"][...] = 1.0
        w["y"][...] = 2.0
    w = storage.create("inc.safetensors", {"t": ((8, 5), "float32")})
    w.mark_done("tile0")
    w.flush()  # left unfinished on purpose: inc.safetensors.partial
    (tmp_path / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    (tmp_path / "adir").mkdir()
    yield tmp_path
    w.abort()


def _one_line_error(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, rc, err)
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("daunce-fast: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err
    return lines[0]


WRONG = [
    # (argv, words the one line must contain)
    (["score", "inc.safetensors.partial", "b.npy"], ["partial"]),
    (["score", "inc.safetensors", "b.npy"], ["inc.safetensors"]),
    (["score", "adir", "b.npy"], ["adir", "directory"]),
    (["score", "a.npy", "adir"], ["adir", "directory"]),
    (["score", "a.npy", "b.npy", "--out", "adir"], ["--out", "directory"]),
    (["score", "a.npy", "b.npy", "--out", ""], ["--out", "empty"]),
    (["score", "a.npy", "b.npy", "--out", "nowhere/s.safetensors"], ["--out", "does not exist"]),
    (["score", "a.npy", "b.npy", "--out", "a.npy"], ["--out", "input"]),
    (["score", "complex.npy", "b.npy"], ["complex.npy", "complex"]),
    (["score", "bool.npy", "b.npy"], ["bool.npy", "bool"]),
    (["score", "str.npy", "b.npy"], ["str.npy", "dtype"]),
    (["score", "fig.png", "b.npy"], ["fig.png", "not a safetensors file"]),
    (["score", "missing.npy", "b.npy"], ["missing.npy"]),
    (["score", "two.safetensors", "two.safetensors"], ["two.safetensors", "--name"]),
    (["score", "two.safetensors", "two.safetensors", "--name", "z"], ["'z'"]),
    (["score", "a.npy", "b.npy", "--topk", "0"], ["--topk", ">= 1"]),
    (["score", "a.npy", "b.npy", "--topk", "x"], ["--topk", "integer"]),
    (["score", "a.npy", "b.npy", "--least"], ["--least", "--topk"]),
    (["score", "a.npy", "b.npy", "--name", "t"], ["--name", ".npy"]),
    (["score", "a.npy", "b.npy", "--show", "-1"], ["--show", ">= 0"]),
    (["score", "a.npy", "b.npy", "--method", "spearman"], ["--method", "spearman"]),
    (["score", "a.npy", "b.npy", "--nan-policy", "omit"], ["--nan-policy"]),
    (["score", "a.npy"], ["test"]),
    (["inspect", "inc.safetensors.nope"], ["inc.safetensors.nope"]),
    (["inspect", "a.npy"], ["a.npy", "not a safetensors file"]),
    (["inspect", "fig.png"], ["fig.png", "not a safetensors file"]),
    (["inspect", "adir"], ["adir", "directory"]),
    (["demo", "-k", "0"], ["-k", ">= 1"]),
    (["demo", "--workdir", "a.npy"], ["--workdir", "not a directory"]),
    (["demo", "--num-test", "0"], ["--num-test", ">= 1"]),
    (["demo", "--num-test", "-1"], ["--num-test", ">= 1"]),
    (["demo", "--budget", "nan"], ["--budget", "finite"]),
    (["demo", "--budget", "inf"], ["--budget", "finite"]),
    (["demo", "--budget", "-5"], ["--budget", "> 0"]),
    (["demo", "--budget", "0"], ["--budget", "> 0"]),
    (["demo", "--models", "1"], ["--models", ">= 2"]),
    (["demo", "--out", ""], ["--out", "empty"]),
    (["demo", "--out", "adir"], ["--out", "directory"]),
    (["demo", "--lm", "--out", "x.png"], ["--out", "--lm"]),
    (["demo", "--lm", "--num-test", "2"], ["--num-test", "--lm"]),
    (["frobnicate"], ["frobnicate"]),
    ([], ["required"]),
]


@pytest.mark.parametrize("argv,needles", WRONG, ids=[" ".join(a) or "<none>" for a, _ in WRONG])
def test_wrong_invocation_is_one_line_exit_2(files, capsys, argv, needles):
    _one_line_error(capsys, argv, *needles)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_fifo_and_symlink_loop_inputs_are_refused_without_hanging(files, capsys):
    os.mkfifo("pipe.safetensors")
    os.symlink("loop", "loop")
    _one_line_error(capsys, ["inspect", "pipe.safetensors"], "not a regular file")
    _one_line_error(capsys, ["score", "pipe.safetensors", "b.npy"], "not a regular file")
    _one_line_error(capsys, ["score", "loop", "b.npy"], "loop")


def test_nan_error_names_the_cli_option(files, capsys):
    line = _one_line_error(capsys, ["score", "nan.npy", "nan.npy"], "--nan-policy propagate")
    assert "nan_policy=" not in line
    assert main(["score", "nan.npy", "nan.npy", "--nan-policy", "propagate"]) == 0


def test_lm_demo_without_transformers_says_which_extra(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    _one_line_error(capsys, ["demo", "--lm", "--models", "2"], 'pip install "daunce_fast[lm]"')


def test_keyboard_interrupt_is_one_line_exit_130(files, capsys, monkeypatch):
    import daunce_fast.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_inspect", interrupted)
    assert main(["inspect", "a.npy"]) == 130
    err = capsys.readouterr().err
    assert err == "daunce-fast: error: interrupted\n"


def test_a_bug_keeps_its_traceback(files, monkeypatch):
    import daunce_fast.cli as cli

    def buggy(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_inspect", buggy)
    with pytest.raises(ZeroDivisionError):
        main(["inspect", "a.npy"])


def test_storage_memory_error_is_one_line(files, capsys, monkeypatch):
    import daunce_fast.cli as cli

    def too_big(args):
        raise MemoryError("a.npy: the tensor needs 8.0 GiB, more than the 2.0 GiB available")

    monkeypatch.setattr(cli, "cmd_inspect", too_big)
    _one_line_error(capsys, ["inspect", "a.npy"], "8.0 GiB")
