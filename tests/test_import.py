"""`import daunce_fast` must stay lean: no triton, no compiled extension, no CUDA call."""

import subprocess
import sys
import textwrap


def run_py(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_import_is_lean():
    out = run_py(
        """
        import sys
        import daunce_fast
        heavy = [m for m in ("triton", "daunce_fast._C", "torch", "torch.cuda") if m in sys.modules]
        print(",".join(heavy) or "none")
        """
    )
    assert out.strip() == "none", f"import daunce_fast pulled in: {out.strip()}"


def test_import_makes_no_cuda_call():
    # Hide every device and make torch's CUDA init fail loudly if anything touches it.
    out = run_py(
        """
        import torch
        calls = []
        torch.cuda._lazy_init = lambda: calls.append("init")
        real = torch.cuda.is_available
        torch.cuda.is_available = lambda: calls.append("is_available") or real()
        import daunce_fast
        daunce_fast.__version__
        print(len(calls))
        """
    )
    assert out.strip() == "0"


def test_lazy_attributes_resolve():
    import daunce_fast

    assert callable(daunce_fast.available_backends)
    assert "torch" in daunce_fast.available_backends()
    assert isinstance(daunce_fast.__version__, str)
    try:
        _ = daunce_fast.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")
