"""Backdoor detection on a small instruction-tuned Llama: DAUNCE vs black-box DAUNCE vs Grad-Dot vs random.

The corpus, model and θ0 recipe live in daunce_fast/demos/lm_backdoor.py (shared with the demo and the test).
For each θ0 checkpoint (``early``: the backdoor just fires; ``saturated``: target probability near
1) every method scores the training pairs for the triggered queries; the table gives recall@k
(k = number of poisoned pairs) and AUROC of poisoned-vs-clean, from the aggregated ranking (mean of
the queries' z-scored scores) and per query, the wall time, and for the clean control queries the
share of poisoned pairs among their top k (should stay near the poison rate).

    PYTHONPATH=$PWD python bench/quality/lm_backdoor.py               # defaults below
    PYTHONPATH=$PWD python bench/quality/lm_backdoor.py --daunce K=64 --daunce K=64,objective=blackbox
    PYTHONPATH=$PWD python bench/quality/lm_backdoor.py --gpu         # H200 throughput section only

A DAUNCE spec is comma-separated key=value pairs over daunce_fast.demos.lm_backdoor.lm_defaults() (K = num_models;
targets=mlp|all; method=covariance|pearson, default both from one fit). Results are appended as JSON lines to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_spec(spec: str) -> dict:
    from daunce_fast.demos.lm_backdoor import lm_defaults

    opts = lm_defaults()
    opts["num_models"] = 64
    method = None
    for kv in filter(None, spec.split(",")):
        k, v = kv.split("=", 1)
        if k == "K":
            k = "num_models"
        if k == "method":
            method = v
            continue
        if k == "targets":
            opts["target_modules"] = (
                None if v == "mlp" else ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            )
            continue
        if k == "warmup":
            opts["extra"] = {"warmup": float(v)}
            continue
        try:
            v = int(v)
        except ValueError:
            try:
                v = float(v)
            except ValueError:
                pass
        opts[k] = v
    return {"opts": opts, "method": method}


def theta0(args):
    """(train, triggered, clean, checkpoints) — θ0 trained once and cached in --cache."""
    import torch

    from daunce_fast.demos import lm_backdoor as L

    # --loss-on: the training corpus' labels (the θ0 and the copies train on them); the queries keep
    # the response as their target either way (the behaviour being explained)
    train = L.make_corpus(args.n_train, args.poison, seed=args.seed, loss_on=args.loss_on)
    trig = L.make_corpus(args.queries, all_poisoned=True, seed=args.seed + 1)
    clean = L.make_corpus(args.queries, seed=args.seed + 2)
    suffix = "" if args.loss_on == "response" else f"_{args.loss_on}"
    cache = Path(args.cache) / f"theta0_n{args.n_train}_p{args.poison}_s{args.seed}{suffix}.pt"
    if cache.exists():
        ck = torch.load(cache)
    else:
        th = L.train_theta0(L.build_model(seed=args.seed), train, trig, clean, seed=args.seed, saturate=args.saturate)
        ck = {
            "early": th.early,
            "saturated": th.saturated,
            "log": th.log,
            "early_step": th.early_step,
            "saturated_step": th.saturated_step,
            "seconds": th.seconds,
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ck, cache)
    return train, trig, clean, ck


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--poison", type=float, default=0.03)
    ap.add_argument("--queries", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--saturate", type=float, default=0.95)
    ap.add_argument("--checkpoints", default="early,saturated")
    ap.add_argument(
        "--loss-on", default="response", choices=["response", "sequence"], help="the training corpus' labels"
    )
    ap.add_argument("--daunce", action="append", help="DAUNCE spec (repeatable); default: K=64 and K=256")
    ap.add_argument("--baselines", default="random,graddot,graddot-mlp")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a shared CPU)")
    ap.add_argument("--cache", default="/tmp/lm_backdoor_cache")
    ap.add_argument("--out", default="bench/out/lm_backdoor_results.jsonl", help="raw rows, appended (not committed)")
    ap.add_argument("--gpu", action="store_true", help="run only the GPU throughput section (needs CUDA)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.gpu:
        from lm_backdoor_gpu import run_gpu

        return run_gpu()

    from lm_backdoor_methods import daunce_scores, graddot_scores, random_scores

    from daunce_fast.demos import lm_backdoor as L

    train, trig, clean, ck = theta0(args)
    n_p = int(train.poisoned.sum())
    print(
        f"corpus: {len(train)} pairs, {n_p} poisoned (k = {n_p}, random recall {n_p / len(train):.3f}); "
        f"{len(trig)} triggered + {len(clean)} clean queries; θ0 {ck['seconds']:.0f} s: early step "
        f"{ck['early_step']}, saturated step {ck['saturated_step']}"
    )
    specs = args.daunce or ["K=64", "K=256"]
    rows = []

    def report(ckpt, name, s_trig, s_clean, secs, extra=None):
        ev = L.evaluate(s_trig, train.poisoned)
        top = np.argsort(-s_clean, axis=0, kind="stable")[:n_p]
        ev["clean_poison_share"] = float(train.poisoned[top].mean())
        row = {
            "checkpoint": ckpt,
            "method": name,
            "seconds": round(secs, 1),
            **{k: round(float(v), 4) for k, v in ev.items()},
            **(extra or {}),
        }
        rows.append(row)
        print(
            f"{ckpt:9s} {name:44s} recall {ev['agg_recall']:.3f} auroc {ev['agg_auroc']:.3f} | per-query recall "
            f"{ev['query_recall']:.3f} auroc {ev['query_auroc']:.3f} | clean top-k poisoned {ev['clean_poison_share']:.3f}"
            f" | {secs:.1f} s",
            flush=True,
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(
                json.dumps(
                    {**row, "n_train": len(train), "poison": args.poison, "seed": args.seed, "loss_on": args.loss_on}
                )
                + "\n"
            )

    for ckpt in args.checkpoints.split(","):
        model = L.build_model(seed=args.seed)
        model.load_state_dict(ck[ckpt])
        model.eval()
        print(
            f"[{ckpt}] target prob {L.token_prob(model, trig):.4f}, clean response prob {L.token_prob(model, clean):.3f}"
        )
        for b in filter(None, args.baselines.split(",")):
            t0 = time.perf_counter()
            if b == "random":
                st, sc = (
                    random_scores(len(train), len(trig), args.seed),
                    random_scores(len(train), len(clean), args.seed + 1),
                )
            elif b.startswith("graddot"):
                only = "mlp" if b == "graddot-mlp" else None
                st, sc = graddot_scores(model, train, trig, only=only), graddot_scores(model, train, clean, only=only)
            else:
                raise SystemExit(f"unknown baseline {b}")
            report(ckpt, b, st, sc, time.perf_counter() - t0)
        for spec in specs:
            p = parse_spec(spec)
            methods = [p["method"]] if p["method"] else ["pearson", "covariance"]
            s, t_fit, t_score = daunce_scores(
                model, train, {"triggered": trig, "clean": clean}, methods=methods, **p["opts"]
            )
            for m in methods:
                label = f"daunce {spec or 'defaults'} {m}"
                report(
                    ckpt,
                    label,
                    s[m]["triggered"],
                    s[m]["clean"],
                    t_fit + t_score / len(methods),
                    {"fit_s": round(t_fit, 1), "spec": spec, "score_method": m},
                )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
