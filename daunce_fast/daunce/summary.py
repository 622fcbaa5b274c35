"""What a DAUNCE run perturbs: one row per wrapped module (docs/pipeline.md#summary).

Each row (a dict) has the copy layer's ``describe()`` fields

    name            the module's name in θ0 ("" = the whole model)
    type            the wrapped module's class name (e.g. "Conv2d")
    kind            "full", "lora r=<r>", "affine" (norm scale and shift), "fallback" (torch.func), ...
    params_per_copy adapter parameters of one copy
    bytes_per_copy  their memory (bytes) for one copy

plus ``params_total`` / ``bytes_total`` (times K, the run's number of models) and ``fallback``
(True where the slow generic torch.func path is used).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

COLUMNS = ("name", "type", "kind", "params_per_copy", "bytes_per_copy", "params_total", "bytes_total", "fallback")


def copy_rows(model: nn.Module) -> list[dict]:
    """``describe()`` of every copy layer attached to ``model``, in model order (a copy layer's
    own children are not listed: its base is part of it)."""
    from ..lora import copies

    out: list[dict] = []

    def visit(mod: nn.Module) -> None:
        if isinstance(mod, copies.CopyLayer):
            out.append(mod.describe())
            return
        for child in mod.children():
            visit(child)

    visit(model)
    return out


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # unreachable; keeps type checkers content


@dataclass
class PerturbationSummary:
    """The modules a run perturbs. ``rows``: list of dicts (module docstring); ``str()``: the table."""

    num_models: int
    rows: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, model: nn.Module, num_models: int) -> PerturbationSummary:
        rows = []
        for r in copy_rows(model):
            kind = str(r["kind"])
            rows.append(
                {
                    **{k: r[k] for k in ("name", "type", "kind", "params_per_copy", "bytes_per_copy")},
                    "params_total": int(r["params_per_copy"]) * int(num_models),
                    "bytes_total": int(r["bytes_per_copy"]) * int(num_models),
                    "fallback": kind.startswith("fallback"),
                }
            )
        return cls(int(num_models), rows)

    @property
    def params_per_copy(self) -> int:
        return sum(r["params_per_copy"] for r in self.rows)

    @property
    def bytes_per_copy(self) -> int:
        return sum(r["bytes_per_copy"] for r in self.rows)

    @property
    def fallback_modules(self) -> list[str]:
        return [r["name"] for r in self.rows if r["fallback"]]

    def to_dict(self) -> dict:
        return {
            "num_models": self.num_models,
            "params_per_copy": self.params_per_copy,
            "bytes_per_copy": self.bytes_per_copy,
            "params_total": self.params_per_copy * self.num_models,
            "bytes_total": self.bytes_per_copy * self.num_models,
            "fallback_modules": self.fallback_modules,
            "rows": self.rows,
        }

    def __str__(self) -> str:
        head = ("module", "type", "kind", "params/copy", "memory/copy", f"params x{self.num_models}", "memory")
        body = [
            (
                r["name"] or "(whole model)",
                r["type"],
                r["kind"] + (" (slow)" if r["fallback"] else ""),
                f"{r['params_per_copy']:,}",
                _size(r["bytes_per_copy"]),
                f"{r['params_total']:,}",
                _size(r["bytes_total"]),
            )
            for r in self.rows
        ]
        total = (
            "total",
            "",
            "",
            f"{self.params_per_copy:,}",
            _size(self.bytes_per_copy),
            f"{self.params_per_copy * self.num_models:,}",
            _size(self.bytes_per_copy * self.num_models),
        )
        table = [head, *body, total]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        right = {3, 4, 5, 6}
        lines = [
            "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in table
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.insert(len(lines) - 1, lines[1])
        out = [f"DAUNCE perturbs {len(self.rows)} module(s) in each of {self.num_models} copies:", *lines]
        if self.fallback_modules:
            out.append(f"slow generic (torch.func) path for: {', '.join(self.fallback_modules)}")
        return "\n".join(out)
