"""Benchmark of daunce_fast.storage (streaming safetensors).

1. Writing a [K, N] float32 matrix (default 2 GB) column tile by column tile through
   daunce_fast.storage.create vs numpy.save of the same matrix from memory. Each write starts from
   a deleted file; "+fsync" waits until the data is on disk, as our close() does unless
   durable=False. Ratios of medians and of minima (the disk is shared: medians are noisy).
2. Reading one column tile [K, tile] vs safetensors.numpy.load_file of the whole file, cold (page
   cache dropped for the file with posix_fadvise) and warm, for two file sizes (size and size/4):
   the tile read time should not depend on the file size. Tiles are read with reader.read (pread
   per row), through the memory map, and through the map opened with advice="random".

  python bench/ops/bench_storage.py [--size-gb 2] [--rows 100] [--tile-cols 65536] [--read-tile 4096]
                                [--repeats 3] [--dir /tmp]
Files are deleted at the end (also on error).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # bench/: the shared harness
sys.path[:0] = [BENCH, os.path.dirname(BENCH)]

from harness import peak_rss_delta, print_table, record  # noqa: E402

import daunce_fast.storage as st  # noqa: E402


def drop_cache(path: str) -> None:
    """Evict the (clean) pages of ``path`` from the page cache: the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rm(*paths):
    for p in paths:
        for q in (p, p + ".partial", p + ".partial.journal"):
            if os.path.exists(q):
                os.remove(q)


def write_ours(path, x, tile, mark_done, via, durable=True, preallocate=False):
    K, N = x.shape
    with st.create(path, {"loss": ((K, N), "float32")}, durable=durable, preallocate=preallocate) as w:
        # w["loss"][box] = tile goes through pwrite; a slice view ([...]) only has the memory map
        dst = w["loss"] if via != "map" else w["loss"][...]
        if via == "rows":  # row blocks of ~tile * K elements: each one contiguous in the file
            step = max(1, (tile * K) // N)
            for t, i0 in enumerate(range(0, K, step)):
                dst[i0 : i0 + step] = x[i0 : i0 + step]
                if mark_done:
                    w.mark_done(t)
            return
        for t, j0 in enumerate(range(0, N, tile)):
            dst[:, j0 : j0 + tile] = x[:, j0 : j0 + tile]
            if mark_done:
                w.mark_done(t)


def write_npsave(path, x, fsync):
    with open(path, "wb") as f:
        np.save(f, x)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def bench_write(d, x, tile, repeats):
    ours, npy = os.path.join(d, "w.safetensors"), os.path.join(d, "w.npy")
    variants = {
        "numpy.save (page cache)": (npy, lambda: write_npsave(npy, x, False)),
        "numpy.save + fsync": (npy, lambda: write_npsave(npy, x, True)),
        "ours: w[name][:, j0:j1] = tile (close fsyncs)": (ours, lambda: write_ours(ours, x, tile, False, "setitem")),
        "ours: same + mark_done each tile": (ours, lambda: write_ours(ours, x, tile, True, "setitem")),
        "ours: through the raw memory map": (ours, lambda: write_ours(ours, x, tile, False, "map")),
        "ours, durable=False (no fsync)": (ours, lambda: write_ours(ours, x, tile, True, "setitem", False)),
        "ours, durable=False, preallocate": (ours, lambda: write_ours(ours, x, tile, True, "setitem", False, True)),
        "ours, durable=False, row blocks": (ours, lambda: write_ours(ours, x, tile, True, "rows", False)),
    }
    times = {k: [] for k in variants}
    order = np.random.default_rng(1)
    for rep in range(repeats + 1):  # first round is a warm-up
        # A fresh order each round: on a shared disk, background writeback or discards left by one
        # variant slow whichever runs next; shuffling spreads that over all of them.
        names = list(variants)
        order.shuffle(names)
        for name in names:
            path, fn = variants[name]
            rm(ours, npy)
            os.sync()  # no writeback of an earlier run competes with this one
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            fsync_path(path)  # settle (untimed) before the next variant
            if rep:
                times[name].append(dt)
    rm(ours, npy)
    base = statistics.median(times["numpy.save + fsync"])
    base_pc = statistics.median(times["numpy.save (page cache)"])
    min_fs, min_pc = min(times["numpy.save + fsync"]), min(times["numpy.save (page cache)"])
    gb = x.nbytes / 1e9
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            {
                "case": "write",
                "variant": name,
                "GB": round(gb, 3),
                "median_s": med,
                "min_s": min(ts),
                "GB_per_s": gb / med,
                "vs_npsave_fsync": med / base,
                "vs_npsave": med / base_pc,
                "min_vs_npsave_fsync": min(ts) / min_fs,
                "min_vs_npsave": min(ts) / min_pc,
            }
        )
    return rows


def bench_read(d, x_full, size_bytes, read_tile, repeats, K):
    from safetensors.numpy import load_file

    rows = []
    for frac in (1.0, 0.25):
        N = int(size_bytes * frac) // (4 * K)
        path = os.path.join(d, f"r{frac}.safetensors")
        rm(path)
        src = x_full[:, :N]
        with st.create(path, {"loss": ((K, N), "float32")}) as w:  # written tile by tile
            for j0 in range(0, N, 1 << 16):
                w.write("loss", np.s_[:, j0 : j0 + (1 << 16)], src[:, j0 : j0 + (1 << 16)])
        size = os.path.getsize(path)
        rng = np.random.default_rng(0)
        starts = rng.integers(0, N - read_tile, size=repeats + 1)

        def tile_read(j0, via, path=path):
            with st.open(path, advice="random" if via == "map+random" else None) as r:  # open included
                if via.startswith("map"):
                    return np.array(r["loss"][:, j0 : j0 + read_tile])
                return r.read("loss", (slice(None), slice(j0, j0 + read_tile)))

        vias = ("pread", "map", "map+random")
        res = {f"tile {v} {c}": [] for v in vias for c in ("cold", "warm")}
        res["load_file cold"] = []
        mem = {}
        for rep, j0 in enumerate(starts):
            for via in vias:
                drop_cache(path)
                t0 = time.perf_counter()
                got, m = peak_rss_delta(lambda j0=j0, via=via: tile_read(int(j0), via))
                t1 = time.perf_counter()
                got2 = tile_read(int(j0), via)  # now cached
                t2 = time.perf_counter()
                assert np.array_equal(got, x_full[:, j0 : j0 + read_tile]) and np.array_equal(got, got2)
                mem[f"tile {via} cold"] = mem[f"tile {via} warm"] = m
                if rep:
                    res[f"tile {via} cold"].append(t1 - t0)
                    res[f"tile {via} warm"].append(t2 - t1)
        for rep in range(min(repeats, 2) + 1):
            drop_cache(path)
            t0 = time.perf_counter()
            full, mem["load_file cold"] = peak_rss_delta(lambda path=path: load_file(path)["loss"])
            dt = time.perf_counter() - t0
            assert full.shape == (K, N)
            del full
            if rep:
                res["load_file cold"].append(dt)
        base = statistics.median(res["load_file cold"])
        for name, ts in res.items():
            med = statistics.median(ts)
            rows.append(
                {
                    "case": "read",
                    "variant": name,
                    "GB": round(size / 1e9, 3),
                    "tile": f"[{K}, {read_tile}]" if "tile" in name else "whole",
                    "median_s": med,
                    "min_s": min(ts),
                    "vs_load_file": med / base,
                    "peak_rss_MB": mem[name] / 1e6,
                }
            )
        rm(path)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.0, help="matrix size in GB (10^9 bytes)")
    ap.add_argument("--rows", type=int, default=100, help="K: rows of the [K, N] float32 matrix")
    ap.add_argument("--tile-cols", type=int, default=65536, help="columns per written tile")
    ap.add_argument("--read-tile", type=int, default=4096, help="columns of the tile read back")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (after one warm-up round)")
    ap.add_argument("--dir", default=None, help="where to put the files (default: a temporary dir)")
    ap.add_argument("--skip-write", action="store_true")
    ap.add_argument("--skip-read", action="store_true")
    args = ap.parse_args(argv)

    K = args.rows
    size = int(args.size_gb * 1e9)
    N = size // (4 * K)
    d = tempfile.mkdtemp(prefix="bench_storage_", dir=args.dir)
    try:
        x = np.random.default_rng(0).standard_normal((K, N), dtype=np.float32)
        print("load average {:.2f} {:.2f} {:.2f} at the start".format(*os.getloadavg()))
        print(
            f"matrix [{K}, {N}] float32 = {x.nbytes / 1e9:.2f} GB; write tile [{K}, {args.tile_cols}] "
            f"({K * args.tile_cols * 4 / 1e6:.1f} MB), read tile [{K}, {args.read_tile}]; dir {d}"
        )
        rows = []
        if not args.skip_write:
            rows += bench_write(d, x, args.tile_cols, args.repeats)
            print_table(
                [r for r in rows if r["case"] == "write"],
                [
                    "variant",
                    "GB",
                    "median_s",
                    "min_s",
                    "GB_per_s",
                    "vs_npsave_fsync",
                    "vs_npsave",
                    "min_vs_npsave_fsync",
                    "min_vs_npsave",
                ],
            )
        if not args.skip_read:
            rr = bench_read(d, x, size, args.read_tile, args.repeats, K)
            rows += rr
            print_table(rr, ["variant", "GB", "tile", "median_s", "min_s", "vs_load_file", "peak_rss_MB"])
        load = "load average {:.2f} {:.2f} {:.2f} (2 cores, shared)".format(*os.getloadavg())
        print(load)
        for r in rows:
            r["loadavg"] = load
        print("results appended to", record("storage", rows))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
