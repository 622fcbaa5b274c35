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
