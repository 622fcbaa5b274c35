"""torch.compile traces the custom ops (no graph break) and matches eager, forward and backward."""

import copy

import pytest

from daunce_fast import lora

from ._models import mlp


def test_compile_matches_eager_without_graph_breaks():
    import torch._dynamo

    torch._dynamo.reset()
    model = mlp()
    lora.attach(model, 3, 4, 8.0, ["0", "2", "4"], seed=0)
    with torch.no_grad():
        for _, m in lora.lora_modules(model):
            m.lora_B.normal_(0, 0.1)
    twin = copy.deepcopy(model)
    x = torch.randn(3 * 5, 8)
    # fullgraph=True: a graph break (an untraceable op) is an error, not a silent fallback.
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for mod in (model, compiled):
        mod(x).square().sum().backward()
    out_e, out_c = model(x), compiled(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-6, msg=n)


@pytest.mark.slow  # inductor's C++ codegen takes ~40 s on the 2-core CI machine
def test_inductor_compile_matches_eager():
    import torch._dynamo

    torch._dynamo.reset()
    x = torch.randn(2 * 3, 7, 8)  # [K*m, T, d]
    model = mlp()
    lora.attach(model, 2, 4, 8.0, ["0", "4"], seed=0)
    with torch.no_grad():
        model[0].lora_B.normal_(0, 0.1)
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True)
    model(x).sum().backward()
    compiled(x).sum().backward()
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(twin[0].lora_A.grad, model[0].lora_A.grad, rtol=1e-5, atol=1e-6)
