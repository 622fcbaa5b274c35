import json
import subprocess
import sys


def test_info_prints_build_and_backends():
    res = subprocess.run([sys.executable, "-m", "daunce_fast", "info"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for needle in ("daunce_fast", "extension:", "backends:", "torch", "numpy", "device:"):
        assert needle in out


def test_info_json():
    res = subprocess.run([sys.executable, "-m", "daunce_fast", "info", "--json"], capture_output=True, text=True, timeout=120)
    d = json.loads(res.stdout)
    assert d["backends"]["torch"] == "live"
    assert set(d) >= {"daunce_fast", "extension", "backends", "torch", "triton", "numpy", "device"}


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "daunce_fast", *args], capture_output=True, text=True, timeout=timeout)


def test_score_npy_topk_and_full_to_file(tmp_path):
    import numpy as np

    from daunce_fast import storage

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((16, 50)).astype(np.float32), rng.standard_normal((16, 7)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    res = run_cli("score", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--topk", "3",
                  "--out", str(tmp_path / "top.safetensors"))
    assert res.returncode == 0, res.stderr
    ac, bc = a - a.mean(0), b - b.mean(0)
    cov = ac.T.astype(np.float64) @ bc / 15
    with storage.open(tmp_path / "top.safetensors") as r:
        idx = np.array(r["indices"])
        assert np.array_equal(idx, np.argsort(-cov, axis=0)[:3].T)
    res = run_cli("score", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--out", str(tmp_path / "s.safetensors"))
    assert res.returncode == 0, res.stderr
    with storage.open(tmp_path / "s.safetensors") as r:
        np.testing.assert_allclose(np.array(r["scores"]), cov, rtol=1e-4, atol=1e-6)
    res = run_cli("inspect", str(tmp_path / "s.safetensors"))
    assert res.returncode == 0 and "scores" in res.stdout and "complete" in res.stdout


def test_inspect_partial_and_missing(tmp_path):
    from daunce_fast import storage

    w = storage.create(tmp_path / "x.safetensors", {"t": ((3, 4), "float32")})
    w.mark_done("tile7")
    w.flush()
    res = run_cli("inspect", str(tmp_path / "x.safetensors"))
    assert res.returncode == 0, res.stderr
    assert "INCOMPLETE" in res.stdout and "tile7" in res.stdout
    w.abort()
    res = run_cli("inspect", str(tmp_path / "nope.safetensors"))
    assert res.returncode == 2 and "error" in res.stderr


def test_demo_runs_and_writes_a_figure(tmp_path):
    res = run_cli("demo", "--models", "16", "--num-test", "2", "-k", "3", "--quiet", "--out", str(tmp_path / "d.png"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "most helpful" in res.stdout and "most harmful" in res.stdout
    png = (tmp_path / "d.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
