"""Grid sweep of DAUNCE options on the LDS ground truth of bench/quality/lds_data.py (run that first).

    PYTHONPATH=$PWD python bench/quality/lds_sweep.py DATASET THREADS 'JSON grid'
    e.g. python bench/quality/lds_sweep.py digits 1 '{"num_models":[512],"epochs":[5,10],"rho":[0.3,1.0]}'

Prints one JSON line per combination: the options, LDS of covariance and Pearson scores
(non-finite scores set to 0), and the wall time of fit + recording.
"""

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
from daunce_fast.daunce import Daunce  # noqa: E402
from daunce_fast.demos.tasks import load_tabular, mlp  # noqa: E402
from daunce_fast.evaluation.metrics import lds  # noqa: E402

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
ds = sys.argv[1]
g = torch.load(f"{OUT}/lds_{ds}.pt", weights_only=False)
r = g["recipe"]
t = load_tabular(ds, test_size=r["test_size"], seed=r["split_seed"])
m = mlp(t.x_train.shape[1], t.num_classes, hidden=r["hidden"], depth=r["depth"])
m.load_state_dict(g["theta0"])
m.eval()
tr = torch.utils.data.TensorDataset(t.x_train, t.y_train)
te = torch.utils.data.TensorDataset(t.x_test, t.y_test)
grid = json.loads(sys.argv[3])
keys = list(grid)
for vals in itertools.product(*[grid[k] for k in keys]):
    kw = dict(zip(keys, vals))
    method = kw.pop("method", "covariance")
    t0 = time.time()
    d = Daunce(m, workdir=tempfile.mkdtemp(), **kw)
    d.fit(tr, record={"test": te})
    el = time.time() - t0
    res = {}
    for meth in ("covariance", "pearson"):
        try:
            S = np.asarray(d.scores("train", "test", method=meth))
        except Exception as e:  # a diverged run: report it and go on with the grid
            res[meth] = f"error: {e}"[:80]
            continue
        _, mean = lds(torch.as_tensor(np.nan_to_num(S)), g["subsets"], g["targets"])
        res[meth] = round(float(mean), 4)
    print(json.dumps({**kw, **res, "time_s": round(el, 1)}), flush=True)
