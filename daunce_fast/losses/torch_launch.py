"""torch backend of the output head (any device): logits exist one tile of (rows x vocabulary) at a time.

The production torch path; the float64 oracle the tests compare it with is
:mod:`daunce_fast.losses.reference`.

Every loss in this package is built from two per-row primitives over flattened rows
``h [N, d]``, ``W [V, d]``, optional bias ``b [V]`` and labels ``y [N]`` (``y < 0`` = ignored row):

  row_stats(h, W, b, y) -> (lse_o [N], zy [N])
      z = h @ W.T + b;  zy = z[n, y_n];  lse_o = logsumexp of z[n, v] over v != y_n
      (over all v for an ignored row).
  row_grad(h, W, b, y, lse_o, go, gy) -> (dh, dW, db)
      dz[n, v] = go_n * exp(z[n, v] - lse_o_n) for v != y_n,  dz[n, y_n] = gy_n;
      dh = dz @ W, dW = dz.T @ h, db = dz.sum(0): the vector-Jacobian product of row_stats
      for output gradients (go, gy), since d lse_o / dz_v = softmax over v != y.

Cross-entropy and margin are elementwise in (lse_o, zy): ce = softplus(lse_o - zy) (no
cancellation when z_y is huge), margin = zy - lse_o. Autograd of those elementwise maps
gives (go, gy), and the custom op ``daunce_fast::loss_head_stats`` (:mod:`.ops`) turns them into
dh/dW/db through ``row_grad``, recomputing logits tile by tile instead of saving them. The same
primitives give the DAUNCE direction u = W.T g at z0.

Tiles: ``rows x vocab <= budget`` elements (default 2**21, 8 MiB in fp32; tall tiles of up to
1024 rows, the vocabulary chunked), so peak extra memory is a few tiles whatever R*T*V is.
A problem whose [N, V] logits fit the budget takes the direct path instead (:func:`direct_rows`,
:func:`direct_ce`: plain autograd on the logits, the same calls as the explicit head), which is
what a classifier head with a tiny vocabulary gets.
"""

from __future__ import annotations

import math

import torch

DEFAULT_BUDGET = 1 << 21
_MAX_ROWS = 1024
_MIN_VOCAB = 256


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (tests, references); everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tile_shape(n: int, v: int, chunk_size=None) -> tuple[int, int]:
    """(rows, vocab) per tile. ``chunk_size``: None, an element budget (int), or (rows, vocab).

    With a budget, a problem that fits is one tile; otherwise tiles are tall (up to 1024 rows)
    and the vocabulary is chunked: a [rows, d] x [d, vocab] product with few rows reads all of
    W per call and runs several times slower than a tall one.
    """
    if isinstance(chunk_size, (tuple, list)):
        rc, vc = int(chunk_size[0]), int(chunk_size[1])
        if rc < 1 or vc < 1:
            raise ValueError(f"chunk_size=(rows, vocab) must be positive, got {chunk_size!r}")
        return max(1, min(rc, n)), min(vc, v)
    budget = DEFAULT_BUDGET if chunk_size is None else int(chunk_size)
    if budget < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size!r}")
    n = max(n, 1)
    if n * v <= budget:
        return n, v
    vc = min(v, max(_MIN_VOCAB, budget // min(n, _MAX_ROWS)))
    rc = min(n, max(1, budget // vc))
    return rc, vc


def _weight_in(W: torch.Tensor, b, cd):
    # Half-precision weights are upcast once (parameter-sized, never logits-sized) so every
    # tile product accumulates in float32 on CPU as well.
    Wc = W if W.dtype == cd else W.to(cd)
    bc = None if b is None else (b if b.dtype == cd else b.to(cd))
    return Wc, bc


def _logits(hc, Wv, bv):
    z = hc @ Wv.T
    if bv is not None:
        z += bv
    return z


def _lse_(z):
    """logsumexp over dim 1, destroying z (in place: no temporaries; torch.logsumexp makes
    several and is ~5x slower on CPU). Rows of -inf give -inf."""
    mx = z.amax(1)
    shift = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    s = z.sub_(shift[:, None]).exp_().sum(1)
    return s.log_().add_(shift)


def _label_column(yc, v0, v1):
    """(column index clamped into the tile, whether the label lies in the tile) per row."""
    inside = (yc >= v0) & (yc < v1)
    return (yc - v0).clamp(0, v1 - v0 - 1).unsqueeze(1), inside.unsqueeze(1)


def row_stats(h, W, b, y, chunk_size=None):
    """(lse_o, zy), both [N] in the compute dtype; see the module docstring."""
    n, v = h.shape[0], W.shape[0]
    cd = compute_dtype(h.dtype)
    Wc, bc = _weight_in(W, b, cd)
    lse_o = torch.empty(n, dtype=cd, device=h.device)
    zy = torch.zeros(n, dtype=cd, device=h.device)
    rc, vc = tile_shape(n, v, chunk_size)
    neg_inf = torch.tensor(-math.inf, dtype=cd, device=h.device)
    for r0 in range(0, n, rc):
        r1 = min(n, r0 + rc)
        hc = h[r0:r1].to(cd)
        yc = y[r0:r1]
        acc = zyc = None
        for v0 in range(0, v, vc):
            v1 = min(v, v0 + vc)
            z = _logits(hc, Wc[v0:v1], None if bc is None else bc[v0:v1])
            # pick z_y and mask it out of the tile without a host sync (rows whose label lies
            # elsewhere write their own value back)
            col, inside = _label_column(yc, v0, v1)
            zc = z.gather(1, col)
            part_y = torch.where(inside, zc, torch.zeros_like(zc))
            zyc = part_y if zyc is None else zyc + part_y
            z.scatter_(1, col, torch.where(inside, neg_inf, zc))
            part = _lse_(z)
            acc = part if acc is None else torch.logaddexp(acc, part)
        lse_o[r0:r1] = acc
        zy[r0:r1] = zyc.squeeze(1)
    return lse_o, zy


def row_grad(h, W, b, y, lse_o, go, gy, need_dh=True, need_dw=False, need_db=False, chunk_size=None):
    """Vector-Jacobian product of :func:`row_stats`: (dh [N, d] or None, dW [V, d] or None, db [V] or None).

    dh, dW, db are returned in the compute dtype (float32 / float64); callers cast.
    """
    n, v = h.shape[0], W.shape[0]
    cd = compute_dtype(h.dtype)
    Wc, bc = _weight_in(W, b, cd)
    go = go.to(cd)
    gy = gy.to(cd)
    lse_o = lse_o.to(cd)
    dh = torch.zeros(n, h.shape[1], dtype=cd, device=h.device) if need_dh else None
    dW = torch.zeros(v, W.shape[1], dtype=cd, device=h.device) if need_dw else None
    db = torch.zeros(v, dtype=cd, device=h.device) if need_db else None
    rc, vc = tile_shape(n, v, chunk_size)
    for r0 in range(0, n, rc):
        r1 = min(n, r0 + rc)
        hc = h[r0:r1].to(cd)
        yc = y[r0:r1]
        go_c = go[r0:r1, None]
        gy_c = gy[r0:r1, None]
        lo_c = lse_o[r0:r1, None]
        for v0 in range(0, v, vc):
            v1 = min(v, v0 + vc)
            z = _logits(hc, Wc[v0:v1], None if bc is None else bc[v0:v1])
            # dz in place of z: exp(z - lse_o) * go (<= |go| off the label column), dz[y] = gy
            z.sub_(lo_c).exp_().mul_(go_c)
            col, inside = _label_column(yc, v0, v1)
            z.scatter_(1, col, torch.where(inside, gy_c, z.gather(1, col)))
            if need_dh:
                dh[r0:r1].addmm_(z, Wc[v0:v1])
            if need_dw:
                dW[v0:v1].addmm_(z.T, hc)
            if need_db:
                db[v0:v1] += z.sum(0)
    return dh, dW, db


def softplus(x):
    """log(1 + exp(x)) without overflow and without a threshold (exact in float64 too)."""
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


def fits_one_tile(n: int, v: int, chunk_size=None) -> bool:
    """Whether the direct path (plain autograd on [N, V] logits) is used: the problem fits the
    element budget and no explicit (rows, vocab) tiling was asked for."""
    if isinstance(chunk_size, (tuple, list)):
        return False
    budget = DEFAULT_BUDGET if chunk_size is None else int(chunk_size)
    return n * v <= budget


def _direct_logits(h, W, b):
    cd = compute_dtype(h.dtype)
    z = h.to(cd) @ W.to(cd).T
    return z if b is None else z + b.to(cd)


def direct_rows(h, W, b, y):
    """(lse_o, zy) by plain autograd on the [N, V] logits: for small problems (tiny vocabularies,
    e.g. classifiers), where a handful of torch calls beats the tile machinery."""
    z = _direct_logits(h, W, b)
    hit = torch.arange(z.shape[1], device=z.device)[None, :] == y[:, None]  # y = -1 never hits
    zy = torch.where(hit, z, torch.zeros((), dtype=z.dtype, device=z.device)).sum(1)
    return torch.logsumexp(z.masked_fill(hit, -math.inf), 1), zy


def direct_ce(h, W, b, y):
    """Per-row cross-entropy (0 on ignored rows, y = -1) by F.cross_entropy on [N, V] logits."""
    return torch.nn.functional.cross_entropy(_direct_logits(h, W, b), y, ignore_index=-1, reduction="none")
