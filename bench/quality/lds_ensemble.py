"""LDS of DAUNCE ensembles over θ0 checkpoints (θ0 and the extra full-data models of
bench/quality/lds_data.py), with daunce_fast.daunce.ensemble_scores; prints LDS as checkpoints are added.

    PYTHONPATH=$PWD python bench/quality/lds_ensemble.py DATASET K [THREADS]
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from daunce_fast.daunce import Daunce, ensemble_scores  # noqa: E402
from daunce_fast.demos.tasks import load_tabular, mlp  # noqa: E402
from daunce_fast.evaluation.metrics import lds  # noqa: E402


def main(ds: str, K: int, threads: int = 1) -> None:
    torch.set_num_threads(threads)
    g = torch.load(ROOT / "bench" / "out" / f"lds_{ds}.pt", weights_only=False)
    r = g["recipe"]
    t = load_tabular(ds, test_size=r["test_size"], seed=r["split_seed"])
    train = torch.utils.data.TensorDataset(t.x_train, t.y_train)
    test = torch.utils.data.TensorDataset(t.x_test, t.y_test)
    runs, t0 = [], time.time()
    for i, sd in enumerate([g["theta0"], *g["extra_ckpts"]]):
        m = mlp(t.x_train.shape[1], t.num_classes, hidden=r["hidden"], depth=r["depth"])
        m.load_state_dict(sd)
        runs.append(
            Daunce(m.eval(), workdir=tempfile.mkdtemp(), num_models=K, seed=i).fit(train, record={"test": test})
        )
        s = ensemble_scores(runs, "train", "test")
        print(
            f"{ds} K={K} x {i + 1} checkpoints: LDS {lds(torch.as_tensor(s), g['subsets'], g['targets'])[1]:.4f} "
            f"({time.time() - t0:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
