"""Run in a fresh process: peak extra resident memory of one loss-head forward+backward.

usage: python _memory_probe.py {ours|explicit} R T d V
Prints one line: PEAK_BYTES <n>. Inputs are allocated and both code paths warmed up on a tiny
problem first, then the kernel's high-water mark is reset (/proc/self/clear_refs) and
VmHWM - VmRSS is read after the call.
"""

import sys

import torch
import torch.nn.functional as F


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def explicit(h, W, y):
    z = h @ W.T
    ce = F.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
    return ce.mean(1)


def ours(h, W, y):
    from daunce_fast.losses import per_example_loss

    return per_example_loss(h, W, y, backend="torch")


def run(fn, h, W, y):
    hh = h.detach().requires_grad_(True)
    fn(hh, W, y).sum().backward()
    return hh.grad


def main():
    mode, R, T, d, V = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(1)  # the two probes run side by side; threads do not change the peak
    fn = {"ours": ours, "explicit": explicit}[mode]
    torch.manual_seed(0)
    run(fn, torch.randn(2, 3, d), torch.randn(V // 100 + 2, d), torch.randint(0, V // 100 + 2, (2, 3)))  # warm-up
    if mode == "ours":
        # and the tiled path too (the warm-up above fits one tile): the first call of a torch custom op
        # imports torch._dynamo (torch.library wraps every kernel in torch._disable_dynamo), a one-time
        # cost of ~150 MiB of code and data that is no part of the loss head's working memory.
        from daunce_fast.losses import per_example_loss

        hw = torch.randn(2, 3, d, requires_grad=True)
        per_example_loss(hw, torch.randn(8, d), torch.randint(0, 8, (2, 3)), chunk_size=(2, 4)).sum().backward()
    h = torch.randn(R, T, d)
    W = torch.randn(V, d) / d**0.5
    y = torch.randint(0, V, (R, T))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = status_kib("VmRSS")
    g = run(fn, h, W, y)
    peak = status_kib("VmHWM") - start
    assert torch.isfinite(g).all()
    print(f"PEAK_BYTES {peak * 1024}")


if __name__ == "__main__":
    main()
