"""pytest-benchmark timings of each op at one or two small CPU shapes, to compare commits.

    pytest bench/ops --benchmark-only --benchmark-json=bench/out/ops.json
    pytest bench/ops --benchmark-only --benchmark-autosave              # .benchmarks/, then:
    pytest bench/ops --benchmark-only --benchmark-compare               # against the last saved run

Absolute times of our ops only (one torch thread, fixed rounds): the side-by-side ratios against
the limit and the reference ways stay in the harness scripts next to this file (bench_*.py), where
a ratio is the figure. Not part of the default test run (testpaths = ["tests"]); the shapes are
small so the whole file finishes in well under a minute. Each benchmark also checks its result, so
a broken op fails here rather than timing nonsense.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import daunce_fast
from daunce_fast import lora, storage
from daunce_fast.correlation import sharded
from daunce_fast.correlation.merge import merge_candidates
from daunce_fast.losses import per_example_loss

ROUNDS = {"rounds": 5, "iterations": 1, "warmup_rounds": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread, as the harness scripts run on shared machines (2 threads contend)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _losses(K: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((K, n), dtype=np.float32)


# ------------------------------------------------------------------------------------ correlation
@pytest.mark.benchmark(group="correlation")
@pytest.mark.parametrize("N", [50_000, 200_000])
def test_topk_cpu(benchmark, N):
    """topk(train [64, N], test [64, 256], k=32), cpu backend, standardisation included."""
    A, B = _losses(64, N, 0), _losses(64, 256, 1)
    res = benchmark.pedantic(daunce_fast.topk, (A, B, 32), {"backend": "cpu"}, **ROUNDS)
    assert tuple(res.indices.shape) == (256, 32)


@pytest.mark.benchmark(group="correlation")
def test_correlate_in_memory(benchmark):
    """correlate(train [64, 20,000], test [64, 256]): the full [N, M] matrix in memory."""
    A, B = _losses(64, 20_000, 0), _losses(64, 256, 1)
    s = benchmark.pedantic(daunce_fast.correlate, (A, B), **ROUNDS)
    assert tuple(s.shape) == (20_000, 256)


# -------------------------------------------------------------------------------------- loss head
@pytest.mark.benchmark(group="loss_head")
@pytest.mark.parametrize("V", [8_192, 32_000])
def test_per_example_loss_fwd_bwd(benchmark, V):
    """per_example_loss(h [8, 64, 256], W [V, 256], labels [8, 64]) forward + backward to h: 512
    rows, per-example mean over the tokens."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(8, 64, 256, generator=g, requires_grad=True)
    W = torch.randn(V, 256, generator=g) * 0.05
    y = torch.randint(0, V, (8, 64), generator=g)

    def step():
        h.grad = None
        loss = per_example_loss(h, W, y)
        loss.sum().backward()
        return loss.detach()

    loss = benchmark.pedantic(step, **ROUNDS)
    assert loss.shape == (8,) and torch.isfinite(loss).all() and h.grad is not None


# ------------------------------------------------------------------------------------- multi-LoRA
@pytest.mark.benchmark(group="multilora")
def test_multilora_linear_fwd_bwd(benchmark):
    """One MultiLoRALinear 256 -> 1024, K = 16 adapters of rank 16, 64 rows each: forward +
    backward to the input and both adapter factors."""
    torch.manual_seed(0)
    K, m, d_in, d_out = 16, 64, 256, 1024
    base = torch.nn.Linear(d_in, d_out).requires_grad_(False)
    layer = lora.MultiLoRALinear(base, K, 16, 32.0, seed=0)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.01)
    x = torch.randn(K * m, d_in, requires_grad=True)
    gy = torch.randn(K * m, d_out)

    def step():
        y = layer(x)
        return torch.autograd.grad(y, [x, layer.lora_A, layer.lora_B], gy)

    gx, ga, gb = benchmark.pedantic(step, **ROUNDS)
    assert gx.shape == x.shape and ga.shape == layer.lora_A.shape and gb.shape == layer.lora_B.shape


# ---------------------------------------------------------------------------------------- storage
@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """A [64, 262,144] float32 store (64 MiB), written once for the read benchmark."""
    path = tmp_path_factory.mktemp("store") / "losses.safetensors"
    x = _losses(64, 1 << 18, 0)
    with storage.create(path, {"loss": ((64, 1 << 18), "float32")}, durable=False) as w:
        w["loss"][:, :] = x
    return path, x


@pytest.mark.benchmark(group="storage")
def test_storage_write_column_tiles(benchmark, tmp_path):
    """Write [64, 131,072] float32 (32 MiB) in column tiles of 16,384 through storage.create
    (durable=False: the page cache, not the disk, so that runs compare code, not a shared disk)."""
    x = _losses(64, 1 << 17, 0)
    path = tmp_path / "w.safetensors"

    def write():
        path.unlink(missing_ok=True)
        with storage.create(path, {"loss": (x.shape, "float32")}, durable=False) as w:
            for j0 in range(0, x.shape[1], 1 << 14):
                w["loss"][:, j0 : j0 + (1 << 14)] = x[:, j0 : j0 + (1 << 14)]

    benchmark.pedantic(write, **ROUNDS)
    with storage.open(path) as r:
        assert np.array_equal(r.read("loss", (slice(None), slice(5000, 5100))), x[:, 5000:5100])


@pytest.mark.benchmark(group="storage")
def test_storage_read_column_tile(benchmark, store_path):
    """Open the 64 MiB store and read one column tile [64, 4096] with reader.read (warm cache)."""
    path, x = store_path

    def read():
        with storage.open(path) as r:
            return r.read("loss", (slice(None), slice(100_000, 104_096)))

    got = benchmark.pedantic(read, rounds=20, iterations=1, warmup_rounds=2)
    assert np.array_equal(got, x[:, 100_000:104_096])


# ------------------------------------------------------------------------------------ distributed
@pytest.mark.benchmark(group="distributed")
def test_merge_candidates_8_ranks(benchmark):
    """The merge after the all_gather: 8 ranks' [1000, 100] candidate lists -> the best 100."""
    g = torch.Generator().manual_seed(0)
    W, M, k = 8, 1000, 100
    values = torch.randn(M, W * k, generator=g)
    indices = torch.randperm(W * 10_000, generator=g)[: W * k].repeat(M, 1)
    v, i = benchmark.pedantic(merge_candidates, (values, indices, k), **ROUNDS)
    assert v.shape == i.shape == (M, k)
    torch.testing.assert_close(v, values.topk(k, dim=1).values)


@pytest.mark.benchmark(group="distributed")
def test_sharded_topk_from_store(benchmark, store_path):
    """correlation.sharded.topk of the store's path (read in column blocks) against [64, 256], k=32,
    outside a process group (one rank: what each rank runs on its share)."""
    path, x = store_path
    B = _losses(64, 256, 1)
    res = benchmark.pedantic(sharded.topk, (str(path), B, 32), **ROUNDS)
    assert tuple(res.indices.shape) == (256, 32)


# --------------------------------------------------------------------------------------- pipeline
@pytest.mark.benchmark(group="pipeline")
def test_daunce_fit_and_scores(benchmark, tmp_path):
    """Daunce fit (K = 64 models, 3 epochs) + covariance scores on a synthetic 3-class task
    (512 train / 64 test rows, 16 features, MLP 16-32-32-3)."""
    from daunce_fast.demos.tasks import mlp

    g = torch.Generator().manual_seed(0)
    x = torch.randn(576, 16, generator=g)
    y = (x[:, :3] + 0.5 * torch.randn(576, 3, generator=g)).argmax(1)
    train = torch.utils.data.TensorDataset(x[:512], y[:512])
    test = torch.utils.data.TensorDataset(x[512:], y[512:])
    model = mlp(16, 3, hidden=32, depth=2, seed=0)
    runs = iter(range(100))

    def fit_and_score():
        d = daunce_fast.Daunce(model, workdir=tmp_path / f"run{next(runs)}", num_models=64, epochs=3, seed=0)
        d.fit(train, record={"test": test})
        return np.asarray(d.scores("train", "test", method="covariance"))

    s = benchmark.pedantic(fit_and_score, rounds=3, iterations=1, warmup_rounds=1)
    assert s.shape == (512, 64) and np.isfinite(s).all()
