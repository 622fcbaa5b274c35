"""`daunce-fast demo`: DAUNCE on scikit-learn's digits, end to end on a CPU in a few minutes.

Trains θ0 (an MLP 64-64-10) on the bundled digits, runs DAUNCE with the library's defaults and as
many models as fit the time budget (batched), prints the most helpful and most harmful training
examples of a few test examples and saves a PNG figure of them.

Temporary work (the calibration probe, and the DAUNCE workdir unless ``workdir`` is given) lives in
one ``tempfile.TemporaryDirectory`` that is removed when ``run`` returns or raises.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from . import closing_line, in_workdir


def _calibrate(make, task, budget_s: float, k_probe: int, k_max: int, probe_dir: str) -> int:
    """Models that fit ``budget_s`` seconds, from the time of a probe run of ``k_probe`` models.

    The probe's fixed costs (θ0's outputs, first-call set-up) count as per-model cost here, so the
    estimate errs on the short side; the result is a multiple of 128 within [k_probe, k_max].
    ``probe_dir``: the probe's workdir (the caller removes it)."""
    t0 = time.perf_counter()
    make(k_probe, probe_dir).fit(task)
    per_model = (time.perf_counter() - t0) / k_probe
    k = int(budget_s / max(per_model, 1e-6))
    return max(k_probe, min(k_max, k - k % 128))


def figure(path: Path, task, test_ids, helpful, harmful) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, k = len(test_ids), helpful.shape[1]
    fig, axes = plt.subplots(n, 2 * k + 1, figsize=(1.25 * (2 * k + 1), 1.45 * n))
    axes = np.atleast_2d(axes)
    for r, j in enumerate(test_ids):
        cells = [("test", task.images_test[j], int(task.y_test[j]), "black")]
        cells += [("helps", task.images_train[i], int(task.y_train[i]), "tab:green") for i in helpful[r]]
        cells += [("harms", task.images_train[i], int(task.y_train[i]), "tab:red") for i in harmful[r]]
        for c, (kind, img, lab, color) in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray_r")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{kind} y={lab}", fontsize=7, color=color)
            for s in ax.spines.values():
                s.set_edgecolor(color)
                s.set_linewidth(2 if c else 1)
    fig.suptitle(
        "DAUNCE on digits: each test image, its most helpful (green) and most harmful (red) training images", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    budget_s: float = 90.0,
    num_models: int | None = None,
    num_test: int = 4,
    k: int = 5,
    out: str = "daunce_demo.png",
    seed: int = 0,
    workdir: str | None = None,
    progress: bool = True,
) -> dict:
    """The digits demo; returns {"num_models", "fit_s", "total_s", "label_agreement", "figure" (absolute
    path), "workdir" (None when it was temporary)}. ``workdir``: keep the DAUNCE run there (resumable);
    without it every file lives in a temporary directory removed at the end, success or error.
    Raises ValueError for an out-of-range ``num_test`` / ``k`` / ``budget_s``."""
    if not (isinstance(budget_s, (int, float)) and np.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"budget_s must be a finite number > 0, got {budget_s!r}")
    return in_workdir(
        workdir, "daunce_demo_", lambda wd, tmp: _run(budget_s, num_models, num_test, k, out, seed, wd, progress, tmp)
    )


def _run(budget_s, num_models, num_test, k, out, seed, wd, progress, tmp) -> dict:
    import torch

    from ..daunce import Daunce
    from .tasks import load_tabular, mlp, train_classifier

    torch.manual_seed(seed)
    t_start = time.perf_counter()
    task = load_tabular("digits", seed=seed)
    train = torch.utils.data.TensorDataset(task.x_train, task.y_train)
    test = torch.utils.data.TensorDataset(task.x_test, task.y_test)
    print(f"digits: {len(train)} training and {len(test)} test images, 10 classes")
    if not 1 <= num_test <= len(test):
        raise ValueError(f"num_test must be in [1, {len(test)}] (the digits test images), got {num_test}")
    if not 1 <= k <= len(train):
        raise ValueError(f"k must be in [1, {len(train)}] (the digits training images), got {k}")

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds synchronisation
    theta0 = train_classifier(
        mlp(64, 10, seed=seed), task.x_train, task.y_train, epochs=20, lr=3e-3, batch_size=128, seed=seed
    )
    torch.set_num_threads(threads)
    acc = (theta0(task.x_test).argmax(1) == task.y_test).float().mean().item()
    print(f"θ0: MLP 64-64-10 trained in {time.perf_counter() - t0:.1f} s, test accuracy {acc:.3f}")

    def make(K, wd):
        return Daunce(theta0, num_models=K, seed=seed, workdir=wd, progress=False)

    if num_models is None:
        with tempfile.TemporaryDirectory(prefix="daunce_probe_", dir=tmp) as probe_tmp:
            num_models = _calibrate(make, train, budget_s * 0.6, 128, 2048, probe_tmp)
        print(f"time budget {budget_s:.0f} s -> K = {num_models} perturbed models")
    t0 = time.perf_counter()
    d = Daunce(theta0, num_models=num_models, seed=seed, workdir=wd, progress=progress)
    if not progress:  # with progress bars, fit prints the summary above them itself
        print(d.summary())  # what each of the K copies perturbs, before training starts
    d.fit(train, record={"test": test})
    t_fit = time.perf_counter() - t0
    cfg, cal = d.config, d.calibration
    print(
        f"DAUNCE: K={num_models} models (objective={cfg.objective}, perturbation={cfg.perturbation}, "
        f"ratio={cfg.ratio}, rho={cfg.rho}, lr={cal.lr:g} ({cal.lr_source}), {cal.epochs:g} epochs "
        f"({cal.epochs_source}), rank={d.rank}) trained and recorded in {t_fit:.1f} s, in chunks of {d.chunk_size()}"
    )

    rng = np.random.default_rng(seed)
    test_ids = np.sort(rng.choice(len(test), size=num_test, replace=False))
    t0 = time.perf_counter()
    sub = torch.utils.data.TensorDataset(task.x_test[test_ids], task.y_test[test_ids])
    hv, hi = d.scores("train", sub, topk=k, largest=True)
    lv, li = d.scores("train", sub, topk=k, largest=False)
    hv, hi, lv, li = (np.asarray(x) for x in (hv, hi, lv, li))
    print(f"scores: top-{k} most and least helpful per test example in {time.perf_counter() - t0:.2f} s")
    for r, j in enumerate(test_ids):
        print(f"\ntest #{j} (label {int(task.y_test[j])}):")
        print(
            "  most helpful: " + ", ".join(f"#{i} (y={int(task.y_train[i])}, {v:+.2e})" for i, v in zip(hi[r], hv[r]))
        )
        print(
            "  most harmful: " + ", ".join(f"#{i} (y={int(task.y_train[i])}, {v:+.2e})" for i, v in zip(li[r], lv[r]))
        )
    same = float(
        np.mean([(task.y_train[hi[r]] == task.y_test[j]).float().mean().item() for r, j in enumerate(test_ids)])
    )
    print(f"\nshare of most-helpful training images with the test image's label: {same:.2f}")
    fig_path = Path(out).resolve()
    figure(fig_path, task, test_ids, hi, li)
    print(f"figure: {fig_path}")
    total, kept = closing_line(t_start, wd, tmp)
    return {
        "num_models": num_models,
        "fit_s": t_fit,
        "total_s": total,
        "label_agreement": same,
        "figure": str(fig_path),
        "workdir": kept,
    }
