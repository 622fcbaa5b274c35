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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daunce-fast", description="Fast DAUNCE training-data attribution.")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="version, build, live backends, device")
    pi.add_argument("--json", action="store_true", help="print as JSON")
    pi.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
