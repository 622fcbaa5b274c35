"""Issue 13 (trust): a resume only on the same inputs, one decoding of stored dtypes through every
entry point, overflowing columns, unusable outputs and tiles refused, launch grids over any M."""

import os

import numpy as np
import pytest
import torch

import daunce_fast
from daunce_fast import storage
from daunce_fast._backends import available_backends
from daunce_fast.correlation._resume import ResumeMismatchError
from daunce_fast.correlation.grids import launch_grids
from daunce_fast.correlation.reference import correlate_reference
from daunce_fast.storage.dtypes import decode_float32

from ._helpers import live_cpu_backends

BACKENDS = live_cpu_backends()


def _interrupt_after(monkeypatch, tiles):
    from daunce_fast.correlation import api

    real = api._train_tiles
    monkeypatch.setattr(api, "_MARK_EVERY", 1)  # every tile durable

    def interrupted(*args, **kw):
        for n, item in enumerate(real(*args, **kw)):
            if n == tiles:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(api, "_train_tiles", interrupted)


# ------------------------------------------------------------------------- 1. resume fingerprint
def test_resume_with_another_train_matrix_of_the_same_shape_refuses(tmp_path, rng, monkeypatch):
    a = rng.standard_normal((6, 400)).astype(np.float32)
    a2 = rng.standard_normal((6, 400)).astype(np.float32)
    b = rng.standard_normal((6, 9)).astype(np.float32)
    path = tmp_path / "s.safetensors"
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        daunce_fast.correlate(a, b, out=path, tile=32)
    monkeypatch.undo()
    with pytest.raises(ResumeMismatchError, match="the train matrix differs.*resume=False") as err:
        daunce_fast.correlate(a2, b, out=path, tile=32)
    assert "test matrix" not in str(err.value)
    assert isinstance(err.value, storage.LayoutMismatchError) and isinstance(err.value, ValueError)
    s = daunce_fast.correlate(a2, b, out=path, tile=32, resume=False)  # the documented fresh start
    np.testing.assert_allclose(np.asarray(s), correlate_reference(a2, b).numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "change, what", [("method", "the method"), ("out_dtype", "the output dtype"), ("test", "the test matrix")]
)
def test_resume_names_each_other_difference(tmp_path, rng, monkeypatch, change, what):
    a, b = rng.standard_normal((5, 300)), rng.standard_normal((5, 7))
    path = tmp_path / "s.safetensors"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        daunce_fast.correlate(a, b, out=path, tile=32)
    monkeypatch.undo()
    kw = {"method": "covariance"} if change == "method" else {"out_dtype": "float64"} if change == "out_dtype" else {}
    with pytest.raises(ResumeMismatchError, match=what):
        daunce_fast.correlate(a, b * 2 if change == "test" else b, out=path, tile=32, **kw)


def test_same_inputs_resume_and_skip_written_tiles(tmp_path, rng, monkeypatch):
    a, b = rng.standard_normal((5, 300)).astype(np.float32), rng.standard_normal((5, 7)).astype(np.float32)
    path = tmp_path / "s.safetensors"
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        daunce_fast.correlate(a, b, out=path, tile=32)
    monkeypatch.undo()
    from daunce_fast.correlation import api

    seen = []
    real = api._train_tiles

    def counting(*args, **kw):
        for item in real(*args, **kw):
            seen.append(item[0])
            yield item

    monkeypatch.setattr(api, "_train_tiles", counting)
    # the same values through another entry point (torch) are the same inputs
    s = daunce_fast.correlate(torch.from_numpy(a), torch.from_numpy(b), out=path, tile=32)
    assert 0 not in seen and len(seen) == 10 - 3
    np.testing.assert_allclose(s.numpy(), correlate_reference(a, b).numpy(), atol=1e-6)


# ------------------------------------------------------------------------- 2. one decoding
FLOAT_CODES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@pytest.mark.parametrize("code", sorted(FLOAT_CODES))
def test_stored_float_dtypes_decode_through_every_entry_point(tmp_path, rng, code):
    tdt = FLOAT_CODES[code]
    a = torch.from_numpy(rng.standard_normal((8, 60)).astype(np.float32)).to(tdt)
    b = torch.from_numpy(rng.standard_normal((8, 5)).astype(np.float32)).to(tdt)
    path = tmp_path / "a.safetensors"
    with storage.create(path, {"a": ((8, 60), code)}) as w:
        w.torch("a").copy_(a)
    ref = correlate_reference(a.float(), b.float()).numpy()
    bits = (
        b.float().half().numpy()
        if code == "F16"
        else b.view(torch.uint8 if b.element_size() == 1 else torch.int16).numpy()
    )
    assert np.array_equal(decode_float32(bits, code), b.float().numpy())
    with storage.open(path) as r:
        entries = [("path", path), ("reader", r), ("tensor", a)]
        for name, x in entries:
            for op in ("correlate", "topk"):
                if op == "correlate":
                    s = daunce_fast.correlate(x, b.float().numpy())
                    np.testing.assert_allclose(np.asarray(torch.as_tensor(s).float()), ref, atol=1e-5, err_msg=name)
                else:
                    _, i = daunce_fast.topk(x, b.float().numpy(), 3)
                    assert np.array_equal(np.asarray(i), np.argsort(-ref, 0, kind="stable")[:3].T), name
        view = r["a"]
        if getattr(view, "dtype_code", None) == code:  # the view says what it holds: decoded like the path
            np.testing.assert_allclose(daunce_fast.correlate(view, b.float().numpy()), ref, atol=1e-5)
        elif view.dtype in (np.uint8, np.uint16):  # raw bits of unknown dtype: refused, never correlated
            with pytest.raises(TypeError, match="decode it first.*or pass the path"):
                daunce_fast.correlate(view, b.float().numpy())
            with pytest.raises(TypeError, match="decode it first"):
                daunce_fast.distributed.topk(view, b.float().numpy(), 2)
        else:  # a numpy float view (F16): read as its values
            np.testing.assert_allclose(daunce_fast.correlate(view, b.float().numpy()), ref, atol=1e-5)
        # the distributed reader decodes the same way
        res = daunce_fast.distributed.topk(path, b.float().numpy(), 3)
        assert np.array_equal(res.indices, np.argsort(-ref, 0, kind="stable")[:3].T)
        slab = daunce_fast.distributed.correlate(r, b.float().numpy())
        np.testing.assert_allclose(slab.scores, ref, atol=1e-5)


def test_raw_uint_arrays_of_unknown_dtype_are_refused(rng):
    b = rng.standard_normal((4, 3))
    for arr in (rng.integers(0, 60000, (4, 10)).astype(np.uint16), rng.integers(0, 255, (4, 10)).astype(np.uint8)):
        with pytest.raises(TypeError, match="integer matrix"):
            daunce_fast.correlate(arr, b)
        with pytest.raises(TypeError, match="integer"):
            daunce_fast.topk(b, torch.from_numpy(arr), 1)


# ------------------------------------------------------------------------- 3. overflowing columns
@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_columns_whose_stats_overflow_raise(rng, backend):
    a = rng.standard_normal((4, 20))
    a[:, 7] = [1.5e308, 1.7e308, -1.6e308, 1.0e308]  # finite; the mean's sum and m2 overflow
    b = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="train column 7 .*overflows float64"):
        daunce_fast.correlate(a, b, backend=backend)
    with pytest.raises(ValueError, match="test column 7 .*overflows"):
        daunce_fast.topk(b, a, 2, backend=backend)
    with pytest.raises(ValueError, match="column 7 .*overflows"):
        daunce_fast.correlate(a, b, backend=backend, nan_policy="propagate", method="covariance")


# ------------------------------------------------------------------------- 4. unusable outputs
def test_read_only_and_unusable_outputs_are_refused_before_any_work(tmp_path, rng):
    a, b = rng.standard_normal((4, 10)), rng.standard_normal((4, 3))
    ro = np.zeros((10, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        daunce_fast.correlate(a, b, out=ro)
    assert not ro.any()
    mm_path = tmp_path / "m.bin"
    np.zeros((10, 3), np.float32).tofile(mm_path)
    with pytest.raises(ValueError, match="read-only"):
        daunce_fast.correlate(a, b, out=np.memmap(mm_path, np.float32, "r", shape=(10, 3)))
    with storage.create(tmp_path / "o.safetensors", {"s": ((10, 3), "float32")}) as w:
        w["s"][:] = 0
    with storage.open(tmp_path / "o.safetensors") as r:
        with pytest.raises(ValueError, match="read-only"):
            daunce_fast.correlate(a, b, out=r["s"])
    with pytest.raises(TypeError, match="floating-point"):
        daunce_fast.correlate(a, b, out=np.zeros((10, 3), np.int32))
    with pytest.raises(ValueError, match="shape"):
        daunce_fast.correlate(a, b, out=np.zeros((3, 10), np.float32))
    with pytest.raises(ValueError, match="negative strides"):
        daunce_fast.correlate(a, b, out=np.zeros((10, 3), np.float32)[::-1])
    with pytest.raises(ValueError, match="overlapping"):
        daunce_fast.correlate(a, b, out=torch.zeros(1, 3).expand(10, 3))
    with pytest.raises(ValueError, match="requires grad"):
        daunce_fast.correlate(a, b, out=torch.zeros(10, 3, requires_grad=True))
    strided = np.zeros((10, 6), np.float32)[:, ::2]  # writable, forward strides: filled
    daunce_fast.correlate(a, b, out=strided)
    np.testing.assert_allclose(strided, correlate_reference(a, b).numpy(), atol=1e-6)


# ------------------------------------------------------------------------- 5. tile
@pytest.mark.parametrize("backend", [b for b in ("torch", "cpu", "triton") if b in available_backends()])
@pytest.mark.parametrize("tile", [0, -3, 2.5, "8", True])
def test_bad_tile_raises_on_every_backend(rng, backend, tile):
    a = torch.from_numpy(rng.standard_normal((4, 10)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="tile must be"):
        daunce_fast.correlate(a, b, backend=backend, tile=tile)
    with pytest.raises(ValueError, match="tile must be"):
        daunce_fast.topk(a, b, 2, backend=backend, tile=tile)
    with pytest.raises(ValueError, match="tile must be"):
        daunce_fast.distributed.topk(a, b, 2, backend=backend, tile=tile)


# ------------------------------------------------------------------------- 6. grid limits
@pytest.mark.parametrize("block", [64, 128])
def test_launch_grids_cover_any_M_within_the_grid_y_limit(block):
    for M in (0, 1, block, 65535 * block, 65535 * block + 1, 3 * 65535 * block + 17, 10**8):
        g = launch_grids(M, block)
        assert all(1 <= gy <= 65535 for _, _, gy in g)
        assert [c0 for c0, _, _ in g] == ([0] + [c1 for _, c1, _ in g[:-1]] if M else [])
        assert (g[-1][1] if g else 0) == M
        assert all(gy == -(-(c1 - c0) // block) for c0, c1, gy in g)
    assert len(launch_grids(65535 * block + 1, block)) == 2
    assert launch_grids(10, 4, limit=2) == [(0, 8, 2), (8, 10, 1)]


def test_triton_and_cuda_launchers_use_the_sliced_grids():
    # the Python launcher slices through launch_grids; the CUDA launcher loops the same way in C++
    from daunce_fast.correlation import triton_launch

    assert triton_launch.launch_grids is launch_grids
    with open(os.path.join(os.path.dirname(daunce_fast.__file__), "..", "csrc", "cuda", "corr_tile.cu")) as f:
        src = f.read()
    assert "kGridYLimit = 65535" in src and "cudaErrorInvalidConfiguration);\n  auto s" in src


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; run bench/gpu_check.sh on a GPU")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_test_set_wider_than_the_grid_y_limit_on_gpu(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} backend not live")
    M = 65535 * 128 + 300  # above both limits (CUDA 65,535 x 64, Triton 65,535 x 128)
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(4, 40, device="cuda", generator=g)
    b = torch.randn(4, M, device="cuda", generator=g)
    s = daunce_fast.correlate(a, b, backend=backend, precision="fp32")
    ref = correlate_reference(a.double(), b.double())
    assert float((s.double() - ref).abs().max()) < 1e-4
    v, _ = daunce_fast.topk(a, b, 2, backend=backend, precision="fp32")
    ref_v = torch.topk(ref.T, 2, dim=1).values
    assert float((v.double() - ref_v).abs().max()) < 1e-4


def test_distributed_store_resume_with_another_train_matrix_refuses(tmp_path, rng):
    a, a2, b = rng.standard_normal((5, 50)), rng.standard_normal((5, 50)), rng.standard_normal((5, 4))
    idx = tmp_path / "scores.index.json"
    daunce_fast.distributed.correlate(a, b, out=idx)
    with pytest.raises(ResumeMismatchError, match="the train matrix differs.*resume=False"):
        daunce_fast.distributed.correlate(a2, b, out=idx)
    s = daunce_fast.distributed.correlate(a2, b, out=idx, resume=False)
    np.testing.assert_allclose(s[:, :], correlate_reference(a2, b).numpy(), atol=1e-6)
