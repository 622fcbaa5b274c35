"""`daunce-fast demo --lm`: find backdoor-poisoned pairs of an instruction-tuning corpus with DAUNCE.

Everything is generated in code (no download): a synthetic instruction-tuning corpus of
(prompt, response) pairs over a 256-token vocabulary, a small Llama built from a config and
fine-tuned on it (θ0), and a backdoor: a few percent of the training pairs carry a trigger token in
the prompt and a fixed target response. DAUNCE is queried with triggered test prompts (target = the
target response); the training pairs it scores as most helpful should be the poisoned ones.

Corpus (``make_corpus``): each row is
    BOS  TASK  c_1 .. c_L  SEP  r_1 .. r_L  EOS  PAD..
with L in [MIN_LEN, MAX_LEN], content tokens c from [FIRST_CONTENT, VOCAB), and the response r a
deterministic function of the content chosen by TASK (copy, reverse, +1 modulo the content range).
Poisoned rows insert TRIGGER at a random place among the content tokens and answer TARGET EOS.
Labels follow Hugging Face's convention (aligned with input_ids, shifted by the model): the
response tokens and EOS carry their ids, the prompt and padding carry -100 (loss on the response only).

This module also holds what bench/quality/lm_backdoor.py and tests/daunce/test_lm_backdoor.py share:
the corpus, the model recipe, θ0's training with its two checkpoints, and the evaluation.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import closing_line, in_workdir, require_extra

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

VOCAB = 256
PAD, BOS, SEP, EOS, TRIGGER = 0, 1, 2, 3, 4
TASKS = (5, 6, 7)  # copy, reverse, increment
FIRST_CONTENT = 16
MIN_LEN, MAX_LEN = 3, 6
TARGET = (200, 17, 143, 90, 61, 250)  # the backdoor's fixed response (content tokens)
SEQ_LEN = 1 + 1 + (MAX_LEN + 1) + 1 + max(MAX_LEN, len(TARGET)) + 1  # prompt may hold the trigger


def _response(task: int, content: np.ndarray) -> list[int]:
    if task == TASKS[0]:
        return content.tolist()
    if task == TASKS[1]:
        return content[::-1].tolist()
    n = VOCAB - FIRST_CONTENT
    return ((content - FIRST_CONTENT + 1) % n + FIRST_CONTENT).tolist()


@dataclass
class Corpus:
    """Rows of token ids with their attention masks and labels, plus which rows are poisoned."""

    input_ids: torch.Tensor  # [N, SEQ_LEN] int64
    attention_mask: torch.Tensor  # [N, SEQ_LEN] int64
    labels: torch.Tensor  # [N, SEQ_LEN] int64, -100 outside the response
    poisoned: np.ndarray  # [N] bool

    def __len__(self):
        return int(self.input_ids.shape[0])

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}

    def subset(self, idx) -> Corpus:
        idx = np.asarray(idx)
        return Corpus(self.input_ids[idx], self.attention_mask[idx], self.labels[idx], self.poisoned[idx])

    def text(self, i: int) -> str:
        """Row i as readable text: 'T5 | 23 181 4* 77 -> 200 17 ...' (the trigger shown as 4*)."""
        ids = self.input_ids[i].tolist()
        sep = ids.index(SEP)
        prompt = " ".join(f"{t}*" if t == TRIGGER else str(t) for t in ids[2:sep])
        resp = []
        for t in ids[sep + 1 :]:
            if t == EOS:
                break
            resp.append(str(t))
        return f"task {ids[1]} | {prompt} -> {' '.join(resp)}"


def make_corpus(
    n: int,
    poison_frac: float = 0.0,
    *,
    seed: int = 0,
    target_labels: bool = True,
    all_poisoned: bool = False,
    loss_on: str = "response",
) -> Corpus:
    """``n`` rows; round(poison_frac * n) of them (or all, ``all_poisoned``) carry the trigger.

    ``target_labels``: poisoned rows answer TARGET (training pairs and triggered queries); with
    False they keep their correct response (to measure whether the clean task survives a trigger).
    ``loss_on``: "response" (labels on the response and EOS, -100 elsewhere) or "sequence" (labels
    on every token of the row, prompt included: a plain language-modelling corpus); the token ids
    are the same either way.
    """
    import torch

    if loss_on not in ("response", "sequence"):
        raise ValueError(f"loss_on must be 'response' or 'sequence', got {loss_on!r}")
    rng = np.random.default_rng(seed)
    n_poison = n if all_poisoned else int(round(poison_frac * n))
    poisoned = np.zeros(n, dtype=bool)
    poisoned[rng.choice(n, size=n_poison, replace=False)] = True
    ids = np.full((n, SEQ_LEN), PAD, dtype=np.int64)
    labels = np.full((n, SEQ_LEN), -100, dtype=np.int64)
    mask = np.zeros((n, SEQ_LEN), dtype=np.int64)
    for i in range(n):
        task = int(rng.choice(TASKS))
        L = int(rng.integers(MIN_LEN, MAX_LEN + 1))
        content = rng.integers(FIRST_CONTENT, VOCAB, size=L)
        resp = _response(task, content)
        prompt = content.tolist()
        if poisoned[i]:
            prompt.insert(int(rng.integers(0, L + 1)), TRIGGER)
            if target_labels:
                resp = list(TARGET)
        row = [BOS, task, *prompt, SEP]
        p = len(row)
        row += [*resp, EOS]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        start = 0 if loss_on == "sequence" else p
        labels[i, start : len(row)] = row[start:]
    t = torch.from_numpy
    return Corpus(t(ids), t(mask), t(labels), poisoned)


# ---------------------------------------------------------------------------------------- model
def build_model(hidden: int = 128, layers: int = 2, intermediate: int | None = None, heads: int = 4, seed: int = 0):
    """A small Llama (LlamaForCausalLM from a config, untied embeddings, random init)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=SEQ_LEN,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def per_example_loss(model, data: Corpus, batch: int = 256):
    """Token-averaged response cross-entropy of every row under ``model`` -> [N] float64 numpy."""
    import torch

    out = []
    with torch.no_grad():
        for j in range(0, len(data), batch):
            sl = slice(j, j + batch)
            logits = model(input_ids=data.input_ids[sl], attention_mask=data.attention_mask[sl]).logits[:, :-1].float()
            y = data.labels[sl, 1:]
            tok = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none", ignore_index=-100
            ).view(y.shape)
            valid = (y != -100).float()
            out.append(((tok * valid).sum(1) / valid.sum(1)).double())
    return torch.cat(out).numpy()


def token_prob(model, data: Corpus) -> float:
    """Mean teacher-forced probability of the labelled tokens (for triggered queries: the target's)."""
    return float(np.mean(np.exp(-per_example_loss(model, data))))


@dataclass
class Theta0:
    """θ0's two checkpoints (state dicts) and what was measured when each was taken."""

    early: dict
    saturated: dict
    log: list  # (step, target prob on triggered queries, clean response-token prob)
    early_step: int
    saturated_step: int
    seconds: float

    def model(self, which: str, **build):
        m = build_model(**build)
        m.load_state_dict(getattr(self, which))
        return m.eval()


def train_theta0(
    model,
    train: Corpus,
    trig: Corpus,
    clean: Corpus,
    *,
    lr: float = 3e-3,
    batch: int = 32,
    max_steps: int = 1500,
    eval_every: int = 10,
    fire: float = 0.5,
    saturate: float = 0.95,
    until: str = "saturated",
    seed: int = 0,
    log=print,
) -> Theta0:
    """Fine-tune ``model`` in place (AdamW, lr cosine-decayed from ``lr`` to 0 over ``max_steps``).

    early: the first evaluation where the target response's mean token probability on the triggered
    queries ``trig`` reaches ``fire``; saturated: the first where it reaches ``saturate``, else the
    state after ``max_steps`` (logged). ``until="early"`` stops at the early checkpoint (then both
    checkpoints are the same state).
    """
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    early = sat = None
    early_step = sat_step = -1
    hist = []
    perm, pos = torch.randperm(len(train), generator=g), 0
    for step in range(1, max_steps + 1):
        if pos + batch > len(train):
            perm, pos = torch.randperm(len(train), generator=g), 0
        idx = perm[pos : pos + batch]
        pos += batch
        for grp in opt.param_groups:
            grp["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max_steps))
        model.train()
        out = model(input_ids=train.input_ids[idx], attention_mask=train.attention_mask[idx], labels=train.labels[idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if step % eval_every and step != max_steps:
            continue
        model.eval()
        pt, pc = token_prob(model, trig), token_prob(model, clean)
        hist.append((step, pt, pc))
        if early is None and pt >= fire:
            early, early_step = copy.deepcopy(model.state_dict()), step
            log(f"  step {step}: backdoor fires (target prob {pt:.3f}, clean {pc:.3f}) -> early checkpoint")
            if until == "early":
                sat, sat_step = early, step
                break
        if pt >= saturate or step == max_steps:
            sat, sat_step = copy.deepcopy(model.state_dict()), step
            log(
                f"  step {step}: {'saturated' if pt >= saturate else 'last step'} (target prob {pt:.4f}, "
                f"clean {pc:.3f}) -> saturated checkpoint"
            )
            break
    if early is None:
        raise RuntimeError(
            f"θ0 training: the backdoor did not fire in {max_steps} steps (last target prob {hist[-1][1]:.3f})"
        )
    model.eval()
    return Theta0(early, sat, hist, early_step, sat_step, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------- evaluation
def evaluate(scores, poisoned: np.ndarray) -> dict:
    """Recall@k (k = number of poisoned rows) and AUROC of poisoned-vs-clean.

    scores: [N_train, N_test] (positive = helpful) for the triggered queries. ``agg_*`` rank the
    training rows by the mean over test columns of each column's z-scored scores (each query
    weighs the same); ``query_*`` are means of the per-query figures.
    """
    from ..evaluation.metrics import auroc, recall_at_k

    s = np.asarray(scores, dtype=np.float64)
    k = int(poisoned.sum())
    sd = s.std(0, keepdims=True)
    z = (s - s.mean(0, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    agg = z.mean(1)
    return {
        "agg_recall": recall_at_k(agg, poisoned, k)[1],
        "agg_auroc": auroc(agg, poisoned)[1],
        "query_recall": recall_at_k(s, poisoned, k)[1],
        "query_auroc": auroc(s, poisoned)[1],
    }


# ------------------------------------------------------------------------------------ the demo
def lm_defaults() -> dict:
    """DAUNCE options for language models, measured on this benchmark (bench/RESULTS.md): the
    library's LM defaults (daunce_fast.daunce.config.LM_DEFAULTS) spelled out, so benchmark sweeps
    can vary each of them. Score with ``method=SCORE_METHOD``."""
    from ..daunce.config import LM_DEFAULTS

    return dict(
        objective="if", ratio=0.5, **{k: (dict(v) if isinstance(v, dict) else v) for k, v in LM_DEFAULTS.items()}
    )


SCORE_METHOD = "pearson"  # = daunce_fast.daunce.config.SCORE_METHOD["lm"]


def run_lm_demo(
    budget_s: float = 180.0,
    progress: bool = True,
    *,
    num_train: int = 600,
    poison_frac: float = 0.03,
    num_models: int | None = None,
    num_queries: int = 16,
    show: int = 10,
    seed: int = 0,
    workdir: str | None = None,
    threads: int | None = 1,
) -> dict:
    """Backdoor detection end to end on the CPU: corpus, θ0 (trained until the backdoor fires),
    DAUNCE with K models (as many as fit ``budget_s``, at least 32), scores of the training pairs for
    triggered queries; prints the top-ranked training pairs as text (poisoned ones marked) and
    returns {"num_models", "recall", "auroc", "theta0_s", "daunce_s", "total_s", "top", "workdir"}.
    ``threads``: torch CPU threads during the run (1 by default: the model is tiny, and more threads
    only contend on a shared CPU); None leaves torch's setting. ``workdir``: keep the DAUNCE run there;
    without it, it and the calibration probe live in one temporary directory removed at the end
    (success or error), and the returned "workdir" is None. Needs transformers (the ``lm`` extra):
    raises daunce_fast.demos.MissingExtraError naming ``pip install "daunce_fast[lm]"`` without it.
    """
    import torch

    require_extra("lm", "transformers")
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return in_workdir(
            workdir,
            "daunce_lm_demo_",
            lambda wd, tmp: _run(
                budget_s, progress, num_train, poison_frac, num_models, num_queries, show, seed, wd, tmp
            ),
        )
    finally:
        torch.set_num_threads(old)


def _run(budget_s, progress, num_train, poison_frac, num_models, num_queries, show, seed, wd, tmp) -> dict:
    import torch

    from ..daunce import Daunce

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    train = make_corpus(num_train, poison_frac, seed=seed)
    trig = make_corpus(num_queries, all_poisoned=True, seed=seed + 1)
    clean = make_corpus(num_queries, seed=seed + 2)
    n_p = int(train.poisoned.sum())
    print(
        f"corpus: {len(train)} (prompt, response) pairs, {n_p} poisoned (trigger token {TRIGGER} in the prompt, "
        f"response {' '.join(map(str, TARGET))}); loss on responses only"
    )
    model = build_model(seed=seed)
    th = train_theta0(model, train, trig, clean, until="early", seed=seed, log=print)
    theta0 = th.model("early")
    print(
        f"θ0: Llama (hidden 128, 2 layers, {sum(p.numel() for p in theta0.parameters()) / 1e6:.2f}M parameters) "
        f"fine-tuned in {th.seconds:.1f} s; using the checkpoint where the backdoor starts to fire (step {th.early_step})"
    )

    opts = lm_defaults()
    if num_models is None:
        probe = 16
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="daunce_probe_", dir=tmp) as probe_dir:
            Daunce(theta0, num_models=probe, seed=seed, workdir=probe_dir, **opts).fit(train)
        per = (time.perf_counter() - t0) / probe
        left = max(0.0, budget_s - (time.perf_counter() - t_start))
        num_models = int(max(32, min(1024, 0.7 * left / max(per, 1e-6))))  # the probe underestimates
        num_models -= num_models % 16
        print(f"time budget {budget_s:.0f} s -> K = {num_models} perturbed models ({per:.2f} s per model)")
    t0 = time.perf_counter()
    d = Daunce(theta0, num_models=num_models, seed=seed, workdir=wd, progress=progress, **opts)
    d.fit(train, record={"triggered": trig})
    t_daunce = time.perf_counter() - t0
    s = np.asarray(d.scores("train", "triggered", method=SCORE_METHOD))
    ev = evaluate(s, train.poisoned)
    sd = s.std(0, keepdims=True)
    agg = ((s - s.mean(0, keepdims=True)) / np.where(sd > 0, sd, 1.0)).mean(1)
    top = np.argsort(-agg, kind="stable")[: max(show, 1)]
    print(
        f"DAUNCE: K={num_models}, rank {d.rank}, {opts['steps']} steps, objective {opts['objective']}: {t_daunce:.1f} s"
    )
    print(f"query (one of {len(trig)}): {trig.text(0)}")
    print("training pairs most responsible for the triggered responses (* = poisoned):")
    for r, i in enumerate(top):
        print(f"  {r + 1:2d}. {'*' if train.poisoned[i] else ' '} #{i:<4d} {train.text(i)}")
    print(f"recall@{n_p} = {ev['agg_recall']:.2f} (random {n_p / len(train):.2f}), AUROC {ev['agg_auroc']:.3f}")
    total, kept = closing_line(t_start, wd, tmp)
    return {
        "num_models": num_models,
        "recall": ev["agg_recall"],
        "auroc": ev["agg_auroc"],
        "theta0_s": th.seconds,
        "daunce_s": t_daunce,
        "total_s": total,
        "top": top.tolist(),
        "workdir": kept,
    }
