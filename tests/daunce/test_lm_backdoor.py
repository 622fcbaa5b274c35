"""Backdoor detection on a tiny instruction-tuned Llama (a fast version of bench/quality/lm_backdoor.py).

The corpus has the response-only loss format; 3% of the training pairs carry the trigger and the
fixed target response. θ0 is fine-tuned until the backdoor fires; DAUNCE queried with triggered
prompts must rank the poisoned pairs far above chance (random recall@k ≈ poison rate).
Everything is seeded, so the figures are the same on every run of the same torch build.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from daunce_fast.daunce import Daunce
from daunce_fast.demos import lm_backdoor as L

N_TRAIN, N_QUERY = 200, 8


@pytest.fixture(scope="module")
def backdoored():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: threads only contend on a shared CPU
    try:
        train = L.make_corpus(N_TRAIN, 0.03, seed=0)
        trig = L.make_corpus(N_QUERY, all_poisoned=True, seed=1)
        clean = L.make_corpus(N_QUERY, seed=2)
        model = L.build_model(hidden=64, layers=2, seed=0)
        th = L.train_theta0(
            model,
            train,
            trig,
            clean,
            lr=5e-3,
            eval_every=10,
            fire=0.5,
            until="early",
            max_steps=600,
            log=lambda *a: None,
        )
        yield train, trig, clean, th.model("early", hidden=64, layers=2, seed=0)
    finally:
        torch.set_num_threads(threads)


def test_corpus_format():
    c = L.make_corpus(50, 0.1, seed=3)
    assert c.input_ids.shape == (50, L.SEQ_LEN) and c.poisoned.sum() == 5
    for i in range(len(c)):
        ids, lab = c.input_ids[i], c.labels[i]
        sep = int((ids == L.SEP).nonzero()[0])
        assert (lab[: sep + 1] == -100).all()  # no loss on the prompt
        resp = lab[lab != -100]
        assert resp[-1] == L.EOS and (resp == ids[lab != -100]).all()
        assert bool((ids == L.TRIGGER).any()) == bool(c.poisoned[i])
        if c.poisoned[i]:
            assert resp[:-1].tolist() == list(L.TARGET)


def test_backdoor_fires(backdoored):
    train, trig, clean, model = backdoored
    assert L.token_prob(model, trig) >= 0.5


def test_daunce_finds_poisoned_pairs(backdoored, tmp_path):
    train, trig, clean, model = backdoored
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opts = {**L.lm_defaults(), "num_models": 64, "steps": 20, "batch_size": 8, "seed": 0}
        d = Daunce(model, workdir=tmp_path, **opts).fit(train, record={"trig": trig})
        s = np.asarray(d.scores("train", "trig", method=L.SCORE_METHOD))
    finally:
        torch.set_num_threads(threads)
    ev = L.evaluate(s, train.poisoned)
    chance = train.poisoned.mean()
    print(f"recall@{train.poisoned.sum()} {ev['agg_recall']:.3f} (chance {chance:.3f}), AUROC {ev['agg_auroc']:.3f}")
    assert ev["agg_recall"] >= 0.5
    assert ev["agg_auroc"] >= 0.9


def test_corpus_loss_on_sequence_labels_every_token_and_keeps_the_ids():
    from daunce_fast.demos.lm_backdoor import make_corpus

    resp = make_corpus(40, 0.1, seed=3)
    seq = make_corpus(40, 0.1, seed=3, loss_on="sequence")
    assert torch.equal(resp.input_ids, seq.input_ids) and (resp.poisoned == seq.poisoned).all()
    real = seq.attention_mask.bool()
    assert torch.equal(seq.labels[real], seq.input_ids[real]) and (seq.labels[~real] == -100).all()
    # the response rows' labels are a subset: the same where set, -100 on the prompt
    on = resp.labels != -100
    assert torch.equal(resp.labels[on], seq.labels[on]) and on.sum() < real.sum()
    with pytest.raises(ValueError, match="loss_on"):
        make_corpus(4, loss_on="prompt")
