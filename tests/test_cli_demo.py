"""`daunce-fast demo` (digits): the smallest run the options allow writes its figure where asked and
leaves nothing in the temporary directory, on success and on error."""

import os
import subprocess
import sys

import pytest

from daunce_fast.cli import main

TINY = ["--models", "2", "--num-test", "1", "-k", "1", "--quiet"]


def test_demo_end_to_end_writes_the_figure_and_leaves_no_temp_files(tmp_path):
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir(), cwd.mkdir()
    env = dict(
        os.environ,
        TMPDIR=str(tmp),
        OMP_NUM_THREADS="1",
        # torch and matplotlib keep their own caches in the temp dir unless told otherwise: not ours
        TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
        MPLCONFIGDIR=str(tmp_path / "mpl"),
    )
    res = subprocess.run(
        [sys.executable, "-m", "daunce_fast", "demo", *TINY],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "most helpful" in res.stdout and "most harmful" in res.stdout
    png = cwd / "daunce_demo.png"  # the default: the current directory (the README's main job)
    assert f"figure: {png.resolve()}" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp) == []
    assert os.listdir(cwd) == ["daunce_demo.png"]


def test_demo_error_midway_still_removes_its_temp_dir(tmp_path, monkeypatch, capsys):
    import tempfile

    import daunce_fast.demos.digits as demo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(demo, "figure", no_space)
    assert main(["demo", *TINY, "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert [p for p in os.listdir(tmp_path) if not p.startswith("torchinductor")] == []


def test_demo_keeps_the_workdir_it_was_given(tmp_path, capsys):
    wd = tmp_path / "runs" / "digits"
    assert main(["demo", *TINY, "--workdir", str(wd), "--out", str(tmp_path / "f.png")]) == 0
    assert f"workdir {wd}" in capsys.readouterr().out
    assert (wd / "state.json").exists() or any(wd.iterdir())


@pytest.mark.parametrize(
    "argv,needle", [(["--num-test", "361"], "num_test must be in [1, 360]"), (["-k", "1438"], "k must be in [1, 1437]")]
)
def test_demo_counts_beyond_the_data_are_one_line(tmp_path, capsys, argv, needle):
    assert main(["demo", "--models", "2", "--quiet", "--out", str(tmp_path / "f.png"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


def test_demo_calibration_probe_lives_in_the_removed_temp_dir(tmp_path, monkeypatch, capsys):
    import tempfile

    import daunce_fast.demos.digits as demo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def fake_calibrate(make, task, budget_s, k_probe, k_max, probe_dir):
        seen.append(probe_dir)
        assert os.path.isdir(probe_dir) and probe_dir.startswith(str(tmp_path))
        return 2  # skip the real probe (128 models): only where it runs matters here

    monkeypatch.setattr(demo, "_calibrate", fake_calibrate)
    assert (
        main(["demo", "--budget", "1", "--num-test", "1", "-k", "1", "--quiet", "--out", str(tmp_path / "f.png")]) == 0
    )
    assert len(seen) == 1 and not os.path.exists(seen[0])
    assert [p for p in os.listdir(tmp_path) if not p.startswith("torchinductor")] == ["f.png"]
