"""The K copies stay independent with BatchNorm and dropout: lr = 0 records θ0's losses exactly, any
chunking gives the same scores, copy k's outputs never depend on copy j's inputs, θ0's buffers
never change (docs/pipeline.md#batchnorm)."""

import copy

import numpy as np
import pytest
import torch

from daunce_fast.daunce import Daunce
from daunce_fast.daunce.modes import copy_modes
from daunce_fast.daunce.objectives import cross_entropy_per_example

from ._cnn import planted_images, trained_cnn

OPTS = dict(num_models=8, epochs=2, batch_size=16, lr=3e-3, seed=5)


def theta0_losses(model, data):
    x, y = data.tensors
    was = model.training
    model.eval()
    with torch.no_grad():
        out = cross_entropy_per_example(model(x), y)
    model.train(was)
    return out.numpy()


@pytest.mark.parametrize("batchnorm,dropout", [("eval", False), ("batch", False), ("eval", True), ("batch", True)])
def test_lr_zero_records_theta0_losses_exactly(tmp_path, batchnorm, dropout):
    model, train, test = trained_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = Daunce(model, workdir=tmp_path, **{**OPTS, "lr": 0.0}, batchnorm=batchnorm, dropout=dropout)
    d.fit(train, record={"test": test})
    for name, data in (("train", train), ("test", test)):
        rec = np.array(d.losses(name))
        ref = theta0_losses(model, data)
        np.testing.assert_allclose(rec, np.broadcast_to(ref, rec.shape), rtol=0, atol=1e-7)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"θ0's {k} changed"
    # the copies' own BatchNorm buffers (the deep copy that trained) are θ0's too
    copy_model = d._chunk_model[0]
    bn = [m for m in copy_model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert torch.equal(bn.running_mean, model[1].running_mean) and torch.equal(bn.running_var, model[1].running_var)
    assert int(bn.num_batches_tracked) == int(model[1].num_batches_tracked)


@pytest.mark.parametrize("batchnorm", ["eval", "batch"])
def test_chunkings_1_4_and_k_give_the_same_scores(tmp_path, batchnorm):
    # With batch statistics a convolution's bias right before the BatchNorm has zero gradient up to
    # rounding, which Adam scales up to full steps (docs/pipeline.md#batchnorm): no bias there.
    model, train, test = trained_cnn(conv_bias=batchnorm == "eval")
    runs = {}
    for chunk in (1, 4, 8):
        d = Daunce(model, workdir=tmp_path / f"c{chunk}", adapter_chunk=chunk, batchnorm=batchnorm, **OPTS)
        d.fit(train, record={"test": test})
        runs[chunk] = (np.array(d.losses("train")), np.asarray(d.scores("train", "test")))
    a1, s1 = runs[1]
    assert (a1.std(0) > 0).mean() > 0.9, "the copies must differ (else the test cannot fail)"
    for chunk in (4, 8):
        a, s = runs[chunk]
        np.testing.assert_allclose(a, a1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s, s1, rtol=1e-4, atol=1e-5 * np.abs(s1).max())  # float32 rounding


@pytest.mark.parametrize("batchnorm,dropout", [("eval", False), ("batch", False), ("eval", True), ("batch", True)])
def test_copy_k_output_does_not_depend_on_copy_j_inputs(tmp_path, batchnorm, dropout):
    model, train, _ = trained_cnn()
    K, m = 4, 5
    d = Daunce(model, workdir=tmp_path, **{**OPTS, "num_models": K}, batchnorm=batchnorm, dropout=dropout)
    copy_model, _ = d._model_for(list(range(K)))
    x, _ = planted_images(K * m, seed=11)
    x2 = x.clone()
    x2[m : 2 * m] = 3.0 * torch.randn(m, *x.shape[1:])  # copy 1's rows change
    outs = []
    with copy_modes(copy_model, K, batchnorm=batchnorm, dropout=dropout, training=True):
        for inp in (x, x2):
            torch.manual_seed(0)  # the same dropout masks for both passes
            outs.append(copy_model(inp).detach())
    others = torch.cat([torch.arange(0, m), torch.arange(2 * m, K * m)])
    torch.testing.assert_close(outs[0][others], outs[1][others], rtol=0, atol=0)
    assert not torch.allclose(outs[0][m : 2 * m], outs[1][m : 2 * m])
    # θ0 itself in train mode on the same rows mixes them through the BatchNorm statistics: the
    # property above is not automatic
    raw = copy.deepcopy(model).train()
    torch.manual_seed(0)
    a = raw(x).detach()
    torch.manual_seed(0)
    b = raw(x2).detach()
    assert not torch.allclose(a[others], b[others])


def test_batch_mode_uses_each_copys_own_statistics(tmp_path):
    """Per-copy batch statistics equal BatchNorm in train mode run on that copy's rows alone."""
    model, _, _ = trained_cnn()
    bn = model[1]
    K, m = 3, 7
    x = torch.randn(K * m, 4, 5, 3)
    wrapped = torch.nn.Sequential(bn)
    with copy_modes(wrapped, K, batchnorm="batch", dropout=False, training=True):
        y = wrapped(x)
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    for k in range(K):
        ref = torch.nn.functional.batch_norm(x[k * m : (k + 1) * m], None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        torch.testing.assert_close(y[k * m : (k + 1) * m], ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert not bn.training and bn.forward.__func__ is torch.nn.BatchNorm2d.forward  # restored


def test_batchnorm_and_dropout_options_enter_the_fingerprint(tmp_path):
    model, train, _ = trained_cnn()
    Daunce(model, workdir=tmp_path, **{**OPTS, "num_models": 2, "epochs": 1}).fit(train)
    for opt in ({"batchnorm": "batch"}, {"dropout": True}):
        with pytest.raises(ValueError, match="different run"):
            Daunce(model, workdir=tmp_path, **{**OPTS, "num_models": 2, "epochs": 1}, **opt).fit(train)
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        Daunce(model, batchnorm="train")
    with pytest.raises(ValueError, match="dropout must be True or False"):
        Daunce(model, dropout=0.1)
