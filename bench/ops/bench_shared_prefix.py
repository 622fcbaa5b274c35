"""Shared prefix (issue 17, item 3): Daunce.fit + recording with the split vs without, on the CNN of
bench/quality/lds_cnn.py (daunce_fast.evaluation.groundtruth_cnn.cnn, digits as 1x8x8 images) and on
an MLP (daunce_fast.demos.tasks.mlp, digits), both with head-only targets.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python bench/ops/bench_shared_prefix.py [--K 256,512] [--epochs 1]
        [--repeats 3] [--models cnn,mlp] [--n-train 360] [--out bench/results/shared_prefix.md]

Each cell runs fit(train, record={"test": test}) in a fresh workdir; "off" sets
daunce_fast.lora.shared_prefix.ENABLED = False (the module switch; DAUNCE_FAST_SHARE_PREFIX=0 in the
environment does the same), "on" runs the defaults (recording shares; the training cache is used
when the first step measures it faster). Off and on alternate within each repeat (interleaved);
the table gives medians, and the training / recording split of the time (train_chunk, record_chunk).
The machine load (os.getloadavg) is printed before and after.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from daunce_fast.daunce import Daunce  # noqa: E402
from daunce_fast.daunce import pipeline as pl  # noqa: E402
from daunce_fast.demos.tasks import load_tabular, mlp, train_classifier  # noqa: E402
from daunce_fast.evaluation import groundtruth_cnn as gc  # noqa: E402
from daunce_fast.lora import shared_prefix as sp  # noqa: E402

TIMES = {"train": 0.0, "record": 0.0}


def _timed(fn, key):
    def wrapped(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMES[key] += time.perf_counter() - t0

    return wrapped


pl.train_chunk = _timed(pl.train_chunk, "train")
pl.record_chunk = _timed(pl.record_chunk, "record")


def task(name: str, n_train: int):
    """(θ0 in eval mode, the first ``n_train`` training examples, test set, head-only targets)."""
    if name == "cnn":
        t = gc.load_image_task(gc.CNNRecipe())
        model = gc.cnn(10, seed=0)
        model = train_classifier(model, t.x_train, t.y_train, epochs=3, lr=2e-3, batch_size=64, seed=0)
        targets = ["8"]
    else:
        t = load_tabular("digits", seed=0)
        model = train_classifier(mlp(64, 10, hidden=64, seed=0), t.x_train, t.y_train, epochs=5, lr=1e-2, seed=0)
        targets = [max(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))]
    model.eval()
    return model, TensorDataset(t.x_train[:n_train], t.y_train[:n_train]), TensorDataset(t.x_test, t.y_test), targets


def one(model, train, test, targets, K: int, epochs: float, share: bool) -> tuple[float, float, float]:
    sp.ENABLED = share
    sp._SPLITS.clear()
    TIMES.update(train=0.0, record=0.0)
    with tempfile.TemporaryDirectory() as wd:
        d = Daunce(model, workdir=wd, num_models=K, epochs=epochs, lr=1e-3, target_modules=targets, seed=0)
        t0 = time.perf_counter()
        d.fit(train, record={"test": test})
        total = time.perf_counter() - t0
    return total, TIMES["train"], TIMES["record"]


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except Exception:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--K", default="256,512")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--n-train", type=int, default=360, help="training examples (of 1437; all 360 test examples)")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU section of bench/gpu_check.sh)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    load0 = os.getloadavg()
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    rows = []
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device visible; nothing to run")
        return
    for name in args.models.split(","):
        model, train, test, targets = task(name, args.n_train)
        model = model.to(args.device)  # the pipeline moves each batch to θ0's device
        one(model, train, test, targets, 8, 0.1, True)  # warm-up (imports, first kernels)
        for K in [int(k) for k in args.K.split(",")]:
            res = {False: [], True: []}
            for r in range(args.repeats):
                for share in (False, True) if r % 2 == 0 else (True, False):
                    res[share].append(one(model, train, test, targets, K, args.epochs, share))
                    print(
                        f"{name} K={K} share={share} repeat {r}: total {res[share][-1][0]:.2f} s "
                        f"(train {res[share][-1][1]:.2f}, record {res[share][-1][2]:.2f}) "
                        f"load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
            med = {s: [statistics.median(x[i] for x in res[s]) for i in range(3)] for s in res}
            rows.append((name, K, med[False], med[True], min(x[0] for x in res[False]), min(x[0] for x in res[True])))
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}", flush=True)
    head = (
        "| model | K | off: total (train / record) s | on: total (train / record) s | speed-up (median total) "
        "| min total off / on s |\n| --- | --- | --- | --- | --- | --- |"
    )
    lines = [head]
    for name, K, off, on, mo, mn in rows:
        lines.append(
            f"| {name} | {K} | {off[0]:.2f} ({off[1]:.2f} / {off[2]:.2f}) | {on[0]:.2f} ({on[1]:.2f} / {on[2]:.2f}) "
            f"| {off[0] / on[0]:.2f}x | {mo:.2f} / {mn:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.device != "cpu":  # rows for gpu_check.sh's table
        import json

        out_dir = Path(os.environ.get("DAUNCE_FAST_BENCH_OUT", ROOT / "bench" / "out"))
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "results.jsonl", "a") as f:
            for name, K, off, on, _, _ in rows:
                case = f"{name} K={K} fit+record on/off"
                f.write(
                    json.dumps({"bench": "shared_prefix", "case": case, "gpu": True, "ratio": off[0] / on[0]}) + "\n"
                )
    if args.out:
        cmd = "OMP_NUM_THREADS=1 PYTHONPATH=$PWD python bench/ops/bench_shared_prefix.py " + " ".join(sys.argv[1:])
        text = f"""# Shared prefix: fit + recording with and without the split (issue 17, item 3)

What: `Daunce.fit(train, record={{"test": test}})` on digits (the first {args.n_train} of 1437 training
examples, all 360 test examples; θ0 trained on all 1437) with
head-only targets, {args.epochs:g} epoch(s), batch 128, Adam lr 1e-3, rank "full", a fresh workdir per
run. "off": `daunce_fast.lora.shared_prefix.ENABLED = False` (every forward on K·b repeated rows,
today's path); "on": the defaults (recording computes the shared prefix once per block of examples;
training gathers it from a cache over the training set when the first step measures that faster).
train = time in `train_chunk`, record = time in `record_chunk` (train and test sets).
{args.repeats} interleaved repeats per cell (off/on alternating first), medians.

- cnn: `daunce_fast.evaluation.groundtruth_cnn.cnn` (Conv 16 + BN + ReLU, Conv 32 + BN + ReLU, MaxPool,
  Linear 512→10; θ0 trained 3 epochs), targets `["8"]` (the head).
- mlp: `daunce_fast.demos.tasks.mlp(64, 10, hidden=64)` (θ0 trained 5 epochs), targets: its last Linear.

Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; Python {platform.python_version()},
torch {torch.__version__}, OMP_NUM_THREADS={os.environ["OMP_NUM_THREADS"]}; git {git_sha()} (plus the uncommitted
working tree of this change). Load average (1/5/15 min) before {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f},
after {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} (a shared 2-core machine).

Command: `{cmd}`

{table}
"""
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
