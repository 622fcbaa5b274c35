"""An 8 GB logical (sparse) file: one tile written, one tile read back, memory stays small."""

import os

import numpy as np
import pytest

import daunce_fast.storage as st

K, N = 16, 1 << 27  # 16 x 134M float32 = 8 GiB
GIB = 1 << 30


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _sparse_supported(d) -> bool:
    probe = os.path.join(d, "sparse_probe")
    try:
        with open(probe, "wb") as f:
            f.truncate(GIB)
        return os.stat(probe).st_blocks * 512 < (1 << 20)
    except OSError:
        return False
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def test_sparse_8gb_file_tile_write_and_read(tmp_path, rng):
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to measure resident memory")
    if not _sparse_supported(tmp_path):
        pytest.skip(f"the filesystem of {tmp_path} does not support sparse files")
    path = tmp_path / "big.safetensors"
    j0, j1 = 98_765_432, 98_765_432 + 4096
    tile = rng.standard_normal((K, j1 - j0)).astype(np.float32)
    try:
        can_reset = _reset_peak()
        rss0 = _kib("VmRSS")
        with st.create(path, {"loss": ((K, N), "float32")}) as w:
            w["loss"][:, j0:j1] = tile
            w.mark_done(0)
        st_ = os.stat(path)
        assert st_.st_size >= 8 * GIB
        assert st_.st_blocks * 512 < 64 << 20, "the file should stay sparse: only the tile is on disk"
        with st.open(path) as r:
            x = r["loss"]
            got = np.array(x[:, j0:j1])
            zeros = np.array(x[:, 1000 : 1000 + 4096])
        np.testing.assert_array_equal(got, tile)
        assert not zeros.any()
        grew = (_kib("VmHWM") if can_reset else _kib("VmRSS")) - rss0
        assert grew * 1024 < 64 << 20, f"resident memory grew by {grew} KiB for a 256 KiB tile of an 8 GiB file"
    finally:
        for p in (path, str(path) + ".partial", str(path) + ".partial.journal"):
            if os.path.exists(p):
                os.remove(p)
