"""The ``daunce-fast`` command (also ``python -m daunce_fast``)."""
from __future__ import annotations

import argparse
import platform
import sys


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


def cmd_demo(args) -> int:
    args.budget_given = args.budget is not None
    if args.budget is None:
        args.budget = 90.0
    if args.lm:
        from .lm_demo import run_lm_demo

        run_lm_demo(budget_s=args.budget if args.budget_given else 180.0, progress=not args.quiet,
                    num_models=args.models, seed=args.seed, workdir=args.workdir)
        return 0
    from .demo import run

    run(budget_s=args.budget, num_models=args.models, num_test=args.num_test, k=args.k, out=args.out,
        seed=args.seed, workdir=args.workdir, progress=not args.quiet)
    return 0


def _load_matrix(path: str, name: str | None):
    """A [K, N] loss matrix from .npy (memory-mapped) or a safetensors file / sharded index."""
    import numpy as np

    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    from . import storage

    r = storage.open(path)
    names = r.names()
    if name is None:
        if len(names) != 1:
            raise SystemExit(f"{path} holds tensors {names}; choose one with --name")
        name = names[0]
    return r[name]


def cmd_score(args) -> int:
    import numpy as np

    import daunce_fast as df

    a, b = _load_matrix(args.train, args.name), _load_matrix(args.test, args.name)
    print(f"train {tuple(a.shape)}, test {tuple(b.shape)} ([K, N] targets: row = model)")
    if args.topk:
        v, i = df.topk(a, b, args.topk, method=args.method, largest=not args.least, progress=True)
        v, i = np.asarray(v), np.asarray(i)
        if args.out:
            from . import storage

            with storage.create(args.out, {"values": (v.shape, "float32"), "indices": (i.shape, "int64")},
                                metadata={"method": args.method, "largest": str(not args.least)}) as w:
                w["values"][...] = v
                w["indices"][...] = i
            print(f"wrote {args.out}: values and indices [{v.shape[0]}, {v.shape[1]}]")
        else:
            for j in range(min(v.shape[0], args.show)):
                print(f"test {j}: " + ", ".join(f"{int(t)}:{s:+.3f}" for t, s in zip(i[j], v[j])))
        return 0
    s = df.correlate(a, b, method=args.method, out=args.out, progress=True)
    print(f"scores [{s.shape[0]}, {s.shape[1]}]" + (f" written to {args.out}" if args.out else ""))
    if not args.out:
        print(np.asarray(s[: args.show, : args.show]))
    return 0


def cmd_inspect(args) -> int:
    from .inspect_store import describe

    print(describe(args.file))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daunce-fast", description="Fast DAUNCE training-data attribution.")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="version, build, live backends, device")
    pi.add_argument("--json", action="store_true", help="print as JSON")
    pi.set_defaults(func=cmd_info)

    pd = sub.add_parser("demo", help="DAUNCE on the bundled digits data set (no download, CPU)")
    pd.add_argument("--lm", action="store_true",
                    help="the language-model case instead: find backdoor-poisoned training pairs of a small Llama")
    pd.add_argument("--budget", type=float, default=None,
                    help="seconds for the DAUNCE models, chooses K (default 90; 180 with --lm)")
    pd.add_argument("--models", type=int, default=None, help="number of perturbed models K (overrides --budget)")
    pd.add_argument("--num-test", type=int, default=4, help="test examples to explain")
    pd.add_argument("-k", type=int, default=5, help="helpful / harmful examples shown per test example")
    pd.add_argument("--out", default="daunce_demo.png", help="PNG figure path")
    pd.add_argument("--workdir", default=None, help="keep losses and adapters here (resumable)")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--quiet", action="store_true", help="no progress bars")
    pd.set_defaults(func=cmd_demo)

    ps = sub.add_parser("score", help="scores from your own [K, N] loss matrices (safetensors or .npy)")
    ps.add_argument("train", help="[K, N_train] targets of the K models")
    ps.add_argument("test", help="[K, N_test] targets of the same K models")
    ps.add_argument("--topk", type=int, default=None, help="top-k per test example instead of the full matrix")
    ps.add_argument("--least", action="store_true", help="with --topk: the least helpful instead")
    ps.add_argument("--method", default="covariance", choices=["covariance", "pearson"])
    ps.add_argument("--out", default=None, help="write results to this safetensors file (streamed for full matrices)")
    ps.add_argument("--name", default=None, help="tensor name inside the safetensors inputs")
    ps.add_argument("--show", type=int, default=5, help="rows to print when not writing a file")
    ps.set_defaults(func=cmd_score)

    pn = sub.add_parser("inspect", help="shapes, dtypes, metadata and completeness of a store")
    pn.add_argument("file")
    pn.set_defaults(func=cmd_inspect)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as exc:  # bad input files or options: no traceback
        print(f"daunce-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
