"""Compute once what is identical across the K copies: the *shared prefix* of a model carrying copy layers.

A forward of the copies takes K*B adapter-major rows (rows ``[k*B, (k+1)*B)`` are copy k's). Every
value that depends only on the inputs and on frozen modules and ops -- no copy layer upstream -- is
the same for every copy, yet the plain forward computes it K times. This module splits the model's
``torch.fx`` graph (docs/pipeline.md#shared-prefix):

* every node is labelled **shared** (its inputs are shared and it is a frozen, deterministic,
  row-wise op: a frozen module in a mode that does not mix rows or draw random numbers, a copy
  layer with no adapter parameters whose statistics do not mix rows -- a BatchNorm under the copy
  rules with θ0's running statistics --, a function or method that draws no random numbers) or
  **per-copy** (a copy layer, an adapter parameter, anything downstream of them, a random op, an
  op mixing the rows in the current modes);
* the *prefix* graph computes the shared nodes on the B example rows;
* at every edge shared -> per-copy the shared value enters the *suffix* graph, which computes the
  per-copy nodes on K*B rows: a tensor whose leading size scales with the batch ("rows", c rows
  per example) is repeated K times adapter-major (``x.repeat(K, 1, ...)``, the layout of
  ``daunce.data.repeat_for_models``); a tensor that does not depend on the batch size ("const",
  e.g. a position table) is passed as it is; a value that is not a tensor (``x.size(0)``,
  ``x.shape``, ``len(x)``, tuples) is computed again in the suffix from the per-copy values of its
  inputs (so ``x.view(x.size(0), -1)`` sees K*B);
* the rows/const decision comes from running the prefix on 2 and on 3 examples.

The split is refused (the caller runs today's unsplit forward; the reason is logged at INFO once)
when: the module switch is off (``DAUNCE_FAST_SHARE_PREFIX=0`` in the environment, or
``ENABLED = False``); the model is itself a copy layer; its forward takes ``*args``/``**kwargs`` or
lacks an input without a default; ``torch.fx`` cannot trace it (data-dependent control flow,
Hugging Face models...); nothing substantial is shared (the first layer carries copies); a shared
value changes shape in another way with the batch size, or keeps its shape but changes value
(a batch statistic); an in-place op mutates a shared value that a per-copy op also reads.

Safety net: the first time a split is used for recording (and the first training step of every
chunk), its result is compared with the unsplit forward on that batch (same random state), with
``rtol=1e-4, atol=1e-5 * max(1, max|ref|)`` for float32/float64 (1e-2 for half types); a mismatch
logs a warning and that split is never used again.
"""

from __future__ import annotations

import inspect
import logging
import operator
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import fx, nn

from .copies import CopyLayer, expected_rows
from .norm import MultiCopyNorm

logger = logging.getLogger(__name__)

# The module switch (read once from the environment): False runs every forward unsplit.
ENABLED = os.environ.get("DAUNCE_FAST_SHARE_PREFIX", "1").strip().lower() not in ("0", "false", "off", "no")

SHARED, PER_COPY = "shared", "per-copy"

# Modules whose forward is deterministic and row-wise whatever their training flag (they read no
# batch statistics and draw no random numbers), so a frozen one in train mode can still be shared.
_MODE_FREE = (
    nn.Linear,
    nn.Bilinear,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Embedding,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softmax,
    nn.LogSoftmax,
    nn.PReLU,
    nn.Upsample,
    nn.PixelShuffle,
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

# Functions and methods that draw random numbers (one draw per copy in the unsplit forward).
_RANDOM_NAMES = {
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "feature_dropout",
    "bernoulli",
    "rand",
    "randn",
    "randint",
    "rand_like",
    "randn_like",
    "randint_like",
    "randperm",
    "multinomial",
    "normal",
    "poisson",
    "rrelu",
    "bernoulli_",
    "uniform_",
    "normal_",
    "random_",
    "exponential_",
    "geometric_",
    "log_normal_",
    "cauchy_",
    "rrelu_",
}
_INPLACE_OPERATORS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.ilshift,
    operator.irshift,
    operator.imatmul,
    operator.setitem,
}
# Shared nodes too cheap to be worth a split on their own (views, shape reads, dtype casts).
_CHEAP_NAMES = {
    "view",
    "reshape",
    "flatten",
    "size",
    "dim",
    "contiguous",
    "float",
    "double",
    "half",
    "bfloat16",
    "to",
    "type",
    "unsqueeze",
    "squeeze",
    "permute",
    "transpose",
    "expand",
    "getitem",
    "getattr",
    "__getitem__",
    "_assert",
    "_assert_is_none",
    "eq",
}

_LOGGED: set = set()


def _log_once(level: int, key, msg: str, *args) -> None:
    if key in _LOGGED:
        return
    _LOGGED.add(key)
    logger.log(level, msg, *args)


class Refused(Exception):
    """The model cannot be split; the message says why."""


# ----------------------------------------------------------------------------------------- labelling
def _name_of(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _fetch(root: nn.Module, target: str):
    obj = root
    for part in target.split(".") if target else []:
        obj = getattr(obj, part)
    return obj


def _module_rowwise(mod: nn.Module) -> bool:
    """True when ``mod`` (a frozen module without copy layers) in its current modes computes each
    row from that row alone, deterministically: every module of its subtree is in eval mode or of a
    mode-free type, no BatchNorm reads batch statistics, no forward is patched on the instance."""
    for m in mod.modules():
        if "forward" in m.__dict__:  # modes.copy_modes' per-copy batch statistics, or a user patch
            return False
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            return False
        if m.training and not isinstance(m, _MODE_FREE):
            return False
    return True


def _copy_layer_frozen(layer: CopyLayer) -> bool:
    """A copy layer that computes θ0's function row by row: a norm under the copy rules with no
    adapter parameters whose statistics are θ0's running statistics (``MultiCopyNorm``, kind "stats")."""
    if not isinstance(layer, MultiCopyNorm) or layer.adapter_parameters():
        return False
    base = layer.base
    if isinstance(base, nn.modules.batchnorm._BatchNorm):
        use_batch = base.running_mean is None or (layer.batchnorm == "batch" and base.training)
        return not use_batch and not any("forward" in m.__dict__ for m in base.modules())
    return False


def _training_arg(node: fx.Node, index: int, default: bool) -> Any:
    if "training" in node.kwargs:
        return node.kwargs["training"]
    return node.args[index] if len(node.args) > index else default


def _op_shareable(node: fx.Node) -> bool:
    """A call_function / call_method node that draws no random numbers and mixes no rows."""
    name = _name_of(node.target)
    if name in _RANDOM_NAMES:
        # functional dropout with training=False is the identity
        if name.startswith(("dropout", "alpha_dropout", "feature_")) and _training_arg(node, 2, True) is False:
            return True
        if name == "rrelu" and _training_arg(node, 3, False) is False:
            return True
        return False
    if name == "batch_norm" and node.op == "call_function":
        return _training_arg(node, 5, False) is False
    return True


def _inplace_target(node: fx.Node, root: nn.Module) -> Optional[fx.Node]:
    """The node whose value ``node`` mutates in place, or None."""
    mutates = False
    if node.op == "call_module":
        mutates = bool(getattr(_fetch(root, node.target), "inplace", False))
    elif node.op == "call_function":
        name = _name_of(node.target)
        mutates = (
            node.target in _INPLACE_OPERATORS
            or node.kwargs.get("inplace") is True
            or (name.endswith("_") and not name.endswith("__"))
        )
    elif node.op == "call_method":
        mutates = node.target.endswith("_") and not node.target.endswith("__")
    if not mutates:
        return None
    first = node.args[0] if node.args else None
    return first if isinstance(first, fx.Node) else None


class _Tracer(fx.Tracer):
    """Leaves: every copy layer, torch.nn's own modules (fx's default), and any frozen module in
    eval mode without copy layers inside (it is computed whole; no need to trace into it). Custom
    modules that hold copy layers, or that are in train mode (their ``self.training`` branches are
    baked into the graph of the current modes), are traced through."""

    def __init__(self, holds_copies: set[int]):
        super().__init__()
        self.holds_copies = holds_copies

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, CopyLayer) or super().is_leaf_module(m, qualname):
            return True
        return id(m) not in self.holds_copies and not any(s.training for s in m.modules())


class _Frozen(nn.Module):
    """Runs a copy layer without adapter parameters as its plain base (``disabled``): any number of
    rows, so the shared prefix can call it on the B example rows."""

    def __init__(self, layer: CopyLayer):
        super().__init__()
        self.layer = layer

    def forward(self, *args, **kwargs):
        old = self.layer.disabled
        self.layer.disabled = True
        try:
            return self.layer(*args, **kwargs)
        finally:
            self.layer.disabled = old


def _graph_module(model: nn.Module, graph: fx.Graph, extra: dict) -> fx.GraphModule:
    """A GraphModule over ``graph`` whose submodules and attributes are ``model``'s own objects (by
    reference: adapters trained or loaded in place are seen), plus ``extra`` (name -> module)."""
    root = dict(extra)
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr") and n.target not in root:
            root[n.target] = _fetch(model, n.target)
    return fx.GraphModule(root, graph)


def _repeat_rows(x: torch.Tensor, K: int) -> torch.Tensor:
    """``x.repeat(K, 1, ...)``: K copies of x's rows, adapter-major (data.repeat_for_models' layout)."""
    return x.unsqueeze(0).expand(K, *x.shape).reshape(K * x.shape[0], *x.shape[1:])


def _probe_rows(inputs, p: int):
    def take(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        idx = torch.arange(p, device=t.device) % t.shape[0]
        return t[idx]

    return {k: take(v) for k, v in inputs.items()} if isinstance(inputs, dict) else tuple(take(v) for v in inputs)


def _input_count(inputs) -> int:
    values = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    return int(next(v for v in values if isinstance(v, torch.Tensor)).shape[0])


# --------------------------------------------------------------------------------------------- split
class Split:
    """The shared/per-copy split of one model in one set of modes, for one input structure.

    prefix(*args)           the shared nodes on B example rows -> tuple of the "rows"/"const"
                            boundary values (args: the placeholders in the forward's order)
    suffix(*boundaries)     the per-copy nodes (and the non-tensor shared values computed again)
                            -> the model's output for K*B rows
    boundaries              [(kind, key)]: kind "input" (key: position or name of the input),
                            "rows" (key: index into prefix's outputs; ``rows_per_example[i]``),
                            "const" (key: index into prefix's outputs)
    labels                  {node name: "shared" | "per-copy"} of the traced graph
    """

    def __init__(self, model: nn.Module, inputs):
        if isinstance(model, CopyLayer):
            raise Refused("the model itself is a copy layer")
        if not any(isinstance(m, CopyLayer) for m in model.modules()):
            raise Refused("the model carries no copy layers")
        self.dict_inputs = isinstance(inputs, dict)
        placeholders_args = self._signature(model, inputs)
        holds = {id(m) for m in model.modules() if any(isinstance(s, CopyLayer) for s in m.modules())}
        tracer = _Tracer(holds)
        try:
            graph = tracer.trace(model, concrete_args=self._concrete)
        except Exception as e:  # any tracing failure means: run unsplit
            raise Refused(f"torch.fx cannot trace it ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
        self.graph = graph
        self.placeholder_keys = placeholders_args
        self._label(model, graph)
        self._build(model, graph, inputs)

    # ---------------------------------------------------------------- tracing
    def _signature(self, model, inputs) -> list:
        """Concrete arguments for every forward parameter not given (its default), and the key of
        each placeholder in order: ("pos", i) / ("kw", name) for a given input, ("default", value)."""
        params = list(inspect.signature(model.forward).parameters.values())
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            raise Refused("its forward takes *args or **kwargs")
        if self.dict_inputs:
            given = {k: ("kw", k) for k in inputs}
            unknown = set(inputs) - {p.name for p in params}
            if unknown:
                raise Refused(f"its forward has no parameter {sorted(unknown)}")
        else:
            if len(inputs) > len(params):
                raise Refused("more inputs than forward parameters")
            given = {p.name: ("pos", i) for i, p in enumerate(params[: len(inputs)])}
        self._concrete, keys = {}, []
        for p in params:
            if p.name in given:
                keys.append(given[p.name])
            elif p.default is inspect.Parameter.empty:
                raise Refused(f"its forward parameter {p.name!r} is neither given nor defaulted")
            else:
                self._concrete[p.name] = p.default
                keys.append(("default", p.default))
        return keys

    def _label(self, model, graph: fx.Graph) -> None:
        labels: dict[fx.Node, str] = {}
        for n in graph.nodes:
            if n.op == "output":
                continue
            if n.op == "placeholder":
                labels[n] = SHARED
            elif n.op == "get_attr":
                v = _fetch(model, n.target)
                labels[n] = PER_COPY if isinstance(v, torch.Tensor) and v.requires_grad else SHARED
            elif any(labels[a] == PER_COPY for a in n.all_input_nodes):
                labels[n] = PER_COPY
            elif n.op == "call_module":
                m = _fetch(model, n.target)
                if isinstance(m, CopyLayer):
                    ok = _copy_layer_frozen(m)
                else:
                    ok = not any(isinstance(s, CopyLayer) for s in m.modules()) and _module_rowwise(m)
                labels[n] = SHARED if ok else PER_COPY
            else:
                labels[n] = SHARED if _op_shareable(n) else PER_COPY
        # in place: a per-copy op mutating a shared value would change it for the shared readers;
        # a shared op mutating a value that something else reads would change it behind a repeat
        for n in graph.nodes:
            if n.op == "output":
                continue
            t = _inplace_target(n, model)
            if t is None:
                continue
            if labels[n] == PER_COPY and labels[t] == SHARED:
                raise Refused(f"the per-copy in-place op {n.name} mutates the shared value {t.name}")
            if labels[n] == SHARED and len(t.users) > 1:
                raise Refused(f"the in-place op {n.name} mutates {t.name}, which other ops read")
        self.labels_by_node = labels
        self.labels = {n.name: lab for n, lab in labels.items()}

    # ---------------------------------------------------------------- building
    def _build(self, model, graph: fx.Graph, inputs) -> None:
        labels = self.labels_by_node
        shared = [n for n in graph.nodes if n.op != "output" and labels[n] == SHARED]
        per_copy = [n for n in graph.nodes if n.op != "output" and labels[n] == PER_COPY]
        if not per_copy:
            raise Refused("no node depends on a copy layer")
        substantial = [
            n
            for n in shared
            if n.op in ("call_module", "call_function", "call_method") and _name_of(n.target) not in _CHEAP_NAMES
        ]
        if not substantial:
            raise Refused("nothing substantial is shared (a copy layer comes first)")
        # Every shared value, by probes on 2 and 3 example rows: their shapes say rows or const.
        frozen: dict[str, nn.Module] = {}
        g, env = fx.Graph(), {}
        for n in graph.nodes:
            if n.op == "placeholder" or (n.op != "output" and labels[n] == SHARED):
                new = g.node_copy(n, lambda a: env[a])
                if n.op == "call_module" and isinstance(_fetch(model, n.target), CopyLayer):
                    new.target = f"_daunce_frozen_{len(frozen)}"
                    frozen[new.target] = _Frozen(_fetch(model, n.target))
                env[n] = new
        g.output(tuple(env[n] for n in shared))
        probe_gm = _graph_module(model, g, frozen)
        B = _input_count(inputs)
        try:
            with torch.no_grad():
                v2, v3 = (dict(zip(shared, probe_gm(*self.call_args(_probe_rows(inputs, p))))) for p in (2, 3))
        except Exception as e:
            raise Refused(f"its shared part fails on 2 or 3 rows ({type(e).__name__}: {e})") from e
        depends = self._depends_on_inputs(graph)
        kinds: dict[fx.Node, str] = {}
        self.rows_per_example: list[int] = []

        def need(a: fx.Node) -> None:
            if a in kinds:
                return
            if a.op == "placeholder":  # a given input, or a defaulted parameter (its default, passed as it is)
                kinds[a] = "input" if self.placeholder_keys[self._ph_index(a)][0] != "default" else "const"
                return
            x2, x3 = v2[a], v3[a]
            if isinstance(x2, torch.Tensor) and isinstance(x3, torch.Tensor):
                if x2.dim() > 0 and x2.shape[1:] == x3.shape[1:] and x2.shape[0] * 3 == x3.shape[0] * 2 > 0:
                    kinds[a] = "rows"
                elif x2.shape == x3.shape and (not depends[a] or B < 3 or torch.equal(x2, x3)):
                    kinds[a] = "const"
                else:
                    raise Refused(
                        f"the shared value {a.name} has shape {tuple(x2.shape)} on 2 examples and "
                        f"{tuple(x3.shape)} on 3 (or a batch statistic): neither rows nor a constant"
                    )
                return
            kinds[a] = "recompute"  # not a tensor: computed again from the per-copy values
            for b in a.all_input_nodes:
                if labels[b] == SHARED:
                    need(b)

        out_node = next(n for n in graph.nodes if n.op == "output")
        for n in [*per_copy, out_node]:
            for a in n.all_input_nodes:
                if labels[a] == SHARED:
                    need(a)
        self._check_aliasing(model, graph, v2, kinds)
        boundary = [n for n in graph.nodes if kinds.get(n) in ("input", "rows", "const")]
        recompute = {n for n, k in kinds.items() if k == "recompute"}
        self.kinds = {n.name: k for n, k in kinds.items()}

        # prefix: the shared nodes -> the rows/const boundary values
        pg, penv = fx.Graph(), {}
        for n in graph.nodes:
            if n.op == "placeholder" or (n.op != "output" and labels[n] == SHARED):
                new = pg.node_copy(n, lambda a: penv[a])
                if n.op == "call_module" and isinstance(_fetch(model, n.target), CopyLayer):
                    new.target = next(k for k, f in frozen.items() if f.layer is _fetch(model, n.target))
                penv[n] = new
        computed = [n for n in boundary if kinds[n] != "input"]
        pg.output(tuple(penv[n] for n in computed))
        self.prefix = _graph_module(model, pg, frozen)
        self.boundaries: list[tuple[str, Any]] = []
        for n in boundary:
            if kinds[n] == "input":
                self.boundaries.append(("input", self.placeholder_keys[self._ph_index(n)][1]))
            else:
                i = computed.index(n)
                self.boundaries.append((kinds[n], i))
                if kinds[n] == "rows":
                    self.rows_per_example.append(v2[n].shape[0] // 2)
        self.probe_bytes = {  # bytes per example of each rows boundary (from the 2-example probe)
            computed.index(n): v2[n].numel() * v2[n].element_size() // 2 for n in boundary if kinds[n] == "rows"
        }
        self.probe_const = {computed.index(n): v2[n] for n in boundary if kinds[n] == "const"}

        # suffix: boundary placeholders, then the per-copy nodes and the recomputed shared values
        sg, senv = fx.Graph(), {}
        for i, n in enumerate(boundary):
            senv[n] = sg.placeholder(f"boundary{i}_{n.name}")
        for n in graph.nodes:
            if n.op == "output":
                sg.output(fx.node.map_arg(n.args[0], lambda a: senv[a]))
            elif labels.get(n) == PER_COPY or n in recompute:
                senv[n] = sg.node_copy(n, lambda a: senv[a])
        self.suffix = _graph_module(model, sg, {})
        self.num_shared, self.num_per_copy = len(shared), len(per_copy)
        self.signature = (self.prefix.code, tuple(self.boundaries))
        self.checked_record = False

    def _ph_index(self, node: fx.Node) -> int:
        return [n for n in self.graph.nodes if n.op == "placeholder"].index(node)

    @staticmethod
    def _depends_on_inputs(graph: fx.Graph) -> dict:
        dep: dict[fx.Node, bool] = {}
        for n in graph.nodes:
            dep[n] = n.op == "placeholder" or any(dep[a] for a in n.all_input_nodes)
        return dep

    def _check_aliasing(self, model, graph, values: dict, kinds: dict) -> None:
        """A shared in-place op must not write into the storage of a value the suffix reads (the
        repeat would copy it before or after the write, unlike the unsplit forward)."""
        ptrs = set()
        for n, k in kinds.items():
            v = values.get(n)
            if k in ("rows", "const") and isinstance(v, torch.Tensor) and v.numel():
                ptrs.add(v.untyped_storage().data_ptr())
        for n in graph.nodes:
            if n.op == "output" or self.labels_by_node[n] != SHARED:
                continue
            t = _inplace_target(n, model)
            v = values.get(t) if t is not None else None
            if isinstance(v, torch.Tensor) and v.numel() and v.untyped_storage().data_ptr() in ptrs:
                raise Refused(f"the in-place op {n.name} writes into a value that the per-copy part reads")

    # ---------------------------------------------------------------- running
    def call_args(self, inputs) -> list:
        """The placeholders' values in the forward's order (defaults for the parameters not given)."""
        out = []
        for kind, key in self.placeholder_keys:
            if kind == "default":
                out.append(key)
            else:
                out.append(inputs[key])
        return out

    def forward_repeated(self, inputs, K: int):
        """The model's output on ``repeat_for_models(inputs, K)`` (K*B adapter-major rows): the
        prefix once on the B rows, the boundaries repeated K times, the suffix on K*B rows."""
        vals = self.prefix(*self.call_args(inputs))
        args = []
        for kind, key in self.boundaries:
            if kind == "input":
                args.append(_repeat_rows(inputs[key], K))
            elif kind == "rows":
                args.append(_repeat_rows(vals[key], K))
            else:
                args.append(vals[key])
        return self.suffix(*args)


# ------------------------------------------------------------------------------------------ the cache
_SPLITS: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def mode_signature(model: nn.Module) -> tuple:
    """What the traced graph depends on besides the model's code: every module's training flag,
    patched forwards (modes.copy_modes), the copy norms' BatchNorm mode, disabled copy layers."""
    return tuple(
        (
            m.training,
            "forward" in m.__dict__,
            getattr(m, "batchnorm", None) if isinstance(m, MultiCopyNorm) else None,
            getattr(m, "disabled", None) if isinstance(m, CopyLayer) else None,
        )
        for m in model.modules()
    )


def get_split(model: nn.Module, inputs) -> Optional[Split]:
    """The :class:`Split` of ``model`` in its current modes for inputs of this structure, built on
    first use and cached (None, with the reason logged at INFO once, when the model cannot be split)."""
    if not ENABLED:
        return None
    structure = tuple(sorted(inputs)) if isinstance(inputs, dict) else len(inputs)
    key = (mode_signature(model), structure)
    per_model = _SPLITS.setdefault(model, {})
    if key not in per_model:
        try:
            per_model[key] = Split(model, inputs)
            s = per_model[key]
            logger.debug(
                "shared prefix of %s: %d shared / %d per-copy nodes, boundaries %s",
                type(model).__name__,
                s.num_shared,
                s.num_per_copy,
                s.boundaries,
            )
        except Refused as e:
            per_model[key] = None
            _log_once(
                logging.INFO, (type(model).__name__, str(e)), "shared prefix off for %s: %s", type(model).__name__, e
            )
    return per_model[key]


def _disable(model: nn.Module, split: Split, why: str) -> None:
    for k, v in _SPLITS.get(model, {}).items():
        if v is split:
            _SPLITS[model][k] = None
    logger.warning("shared prefix of %s disabled: %s; running the unsplit forward", type(model).__name__, why)


def outputs_match(got: torch.Tensor, ref: torch.Tensor) -> bool:
    """The safety net's comparison: same shape and dtype, ``allclose(got, ref, rtol, atol * scale)``
    with rtol 1e-4, atol 1e-5 for float32/float64 (1e-2 both for half types), scale = max(1, max|ref|)."""
    if not isinstance(got, torch.Tensor) or got.shape != ref.shape or got.dtype != ref.dtype:
        return False
    if not ref.is_floating_point():
        return torch.equal(got, ref)
    tol = 1e-2 if ref.dtype in (torch.float16, torch.bfloat16) else None
    rtol, atol = (tol, tol) if tol else (1e-4, 1e-5)
    scale = max(1.0, float(ref.detach().abs().max())) if ref.numel() else 1.0
    return bool(torch.allclose(got.detach(), ref.detach(), rtol=rtol, atol=atol * scale, equal_nan=True))


class _RNG:
    """The global random state of the CPU and of the device of a tensor (saved, restored)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.dev_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.dev_state, self.device)


def _device_of(inputs) -> torch.device:
    values = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    return next(v for v in values if isinstance(v, torch.Tensor)).device


def _rows(inputs, idx: torch.Tensor):
    """The rows ``idx`` of every input tensor (tuple or dict inputs)."""

    def take(t):
        return t[idx.to(t.device)] if isinstance(t, torch.Tensor) and t.dim() > 0 else t

    return {k: take(v) for k, v in inputs.items()} if isinstance(inputs, dict) else tuple(take(v) for v in inputs)


CHECK_EXAMPLES = 4  # examples (per copy) on which the safety net compares split and unsplit forwards


def repeated_forward(
    model: nn.Module,
    inputs,
    K: int,
    *,
    reference: Callable[[Any], torch.Tensor],
    pick: Callable[[Any, int], torch.Tensor],
) -> torch.Tensor:
    """The outputs ``pick(model(*repeat_for_models(inputs, K)), K*B)`` [K*B, ...] (recording), with
    the shared prefix computed once on the B rows when the model splits; ``reference(inputs)`` (the
    unsplit forward of the repeated ``inputs``, returning the picked tensor) otherwise. Before its
    first use a split is checked against ``reference`` on the block's first ``CHECK_EXAMPLES``
    examples (:func:`outputs_match`, same random state); a mismatch disables it (warning)."""
    split = get_split(model, inputs)
    if split is None:
        return reference(inputs)
    B = _input_count(inputs)
    if not split.checked_record:
        m = min(B, CHECK_EXAMPLES)
        sub = _rows(inputs, torch.arange(m))
        rng = _RNG(_device_of(inputs))
        with expected_rows(K * m):  # the check's own batch
            ref = reference(sub)
            rng.restore()
            try:
                got, why = pick(split.forward_repeated(sub, K), K * m), "its outputs differ from the unsplit forward's"
            except Exception as e:  # a split that fails runs unsplit
                got, why = None, f"{type(e).__name__}: {e}"
        rng.restore()
        if got is None or not outputs_match(got, ref):
            _disable(model, split, why)
            return reference(inputs)
        split.checked_record = True
    return pick(split.forward_repeated(inputs, K), K * B)


# ---------------------------------------------------------------------------------------- training
DEFAULT_CACHE_BYTES = 1 << 30
_BLOCK_BYTES = 16 << 20  # shared values per block while the cache is filled


class TrainingPrefix:
    """The shared boundary values of every training example, cached once, gathered per step.

    ``forward(inputs, flat_idx, reference=, pick=)`` returns the outputs of the K*b adapter-major
    rows whose example indices are ``flat_idx`` [K*b] (``inputs``: those rows' inputs): the "rows"
    boundaries gathered from the cache [N, ...], the inputs as they are, the suffix on top.

    First call: the safety net compares the split with ``reference`` on the first
    ``CHECK_EXAMPLES`` rows of every copy (no grad, same random state; a mismatch turns the cache
    off with a warning), timing both forwards of that sub-batch; the cache stays in use when the
    split one was faster (or ``require_faster`` is False), else every call returns
    ``reference(inputs)``. The decision costs the check's two small forwards only: a full unsplit
    step to time would cost, on a CNN whose copies differ only in the head, a quarter of the
    chunk's training (bench/results/roofline.md, CNN section).
    """

    def __init__(
        self,
        model: nn.Module,
        split: Split,
        cache: list,
        consts: dict,
        num_copies: int,
        require_faster: bool = True,
    ):
        self.model, self.split, self.cache, self.consts = model, split, cache, consts
        self.K, self.require_faster = int(num_copies), require_faster
        self.state = "check"  # "check" -> "on" | "off"
        self.times: dict[str, float] = {}

    def _split_forward(self, inputs, flat_idx: torch.Tensor):
        args, r = [], 0
        for kind, key in self.split.boundaries:
            if kind == "input":
                args.append(inputs[key])
            elif kind == "rows":
                c = self.cache[r]
                # index_select on dim 0: a contiguous copy of whole rows, several times faster on CPU
                # than advanced indexing (which goes through the generic index kernel)
                args.append(c.index_select(0, flat_idx.reshape(-1).to(c.device)))
                r += 1
            else:
                args.append(self.consts[key])
        return self.split.suffix(*args)

    def _check(self, inputs, flat_idx, reference, pick) -> Optional[str]:
        """None when the split matches ``reference`` on the first rows of every copy, else why not;
        ``self.times`` gets both forwards' seconds on that sub-batch ("unsplit", "split")."""
        b = flat_idx.numel() // self.K
        m = min(b, CHECK_EXAMPLES)
        sel = (torch.arange(self.K)[:, None] * b + torch.arange(m)).reshape(-1)
        sub, sub_idx = _rows(inputs, sel), flat_idx.reshape(-1)[sel]
        rng = _RNG(_device_of(inputs))
        with torch.no_grad(), expected_rows(self.K * m):
            ref = self._timed("unsplit", sub, lambda: reference(sub))
            rng.restore()
            try:
                got = self._timed("split", sub, lambda: pick(self._split_forward(sub, sub_idx), self.K * m))
            except Exception as e:  # a split that fails runs unsplit
                rng.restore()
                return f"{type(e).__name__}: {e}"
        rng.restore()  # the step itself draws what the unsplit step would
        return None if outputs_match(got, ref) else "its outputs differ from the unsplit forward's"

    def _timed(self, key: str, inputs, run):
        _sync(inputs)
        t0 = time.perf_counter()
        out = run()
        _sync(inputs)
        self.times[key] = time.perf_counter() - t0
        return out

    def forward(self, inputs, flat_idx: torch.Tensor, *, reference, pick) -> torch.Tensor:
        rows = flat_idx.numel()
        if self.state == "on":
            return pick(self._split_forward(inputs, flat_idx), rows)
        if self.state == "off":
            return reference(inputs)
        why = self._check(inputs, flat_idx, reference, pick)  # state "check": the first call
        if why is not None:
            self.state = "off"
            logger.warning(
                "shared prefix (training cache) of %s disabled: %s; running the unsplit forward",
                type(self.model).__name__,
                why,
            )
            return reference(inputs)
        faster = self.times["split"] < self.times["unsplit"]
        self.state = "on" if faster or not self.require_faster else "off"
        if not faster:
            _log_once(
                logging.INFO,
                ("slower", type(self.model).__name__),
                "shared prefix (training cache) of %s %s: not faster (%.4f s vs %.4f s unsplit on the check's rows)",
                type(self.model).__name__,
                "kept (require_faster=False)" if self.state == "on" else "off",
                self.times["split"],
                self.times["unsplit"],
            )
        if self.state == "on":
            return pick(self._split_forward(inputs, flat_idx), rows)
        return reference(inputs)


def _sync(inputs) -> None:
    d = _device_of(inputs)
    if d.type == "cuda":
        torch.cuda.synchronize(d)


def training_prefix(
    model: nn.Module,
    num_copies: int,
    num_examples: int,
    take: Callable[[torch.Tensor], Any],
    *,
    budget_bytes: int = DEFAULT_CACHE_BYTES,
    store: Optional[dict] = None,
    store_key: Any = None,
    require_faster: bool = True,
) -> Optional[TrainingPrefix]:
    """A :class:`TrainingPrefix` for ``model`` (``num_copies`` copies) in its current (training) modes over a training set
    of ``num_examples`` examples, ``take(idx)`` giving the inputs of the examples ``idx`` on the
    model's device; None (reason logged at INFO once) when the model does not split, a "rows"
    boundary has more than one row per example, or the cache would exceed ``budget_bytes``.
    ``store`` (a dict the caller keeps) with ``store_key`` (identifying the training set) reuses the
    cache of an earlier call with the same split signature (e.g. the next chunk of copies).
    ``require_faster=False`` keeps the cache in use after the first step's check even when the
    check's split forward did not measure faster (benchmarks, tests)."""
    n = int(num_examples)
    first = take(torch.arange(min(n, 3)))
    split = get_split(model, first)
    if split is None:
        return None
    name = type(model).__name__
    if any(c != 1 for c in split.rows_per_example):
        _log_once(
            logging.INFO,
            ("rows", name),
            "shared prefix (training cache) off for %s: a shared value has several rows per example",
            name,
        )
        return None
    per_example = sum(split.probe_bytes.values())
    if n * per_example > budget_bytes:
        _log_once(
            logging.INFO,
            ("budget", name, budget_bytes),
            "shared prefix (training cache) off for %s: %d bytes over the budget of %d (recording still shares)",
            name,
            n * per_example,
            budget_bytes,
        )
        return None
    key = (store_key, split.signature, mode_signature(model))
    if store is not None and store.get("key") == key:
        return TrainingPrefix(model, split, store["cache"], store["consts"], num_copies, require_faster)
    rows_keys = [key_ for kind, key_ in split.boundaries if kind == "rows"]
    cache, consts = [], {}
    block = max(1, min(n, _BLOCK_BYTES // max(1, per_example)))
    with torch.no_grad():
        for j0 in range(0, n, block):
            idx = torch.arange(j0, min(n, j0 + block))
            vals = split.prefix(*split.call_args(take(idx)))
            if j0 == 0:
                for k in rows_keys:
                    v = vals[k]
                    t = torch.empty((n, *v.shape[1:]), dtype=v.dtype, device=v.device)
                    if t.is_floating_point():
                        t.fill_(float("nan"))  # rows never written show up as NaN, not as stale memory
                    cache.append(t)
                consts = {key_: vals[key_] for kind, key_ in split.boundaries if kind == "const"}
            for t, k in zip(cache, rows_keys):
                t[j0 : j0 + len(idx)] = vals[k]
    if store is not None:
        store.clear()
        store.update(key=key, cache=cache, consts=consts)
    return TrainingPrefix(model, split, cache, consts, num_copies, require_faster)


__all__ = [
    "ENABLED",
    "Split",
    "Refused",
    "TrainingPrefix",
    "get_split",
    "repeated_forward",
    "training_prefix",
    "outputs_match",
    "mode_signature",
]
