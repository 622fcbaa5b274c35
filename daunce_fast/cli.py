"""The ``daunce-fast`` command (also ``python -m daunce_fast``).

Errors. A wrong invocation never shows a traceback: it prints exactly one line on stderr,
``daunce-fast: error: <what is wrong and what to do>``, and exits with code 2. That covers

- bad options: every option is checked at parse time (``type=`` functions for positive integers,
  finite positive floats, non-empty output paths, options that need or exclude each other);
- bad inputs, i.e. the documented errors of the library: ``daunce_fast.storage.StorageError`` and
  its subclasses (corrupt, incomplete or locked files), ``ValueError``, ``TypeError``, ``KeyError``
  (a tensor name that is not in a store), ``OSError`` (missing files, directories, permissions),
  ``MemoryError`` (inputs declaring more than the machine can hold) and
  ``daunce_fast.demos.MissingExtraError`` (an optional dependency is not installed);
- Ctrl-C (``KeyboardInterrupt``): one line, exit code 130.

Any other exception is a bug in daunce_fast and keeps its traceback (please report it).
Messages of the Python API that name its keyword arguments are translated to the command's options
(``nan_policy='propagate'`` -> ``--nan-policy propagate``).

Output of ``score``: a header line naming the method used (``pearson`` by default, as
``daunce_fast.correlate`` / ``daunce_fast.topk``), then the values in ``%+.4g`` so that their
magnitude shows (a covariance of 1e-9 prints as ``+1e-09``, not ``+0.000``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys

PROG = "daunce-fast"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
METHODS = ("pearson", "covariance")  # = daunce_fast.correlation.options.METHODS (not imported: torch)
DEFAULT_METHOD = "pearson"  # = the default of daunce_fast.correlate and daunce_fast.topk
NAN_POLICIES = ("raise", "propagate")
VALUE_FMT = "{:+.4g}"
# Python-API spellings in library messages -> the command's options.
_API_TO_CLI = {"nan_policy='propagate'": "--nan-policy propagate", "nan_policy='raise'": "--nan-policy raise"}


# ------------------------------------------------------------------------------------ errors
class UsageError(Exception):
    """A wrong invocation found after parsing (e.g. options that exclude each other)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .demos import MissingExtraError
    from .storage import StorageError

    return (StorageError, ValueError, TypeError, KeyError, OSError, MemoryError, MissingExtraError, UsageError)


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` as one printable line: whitespace runs collapsed, control characters escaped."""
    from .storage.inspect import escape

    return escape(" ".join(str(text).split()), limit)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        msg = str(exc.args[0])  # str(KeyError) would add quotes
    else:
        msg = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in msg:
        msg = f"{exc.filename}: {msg}"
    for api, cli in _API_TO_CLI.items():
        msg = msg.replace(api, cli)
    return msg


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"{PROG}: error: {one_line(msg)}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """One-line errors (no usage block); subparsers inherit this class."""

    def error(self, message):
        sys.stderr.write(f"{PROG}: error: {one_line(message)} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


class _Formatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless it has no meaningful default or says it."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if "default" in h or d is None or d is False or d is argparse.SUPPRESS or not action.option_strings:
            return h
        return f"{h} (default: {d})"


# ------------------------------------------------------------------------ option types
def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"integer >= {lo}"
    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def positive_float(s: str) -> float:
    """A finite float > 0 (rejects nan, inf, 0 and negatives)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s!r}")
    return v


def input_path(s: str) -> str:
    """An input file: non-empty, and when it exists a regular file (not a directory, FIFO or device,
    which could hang a read); a missing file is reported on open (``inspect`` then looks for the
    ``.partial`` file of an unfinished writer)."""
    import stat

    if not s:
        raise argparse.ArgumentTypeError("empty path")
    try:
        st = os.stat(s)
    except FileNotFoundError:
        return s
    except OSError as exc:  # a symlink loop, a permission problem on the way
        raise argparse.ArgumentTypeError(f"{s}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise argparse.ArgumentTypeError(f"{s} is a directory; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise argparse.ArgumentTypeError(f"{s} is not a regular file")
    return s


def inspect_path(s: str) -> str:
    """An input file (see input_path), or a directory (a Daunce workdir)."""
    if s and os.path.isdir(s):
        return s
    return input_path(s)


def output_path(s: str) -> str:
    """A file to write: non-empty, not an existing directory, in a directory that exists."""
    if not s or not s.strip():
        raise argparse.ArgumentTypeError("empty output path")
    if os.path.isdir(s) or s.endswith(os.sep):
        raise argparse.ArgumentTypeError(f"{s} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(s))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"the directory of {s} does not exist")
    return s


def workdir_path(s: str) -> str:
    """A directory to keep (created if missing); an existing non-directory is refused."""
    if not s:
        raise argparse.ArgumentTypeError("empty path")
    if os.path.exists(s) and not os.path.isdir(s):
        raise argparse.ArgumentTypeError(f"{s} exists and is not a directory")
    return s


# ---------------------------------------------------------------------------------- info
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info_dict() -> dict:
    import numpy
    import torch

    from . import __version__
    from ._backends import BACKENDS, backend_status
    from ._ext import build_info

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    status = {b: backend_status(b) for b in BACKENDS}
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    else:
        device = f"cpu: {_cpu_model()} ({torch.get_num_threads()} torch threads)"
    return {
        "daunce_fast": __version__,
        "extension": build_info(),
        "backends": {b: ("live" if ok else f"off: {why}") for b, (ok, why) in status.items()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "numpy": numpy.__version__,
        "device": device,
    }


def cmd_info(args) -> int:
    d = info_dict()
    if args.json:
        import json

        print(json.dumps(d, indent=2))
        return 0
    print(f"daunce_fast {d['daunce_fast']}")
    ext = d["extension"]
    if ext is None:
        print("extension: NOT BUILT (pip install -e .); torch and Triton paths still work")
    else:
        cuda = f"yes (archs {ext['cuda_archs']}, nvcc {ext['cuda_version']})" if ext["cuda"] else "no"
        omp = f"yes ({ext['omp_max_threads']} threads)" if ext["openmp"] else "no"
        print(f"extension: built with {ext['compiler']}; CUDA kernels: {cuda}; OpenMP: {omp}")
    print("backends:")
    for b, s in d["backends"].items():
        print(f"  {b:7s} {s}")
    print(f"python {d['python']}, torch {d['torch']}, triton {d['triton'] or 'not installed'}, numpy {d['numpy']}")
    print(f"device: {d['device']}")
    return 0


# ---------------------------------------------------------------------------------- demo
DEMO_OUT = "daunce_demo.png"


def cmd_demo(args) -> int:
    from .demos import require_extra

    if args.lm:
        if args.out is not None:
            raise UsageError("--out: the --lm demo prints its result and writes no figure; drop --out")
        if args.num_test is not None or args.k is not None:
            raise UsageError("--num-test and -k belong to the digits demo, not to --lm")
        require_extra("lm", "transformers")
        from .demos.lm_backdoor import run_lm_demo

        run_lm_demo(
            budget_s=args.budget or 180.0,
            progress=not args.quiet,
            num_models=args.models,
            seed=args.seed,
            workdir=args.workdir,
        )
        return 0
    require_extra("demo", "sklearn", "matplotlib")
    from .demos.digits import run

    run(
        budget_s=args.budget or 90.0,
        num_models=args.models,
        num_test=args.num_test or 4,
        k=args.k or 5,
        out=args.out or DEMO_OUT,
        seed=args.seed,
        workdir=args.workdir,
        progress=not args.quiet,
    )
    return 0


# --------------------------------------------------------------------------------- score
def _open_matrix(path: str, name: str | None, files: contextlib.ExitStack):
    """The [K, N] loss matrix at ``path`` (.npy, memory-mapped; or a safetensors file / sharded
    index, tensor ``name`` or its only one) as a correlation Source: the library's one reader,
    which decodes stored bfloat16 / float8 exactly and refuses non-numeric dtypes (TypeError).
    A store opened here is closed by ``files``."""
    from . import storage
    from .correlation.source import Source

    if path.endswith(".npy"):
        return Source(path, path)
    from .storage.inspect import check_safetensors

    if os.path.lexists(path):  # else open_any names the missing file (or its unfinished .partial)
        check_safetensors(path)  # "not a safetensors file" from the first bytes, before any header is read
    store = files.enter_context(storage.open_any(path))
    names = store.names()
    if name is None:
        if len(names) != 1:
            raise UsageError(
                f"{path} holds {len(names)} tensors ({', '.join(map(repr, names[:10]))}"
                f"{', ...' if len(names) > 10 else ''}); choose one with --name"
            )
        name = names[0]
    elif name not in names:
        raise UsageError(f"{path} has no tensor {name!r}; it holds {', '.join(map(repr, names[:10]))}")
    return Source(store, path, tensor=name)


def _fmt_row(values) -> str:
    return " ".join(VALUE_FMT.format(float(v)) for v in values)


def cmd_score(args) -> int:
    if args.least and args.topk is None:
        raise UsageError("--least needs --topk (it picks the least helpful of the top-k)")
    if args.name is not None and args.train.endswith(".npy") and args.test.endswith(".npy"):
        raise UsageError("--name picks a tensor inside safetensors inputs; both inputs are .npy files")
    if args.out is not None and os.path.abspath(args.out) in (os.path.abspath(args.train), os.path.abspath(args.test)):
        raise UsageError(f"--out {args.out} is one of the inputs")
    with contextlib.ExitStack() as files:
        a = _open_matrix(args.train, args.name, files)
        b = _open_matrix(args.test, args.name, files)
        return _score(args, a, b)


def _score(args, a, b) -> int:
    import numpy as np

    from .correlation.api import correlate, topk

    progress = sys.stderr.isatty()
    what = f"top-{args.topk} {'least' if args.least else 'most'} helpful per test example" if args.topk else "scores"
    print(f"method: {args.method}; {what}; train {(a.K, a.n)}, test {(b.K, b.n)} ([K, N] targets: row = model)")
    if args.topk:
        v, i = topk(
            a, b, args.topk, method=args.method, largest=not args.least, progress=progress, nan_policy=args.nan_policy
        )
        v, i = np.asarray(v), np.asarray(i)
        if args.out:
            from . import storage

            with storage.create(
                args.out,
                {"values": (v.shape, "float32"), "indices": (i.shape, "int64")},
                metadata={"method": args.method, "largest": str(not args.least)},
            ) as w:
                w["values"][...] = v
                w["indices"][...] = i
            print(f"wrote {os.path.abspath(args.out)}: values and indices [{v.shape[0]}, {v.shape[1]}] ({args.method})")
        else:
            for j in range(min(v.shape[0], args.show)):
                print(f"test {j}: " + ", ".join(f"{int(t)}:{VALUE_FMT.format(float(s))}" for t, s in zip(i[j], v[j])))
        return 0
    s = correlate(a, b, method=args.method, out=args.out, progress=progress, nan_policy=args.nan_policy)
    if args.out:
        print(f"wrote {os.path.abspath(args.out)}: {args.method} scores [{s.shape[0]}, {s.shape[1]}]")
        return 0
    print(
        f"{args.method} scores [{s.shape[0]}, {s.shape[1]}], first {min(args.show, s.shape[0])} rows "
        f"(train) x {min(args.show, s.shape[1])} columns (test):"
    )
    for r in np.asarray(s[: args.show, : args.show]):
        print("  " + _fmt_row(r))
    return 0


# ------------------------------------------------------------------------------- inspect
def cmd_inspect(args) -> int:
    if os.path.isdir(args.file):
        from .daunce.workdir import STATE_FILE
        from .daunce.workdir import describe as describe_workdir

        if not os.path.exists(os.path.join(args.file, STATE_FILE)):
            raise ValueError(f"{args.file} is a directory without {STATE_FILE}: not a Daunce workdir")
        from pathlib import Path

        print(describe_workdir(Path(args.file)))
        return 0
    from .storage.inspect import describe

    print(describe(args.file))
    return 0


# -------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Fast DAUNCE training-data attribution. Wrong invocations print one line on "
        "stderr and exit with code 2.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}", help="print the version and exit")
    sub = p.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=_Parser,
        help="one of the commands below; `daunce-fast COMMAND --help` describes it",
    )

    def add(name, help_, description):
        return sub.add_parser(name, help=help_, description=description, formatter_class=_Formatter)

    pi = add(
        "info",
        "version, build, live backends, device",
        "Print the version, how the compiled extension was built, the live backends and the device.",
    )
    pi.add_argument("--json", action="store_true", help="print as JSON")
    pi.set_defaults(func=cmd_info)

    pd = add(
        "demo",
        "DAUNCE on the bundled digits data set (no download, CPU)",
        "Train θ0 on scikit-learn's digits, run DAUNCE and show the most helpful and most harmful "
        "training images of a few test images (needs the 'demo' extra); with --lm, find "
        "backdoor-poisoned training pairs of a small Llama (needs the 'lm' extra). Temporary files "
        "are removed at the end unless --workdir is given.",
    )
    pd.add_argument(
        "--lm",
        action="store_true",
        help="the language-model case instead: find backdoor-poisoned training pairs of a small Llama "
        '(pip install "daunce_fast[lm]"); prints its result, writes no figure',
    )
    pd.add_argument(
        "--budget",
        type=positive_float,
        default=None,
        help="seconds for the DAUNCE models, chooses K (default: 90; 180 with --lm)",
    )
    pd.add_argument(
        "--models",
        type=_int_at_least(2),
        default=None,
        help="number of perturbed models K; overrides --budget (default: chosen by --budget)",
    )
    pd.add_argument(
        "--num-test", type=positive_int, default=None, help="test examples to explain (default: 4; not with --lm)"
    )
    pd.add_argument(
        "-k",
        type=positive_int,
        default=None,
        help="helpful / harmful examples shown per test example (default: 5; not with --lm)",
    )
    pd.add_argument(
        "--out",
        type=output_path,
        default=None,
        help=f"PNG figure path; its absolute path is printed (default: {DEMO_OUT} in the current "
        "directory; not with --lm)",
    )
    pd.add_argument(
        "--workdir",
        type=workdir_path,
        default=None,
        help="keep losses and adapters in this directory, resumable (default: a temporary "
        "directory removed at the end)",
    )
    pd.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the data split, θ0 and DAUNCE")
    pd.add_argument("--quiet", action="store_true", help="no progress bars")
    pd.set_defaults(func=cmd_demo)

    ps = add(
        "score",
        "scores from your own [K, N] loss matrices (safetensors or .npy)",
        "Correlate the per-model targets of training and test examples across the K models: the full "
        "[N_train, N_test] score matrix, or the top-k training examples per test example. Every output "
        "names the method used; values print as %+.4g.",
    )
    ps.add_argument(
        "train", type=input_path, help="[K, N_train] targets of the K models (.npy, safetensors or a sharded index)"
    )
    ps.add_argument("test", type=input_path, help="[K, N_test] targets of the same K models")
    ps.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=METHODS,
        help="pearson: correlation in [-1, 1]; covariance: the DAUNCE pipeline's score "
        f"(default: {DEFAULT_METHOD}, as daunce_fast.correlate / daunce_fast.topk)",
    )
    ps.add_argument(
        "--topk",
        type=positive_int,
        default=None,
        help="the k most helpful training examples per test example instead of the full matrix "
        "(default: the full matrix)",
    )
    ps.add_argument("--least", action="store_true", help="with --topk: the k least helpful (most harmful) instead")
    ps.add_argument(
        "--nan-policy",
        default="raise",
        choices=NAN_POLICIES,
        help="raise: a NaN or infinite target is an error; propagate: let it flow into the scores",
    )
    ps.add_argument(
        "--out",
        type=output_path,
        default=None,
        help="write the results to this safetensors file (full matrices are streamed; default: print them)",
    )
    ps.add_argument("--name", default=None, help="tensor name inside safetensors inputs (default: their only tensor)")
    ps.add_argument(
        "--show", type=nonnegative_int, default=5, help="rows (and columns) to print when not writing a file"
    )
    ps.set_defaults(func=cmd_score)

    pn = add(
        "inspect",
        "shapes, dtypes, metadata and completeness of a store; a Daunce workdir's run",
        "Describe a safetensors file, a sharded index or an interrupted writer's .partial file "
        "without loading its data; or a Daunce workdir: K, options, the calibrated lr and epochs with "
        "what they came from and the first chunk's warnings, what is perturbed, the loss stores. Names "
        "and metadata are printed escaped and truncated.",
    )
    pn.add_argument("file", type=inspect_path, help="the file (or Daunce workdir) to describe")
    pn.set_defaults(func=cmd_inspect)
    return p


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a parse error already printed as one line
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except _user_errors() as exc:
        return _fail(_message(exc))


if __name__ == "__main__":
    sys.exit(main())
