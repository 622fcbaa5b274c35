"""Daunce.summary(): the wrapped modules, their kind, parameters and memory per copy and in total;
logged and stored in workdir/summary.json at the start of fit, before any training step."""

import json
import logging

import pytest
import torch

import daunce_fast.daunce.pipeline as P
from daunce_fast.daunce import Daunce
from daunce_fast.lora.copies import CopyLayer

from ._cnn import trained_cnn

OPTS = dict(num_models=6, epochs=1, batch_size=16, seed=2)


@pytest.mark.parametrize("rank", ["full", 3])
def test_rows_match_the_copy_layers(rank):
    model, _, _ = trained_cnn()
    d = Daunce(model, rank=rank, target_modules=["0", "1", "6"], **OPTS)
    s = d.summary()
    layers = {m.name: m for m in d._chunk_model[0].modules() if isinstance(m, CopyLayer)}
    assert [r["name"] for r in s.rows] == list(layers) and layers
    for r in s.rows:
        layer, base = layers[r["name"]], model.get_submodule(r["name"])
        per_copy = sum(p[0].numel() for p in layer.adapter_parameters())
        assert r["type"] == type(base).__name__
        assert r["params_per_copy"] == per_copy and r["bytes_per_copy"] == 4 * per_copy  # float32
        assert r["params_total"] == 6 * per_copy and r["bytes_total"] == 6 * 4 * per_copy
        assert r["fallback"] is False
        if isinstance(base, torch.nn.BatchNorm2d):  # per-copy scale and shift
            assert r["kind"] == "affine (batchnorm=eval)" and per_copy == 2 * base.num_features
        elif rank == "full":
            assert r["kind"] == "full" and per_copy == sum(p.numel() for p in base.parameters())
        elif isinstance(base, torch.nn.Linear):
            assert r["kind"] == "lora r=3" and per_copy == 3 * (base.in_features + base.out_features)
        else:
            assert r["kind"] == "lora r=3"
    # the named convolution, the norm's affine parameters and the head
    assert [(r["name"], r["type"]) for r in s.rows] == [("0", "Conv2d"), ("1", "BatchNorm2d"), ("6", "Linear")]
    text = str(s)
    assert "total" in text and all(r["name"] in text for r in s.rows)
    assert f"{s.params_per_copy * 6:,}" in text
    assert s.to_dict()["params_total"] == 6 * s.params_per_copy == sum(r["params_total"] for r in s.rows)


def test_default_targets_of_a_cnn_are_its_linear_head_and_every_batchnorm_stays_per_copy():
    """The measured default (docs/pipeline.md#targets): the linear layers; the BatchNorm is
    still wrapped (statistics only) so the copies never share batch statistics."""
    model, _, _ = trained_cnn()
    rows = Daunce(model, **OPTS).summary().rows
    assert [(r["name"], r["type"], r["kind"]) for r in rows] == [
        ("1", "BatchNorm2d", "stats (batchnorm=eval)"),
        ("6", "Linear", "full"),
    ]


def test_fit_logs_and_stores_the_summary_before_training(tmp_path, monkeypatch, caplog):
    model, train, _ = trained_cnn()
    seen = []
    real = P.train_chunk

    def spy(*a, **k):  # the summary must be logged and stored before the first training step
        seen.append(
            (tmp_path / "summary.json").exists() and any("DAUNCE perturbs" in r.message for r in caplog.records)
        )
        return real(*a, **k)

    monkeypatch.setattr(P, "train_chunk", spy)
    with caplog.at_level(logging.INFO, logger="daunce_fast.daunce"):
        d = Daunce(model, workdir=tmp_path, adapter_chunk=3, **OPTS).fit(train)
    assert seen == [True, True]
    assert sum("DAUNCE perturbs" in r.message for r in caplog.records) == 1, "logged once per fit"
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored == json.loads(json.dumps(d.summary().to_dict()))
    assert not list(tmp_path.glob(".summary.json*")), "no temporary file left behind"
    # summary.json is informative: the fingerprint (state.json) is unchanged by it and a refit is a no-op
    state = (tmp_path / "state.json").read_text()
    (tmp_path / "summary.json").unlink()
    Daunce(model, workdir=tmp_path, adapter_chunk=3, **OPTS).fit(train)
    assert (tmp_path / "state.json").read_text() == state and seen == [True, True]
