"""dattri's benchmark models (dattri.benchmark.models) through Daunce and DaunceAttributor on tiny
inputs, with their own forward conventions: logistic regression, MLP and ResNet-9 classifiers
(helpful examples share the test label above chance), nanoGPT (forward(idx, targets) -> (logits,
loss)) and MusicTransformer (sequence-first inside, see docs/pipeline.md#dattri)."""

import numpy as np
import pytest
import torch
from torch import nn

from daunce_fast.daunce import Daunce

from ..daunce._cnn import planted_images

pytest.importorskip("dattri")
from daunce_fast.integrations.dattri import DaunceAttributor


def train_theta0(model, x, y, steps=40, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def helpful_label_agreement(scores, y_train, y_test, k=5):
    """Fraction of each test example's k most helpful training examples that share its label."""
    top = torch.as_tensor(scores).topk(k, dim=0).indices  # [k, N_test]
    return (y_train[top] == y_test[None]).float().mean().item()


def loaders(x, y, n_train):
    train = torch.utils.data.TensorDataset(x[:n_train], y[:n_train])
    test = torch.utils.data.TensorDataset(x[n_train:], y[n_train:])
    return torch.utils.data.DataLoader(train, batch_size=32), torch.utils.data.DataLoader(test, batch_size=32)


CLASSIFIERS = {
    "lr": (
        lambda: __import__("dattri.benchmark.models.logistic_regression", fromlist=["x"]).create_lr_model("mnist"),
        1,
        28,
    ),
    "mlp": (lambda: __import__("dattri.benchmark.models.mlp", fromlist=["x"]).create_mlp_model("mnist"), 1, 28),
    "resnet9": (
        lambda: __import__("dattri.benchmark.models.resnet9.resnet9", fromlist=["x"]).ResNet9(num_classes=3),
        3,
        8,
    ),
}


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_through_attributor_helpful_examples_share_the_label(tmp_path, name):
    make, channels, size = CLASSIFIERS[name]
    torch.manual_seed(0)
    model = make()
    x, y = planted_images(72, num_classes=3, seed=1, channels=channels, size=size)
    n = 60
    model = train_theta0(model, x[:n], y[:n], steps=15 if name == "resnet9" else 40)
    train_loader, test_loader = loaders(x, y, n)
    # lr given: at K = 8 the check is about the wiring, not the calibrated default (measured at K = 512)
    opts = dict(num_models=8, epochs=2, lr=1e-3, batch_size=16, seed=0, workdir=tmp_path)
    if name == "resnet9":
        opts.update(rank=2, num_models=6, epochs=1)  # LoRA on its 4.9M parameters keeps the test fast
        # named: the default perturbs the linear head only (docs/pipeline.md#targets)
        layers = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)
        opts["target_modules"] = [n for n, m in model.named_modules() if isinstance(m, layers)]
    att = DaunceAttributor(model=model, **opts)
    s = att.attribute(train_loader, test_loader)
    assert s.shape == (n, 12) and torch.isfinite(s).all() and s.abs().max() > 0
    agree = helpful_label_agreement(s, y[:n], y[n:])
    assert agree > 0.5, f"{name}: {agree:.2f} of the top helpful examples share the test label (chance 1/3)"
    summary = att._daunce.summary()
    kinds = {r["type"] for r in summary.rows}
    if name == "resnet9":  # the named convolutions and BatchNorms are perturbed, not only the head
        assert {"Conv2d", "BatchNorm2d", "Linear"} <= kinds


def test_nanogpt_forward_idx_targets(tmp_path):
    from dattri.benchmark.models.nanoGPT.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=12, vocab_size=29, n_layer=1, n_head=2, n_embd=16, dropout=0.1)).eval()
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 29, (20, 11), generator=g)
    idx, targets = seq[:, :-1], seq[:, 1:]
    # items (idx, targets, label=targets): the default forward calls model(idx, targets), whose
    # (logits [B, T, V], loss) gives the logits by the tuple rule; the loss is token-averaged CE
    data = torch.utils.data.TensorDataset(idx, targets, targets)
    # transformer.wpe is called on positions shared by the whole batch (not adapter-major), so it
    # cannot carry copies: naming it is an error naming it (lora.expected_rows), never mixed copies
    names = ["wte", "c_attn", "c_proj", "c_fc", "lm_head"]
    with pytest.raises(ValueError, match="transformer.wpe"):
        Daunce(model, num_models=5, epochs=1, perturbation="xi", target_modules=[*names, "wpe"]).fit(data)
    d = Daunce(
        model, workdir=tmp_path, num_models=4, epochs=1, batch_size=8, perturbation="xi", seed=0, target_modules=names
    )
    d.fit(data)
    s = np.asarray(d.scores(data, data))
    assert s.shape == (20, 20) and np.isfinite(s).all() and np.abs(s).max() > 0
    assert any(r["type"] == "Embedding" for r in d.summary().rows)
    # the model's own (logits, loss) convention without targets: the last position only -> a
    # shape error from the loss, never silent
    bad = torch.utils.data.TensorDataset(idx, targets)
    with pytest.raises((ValueError, RuntimeError)):
        Daunce(model, num_models=2, epochs=1, perturbation="xi", target_modules=names).fit(bad)


def test_music_transformer(tmp_path):
    from dattri.benchmark.models.MusicTransformer.music_transformer import MusicTransformer

    torch.manual_seed(0)
    model = MusicTransformer(n_layers=1, num_heads=2, d_model=16, dim_feedforward=32, max_sequence=16, device="cpu")
    model.eval()
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 300, (12, 9), generator=g)
    data = torch.utils.data.TensorDataset(seq[:, :-1], seq[:, 1:])
    # its encoder runs sequence-first ([T, B, d]): only the batch-first layers (embedding, output)
    # may carry copies (docs/pipeline.md#dattri)
    att = DaunceAttributor(
        model=model,
        workdir=tmp_path,
        num_models=4,
        epochs=1,
        batch_size=6,
        perturbation="xi",
        rank=2,
        target_modules=["embedding", "Wout"],
    )
    loader = torch.utils.data.DataLoader(data, batch_size=6)
    s = att.attribute(loader, loader)
    assert s.shape == (12, 12) and torch.isfinite(s).all() and s.abs().max() > 0
