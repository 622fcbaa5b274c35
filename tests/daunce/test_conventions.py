"""Forward and loss conventions (docs/pipeline.md#forward, #loss): tuple/dict/HF outputs, a clear
error for outputs the rules cannot read or a loss_fn that is not per-example, a bare nn.Linear."""

import numpy as np
import pytest
import torch
from torch import nn

from daunce_fast.daunce import Daunce
from daunce_fast.daunce.targets import default_targets

OPTS = dict(num_models=4, epochs=1, batch_size=8, seed=1)


def data(n=29, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.randn(n, d, generator=g) + nn.functional.one_hot(y, d).float() * 2
    return torch.utils.data.TensorDataset(x, y)


class Wrapped(nn.Module):
    """An MLP whose forward returns its logits in another container."""

    def __init__(self, how):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
        self.how = how

    def forward(self, x):
        z = self.net(x)
        if self.how == "tuple":
            return z, z.sum()  # nanoGPT-style (logits, loss)
        if self.how == "dict":
            return {"logits": z, "hidden": x}
        if self.how == "hf":
            from transformers.modeling_outputs import SequenceClassifierOutput

            return SequenceClassifierOutput(logits=z)
        if self.how == "loss_first":
            return z.sum(), z
        return z


@pytest.mark.parametrize("how", ["tuple", "dict", "hf"])
def test_tuple_dict_and_hf_outputs_give_the_plain_models_losses(tmp_path, how):
    train = data()
    plain = Daunce(Wrapped("tensor"), workdir=tmp_path / "p", **OPTS).fit(train)
    other = Daunce(Wrapped(how), workdir=tmp_path / how, **OPTS).fit(train)
    np.testing.assert_array_equal(np.array(other.losses()), np.array(plain.losses()))


def test_unreadable_outputs_name_forward_fn():
    train = data()
    with pytest.raises(ValueError, match=r"shape \(\).*forward_fn"):
        Daunce(Wrapped("loss_first"), **OPTS).fit(train)
    with pytest.raises(ValueError, match=r"forward_fn returned .*forward_fn="):
        Daunce(Wrapped("tensor"), forward_fn=lambda m, inp: m(*inp)[:2], **OPTS).fit(train)
    # the documented fix
    d = Daunce(Wrapped("loss_first"), forward_fn=lambda m, inp: m(*inp)[1], **OPTS).fit(train)
    assert np.isfinite(np.array(d.losses())).all()


@pytest.mark.parametrize(
    "loss_fn,got",
    [
        (lambda z, y: nn.functional.cross_entropy(z, y), r"shape \(\)"),
        (lambda z, y: nn.functional.cross_entropy(z, y, reduction="none")[:, None], r"shape \(\d+, 1\)"),
        (lambda z, y: -nn.functional.log_softmax(z, -1), r"shape \(\d+, 3\)"),
    ],
)
def test_loss_fn_not_per_example_is_a_clear_error_at_the_first_batch(tmp_path, monkeypatch, loss_fn, got):
    import daunce_fast.daunce.pipeline as P

    trained = []
    monkeypatch.setattr(P, "train_chunk", lambda *a, **k: trained.append(1))
    with pytest.raises(ValueError, match=rf"loss_fn returned {got} .*must return the loss of each example, shape \["):
        Daunce(Wrapped("tensor"), workdir=tmp_path, loss_fn=loss_fn, **OPTS).fit(data())
    assert not trained, "the error comes before any training step"
    for objective in ("blackbox",):  # no base pass: the first training batch raises
        with pytest.raises(ValueError, match="loss_fn returned"):
            Daunce(Wrapped("tensor"), loss_fn=loss_fn, objective=objective, **OPTS).fit(data())


def test_bare_linear_is_its_own_target():
    assert default_targets(nn.Linear(4, 2), lm=False) == [""]


def test_bare_linear_model_through_daunce(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    train, test = data(), data(n=11, seed=1)
    d = Daunce(model, workdir=tmp_path, **OPTS).fit(train, record={"test": test})
    s = np.asarray(d.scores("train", "test"))
    assert s.shape == (29, 11) and np.isfinite(s).all()
    assert [r["name"] for r in d.summary().rows] == [""]


class PositionModel(nn.Module):
    """Tokens [B, T] -> logits [B, 3]; the position table takes [T] (no batch dimension), as
    nanoGPT's wpe does. T = 8 is a multiple of K = 4: a copy layer there would split positions
    across copies without any shape error."""

    def __init__(self, vocab=11, T=8, d=6):
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.pos, self.head = nn.Embedding(vocab, d), nn.Embedding(T, d), nn.Linear(d, 3)

    def forward(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(h.mean(1))


def _tokens(n=24, T=8, vocab=11):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, vocab, (n, T), generator=g)
    return torch.utils.data.TensorDataset(x, x[:, 0] % 3)


def test_a_layer_that_does_not_see_the_batch_dimension_is_an_error_not_mixed_copies(tmp_path):
    ds = _tokens()
    d = Daunce(PositionModel(), workdir=tmp_path / "bad", target_modules=["tok", "pos", "head"], **OPTS)
    with pytest.raises(ValueError, match=r"pos: input \(8, 6\)|pos: input \(8,\).*leave it out of target_modules"):
        d.fit(ds)
    # without the position table it runs
    d = Daunce(PositionModel(), workdir=tmp_path / "ok", target_modules=["tok", "head"], **OPTS)
    d.fit(ds, record={"test": ds})
    assert np.isfinite(np.asarray(d.scores("train", "test"))).all()
