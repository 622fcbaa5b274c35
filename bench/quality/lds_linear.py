"""What DAUNCE's covariance estimates in the linear limit, and its LDS, with exact linear algebra.

In the linear (small-perturbation, fully trained) limit a DAUNCE model moves by
δ_k = (H + λI)⁻¹ ε_k, where H is the Gauss-Newton matrix of the training loss at θ0 and ε_k the
random first-order drive of model k. Then cov_k(L_i, L_j) = g_iᵀ (H+λ)⁻¹ Σ (H+λ)⁻¹ g_j with
Σ = Cov(ε). Which Σ the perturbation has decides what the scores estimate:

- "xi" (the paper's weights c_ik on the observed gradients): Σ ∝ F, the empirical Fisher
  Σ_l g_l g_lᵀ, so the scores are the sandwich g_iᵀ(H+λ)⁻¹F(H+λ)⁻¹g_j;
- "hessian" (directions u_l ~ N(0, diag p_l - p_l p_lᵀ), the cross-entropy's Hessian in the
  logits): Σ ∝ H itself, so the scores are g_iᵀ(H+λ)⁻¹H(H+λ)⁻¹g_j ≈ the influence function
  g_iᵀ(H+λ)⁻¹g_j for λ small.

This prints the LDS of both limits (and of the plain GGN influence function) for a damping grid,
i.e. the best any K can reach with each perturbation, on bench/quality/lds_data.py's ground truth.

    PYTHONPATH=$PWD python bench/quality/lds_linear.py digits [THREADS] [K,K,...]

With K values it also runs the Monte Carlo estimator itself in the linear limit (exact solves,
K models, ratio 0.5 subsets, at the lambda of the best "hessian" limit): the LDS that sampling noise
alone leaves at each K.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parents[1]):  # this folder (lds_data) and the repo root
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from lds_data import load_or_build, load_task, model_from_state  # noqa: E402

from daunce_fast.daunce.heads import hessian_direction  # noqa: E402
from daunce_fast.evaluation.metrics import lds  # noqa: E402


def jacobians(model, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """[N, C, P] Jacobians of the logits w.r.t. every parameter (named_parameters order)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return torch.func.functional_call(model, p, xi[None])[0]

    jac = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0))
    out = []
    for s in range(0, len(x), chunk):
        j = jac(params, x[s : s + chunk])
        out.append(torch.cat([j[k].reshape(j[k].shape[0], j[k].shape[1], -1) for k in params], dim=2))
    return torch.cat(out)


def monte_carlo(gt, gtr, gte, jtr_flat, ptr, chol, K: int, kind: str, seed: int = 0) -> float:
    """LDS of cov_k(g_iᵀδ_k, g_jᵀδ_k) with δ_k = (H+λ)⁻¹ε_k and ε_k drawn as ``kind`` perturbs."""
    gen = torch.Generator().manual_seed(seed)
    n, c = ptr.shape
    member = torch.rand(K, n, generator=gen).argsort(1) < n // 2
    if kind == "xi":
        w = (2 * torch.rand(K, n, generator=gen) - 1) * member  # [K, N] weights on g_l
        eps = w.double() @ gtr
    else:
        nrm = torch.randn(K, n, c, generator=gen)
        sq = ptr.sqrt().expand(K, n, c).reshape(K * n, c)
        u = hessian_direction(sq, nrm, torch.ones(K)).view(K, n, c) * member[..., None]  # the library's draw
        eps = (u.reshape(K, -1) @ jtr_flat).double()
    delta = torch.cholesky_solve(eps.T, chol)  # [P, K]
    ltr, lte = gtr @ delta, gte @ delta
    ltr, lte = ltr - ltr.mean(1, keepdim=True), lte - lte.mean(1, keepdim=True)
    return lds(ltr @ lte.T / K, gt["subsets"], gt["targets"])[1]


def main(ds: str, threads: int = 2, ks: tuple = ()) -> None:
    torch.set_num_threads(threads)
    gt = load_or_build(ds)
    task = load_task(gt)
    model = model_from_state(gt)
    t0 = time.perf_counter()
    with torch.no_grad():
        ptr = torch.softmax(model(task.x_train), -1)
        pte = torch.softmax(model(task.x_test), -1)
    jtr, jte = jacobians(model, task.x_train), jacobians(model, task.x_test)
    n, c, _ = jtr.shape
    rtr = ptr - torch.nn.functional.one_hot(task.y_train, c).float()
    rte = pte - torch.nn.functional.one_hot(task.y_test, c).float()
    gtr = torch.einsum("ncp,nc->np", jtr, rtr).double()  # per-example CE gradients
    gte = torch.einsum("ncp,nc->np", jte, rte).double()
    # GGN of the mean CE: (1/N) sum_n J_nᵀ (diag p - p pᵀ) J_n = (1/N) MᵀM with M_n = A_n^½ J_n
    a = torch.diag_embed(ptr) - ptr[:, :, None] * ptr[:, None, :]
    ev, evec = torch.linalg.eigh(a.double())
    half = (evec * ev.clamp_min(0).sqrt()[:, None, :]) @ evec.transpose(1, 2)
    m = torch.einsum("nij,njp->nip", half.float(), jtr).reshape(n * c, -1)
    h = (m.T @ m).double() / n
    fis = gtr.T @ gtr / n
    print(
        f"{ds}: P={h.shape[0]}, setup {time.perf_counter() - t0:.1f} s; tr(H)={h.trace():.3g}, tr(F)={fis.trace():.3g}",
        flush=True,
    )
    del m, jte
    jtr_flat = jtr.reshape(n * c, -1)
    eye = torch.eye(h.shape[0], dtype=h.dtype)

    def score(s):
        return lds(s, gt["subsets"], gt["targets"])[1]

    best = (-2.0, None)
    for lam in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1):
        t1 = time.perf_counter()
        chol = torch.linalg.cholesky(h + lam * eye)
        xtr = torch.cholesky_solve(gtr.T, chol)  # (H+λ)⁻¹ g_train  [P, N]
        xte = torch.cholesky_solve(gte.T, chol)
        s_if = gtr @ xte
        s_xi = (xtr.T @ gtr.T) @ (gtr @ xte) / n  # g_iᵀ(H+λ)⁻¹ F (H+λ)⁻¹ g_j
        s_smp = xtr.T @ (h @ xte)  # g_iᵀ(H+λ)⁻¹ H (H+λ)⁻¹ g_j
        v_smp = score(s_smp)
        print(
            f"  lambda {lam:g}: IF(GGN) {score(s_if):.4f}  xi-limit {score(s_xi):.4f}  "
            f"hessian-limit {v_smp:.4f}  ({time.perf_counter() - t1:.1f} s)",
            flush=True,
        )
        best = max(best, (v_smp, lam), key=lambda t: t[0])
    if ks:
        lam = best[1]
        chol = torch.linalg.cholesky(h + lam * eye)
        for k in ks:
            print(
                f"    Monte Carlo at lambda {lam:g}, K={k}: xi {monte_carlo(gt, gtr, gte, jtr_flat, ptr, chol, k, 'xi'):.4f}"
                f"  hessian {monte_carlo(gt, gtr, gte, jtr_flat, ptr, chol, k, 'hessian'):.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else 2,
        tuple(int(k) for k in sys.argv[3].split(",")) if len(sys.argv) > 3 else (),
    )
