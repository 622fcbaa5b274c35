"""daunce_fast.evaluation.transfer: the suite's tasks, the halves rule and the cache keys."""

import pytest

from daunce_fast.evaluation import transfer


def test_suite_size_and_halves():
    ts = transfer.tasks()
    assert len(ts) == 18 and len({t.name for t in ts}) == 18
    design, held = transfer.tasks("design"), transfer.tasks("heldout")
    assert len(design) == len(held) == 9
    assert {t.name for t in design}.isdisjoint(t.name for t in held)
    for h in (design, held):  # each half mixes data sets and recipes
        for ds in transfer.DATASETS:
            assert sum(t.dataset == ds for t in h) == 3
        assert len({t.recipe_name for t in h}) == len(transfer.RECIPES)


def test_halves_are_the_written_rule():
    assert transfer.get("digits-adam1e-3").half == "design"
    assert transfer.get("digits-adam3e-3").half == "heldout"
    assert transfer.get("breast_cancer-adam1e-3").half == "heldout"
    assert transfer.get("wine-long").half == "heldout"
    assert [t.name for t in transfer.tasks("design")][:3] == ["digits-adam1e-3", "digits-adam1e-2", "digits-brief"]


def test_recipes_and_keys():
    t = transfer.get("digits-sgdm5e-2")
    assert (t.recipe.optimizer, t.recipe.lr, t.recipe.epochs) == ("sgd", 5e-2, 50)
    assert transfer.get("wine-long").recipe.weight_decay == 0.0
    keys = {t.key() for t in transfer.tasks()}
    assert len(keys) == 18
    assert t.key() == transfer.get("digits-sgdm5e-2").key()  # stable
    assert transfer.with_recipe(t, seed=1).key() != t.key()
    assert t.cache_path("/x").name == f"gt_digits-sgdm5e-2_{t.key()}.pt"
    with pytest.raises(KeyError):
        transfer.get("digits-nope")
    with pytest.raises(ValueError):
        transfer.tasks("both")
