"""Content fingerprints: streaming hashes of everything that determines a resumable output.

A resumable output (a score file, a workdir's loss store) is only valid for the inputs it was
computed from. ``ContentHash`` hashes those inputs in full (every byte of every array, with its
dtype and shape) in chunks, so a [K, N] matrix larger than RAM or a model on a GPU is hashed at
about the speed of the hash (blake2b, ~1 GB/s per core) without a second copy in memory.

    h = ContentHash("scores/v1")
    h.update_array(train)             # numpy, torch (any device, bfloat16 too), memmap, cupy
    h.update_json({"method": "pearson"})
    h.hexdigest()                     # 32 hex characters

Two inputs get the same digest only when they have the same dtype, shape and bytes (up to a
blake2b-128 collision). Torch imported lazily.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .dtypes import to_code

CHUNK_BYTES = 16 << 20  # one chunk of an array is copied (made contiguous / moved to the host) at a time


class ContentHash:
    """Streaming blake2b (16-byte digest) over tagged, typed pieces; order matters."""

    def __init__(self, tag: str = ""):
        self._h = hashlib.blake2b(digest_size=16, person=b"daunce_fast.fp")
        self.update_bytes(tag.encode())

    def update_bytes(self, b: bytes) -> ContentHash:
        self._h.update(len(b).to_bytes(8, "little"))
        self._h.update(b)
        return self

    def update_json(self, obj) -> ContentHash:
        """Hash ``obj`` by its canonical JSON text (sorted keys); obj must be JSON-serialisable."""
        return self.update_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())

    def update_array(self, x) -> ContentHash:
        """Hash dtype, shape and every element of ``x`` (row-major order, whatever its strides)."""
        if _is_torch(x):
            return self._update_torch(x)
        if type(x).__module__.split(".")[0] == "cupy":
            x = x.get()
        a = np.asarray(x)
        self._header(a.dtype, a.shape)
        if a.size == 0:
            return self
        rows = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
        step = max(1, CHUNK_BYTES // max(1, rows.shape[1] * a.itemsize))
        for i in range(0, rows.shape[0], step):
            self._h.update(np.ascontiguousarray(rows[i : i + step]).view(np.uint8).data)
        return self

    def _header(self, dtype, shape) -> None:
        # the same dtype code for numpy and torch, so a matrix hashes alike whichever library holds it
        try:
            code = to_code(dtype)
        except TypeError:
            code = str(dtype)
        self.update_bytes(f"{code}|{tuple(int(s) for s in shape)}".encode())

    def _update_torch(self, t) -> ContentHash:
        import torch

        t = t.detach()
        self._header(t.dtype, t.shape)
        if t.numel() == 0:
            return self
        flat = t.reshape(-1)
        if flat.dtype.is_complex:
            flat = torch.view_as_real(flat).reshape(-1)
        if flat.dtype == torch.bool:
            flat = flat.to(torch.uint8)
        elif flat.element_size() in (1, 2, 4, 8) and flat.dtype not in (
            torch.uint8,
            torch.int8,
            torch.int16,
            torch.int32,
            torch.int64,
        ):
            flat = flat.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()])
        step = max(1, CHUNK_BYTES // flat.element_size())
        for i in range(0, flat.numel(), step):
            self._h.update(flat[i : i + step].cpu().contiguous().numpy().view(np.uint8).data)
        return self

    def update_module(self, model) -> ContentHash:
        """Hash a torch module's parameters and buffers (names, dtypes, shapes, values), in state_dict order."""
        for name, value in model.state_dict(keep_vars=False).items():
            self.update_bytes(name.encode())
            if _is_torch(value):
                self._update_torch(value)
            else:
                self.update_json(repr(value))
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def array_digest(x, tag: str = "") -> str:
    """``ContentHash(tag).update_array(x).hexdigest()``."""
    return ContentHash(tag).update_array(x).hexdigest()


def module_digest(model, tag: str = "") -> str:
    """Digest of a torch module's parameters and buffers (θ0's identity for a workdir)."""
    return ContentHash(tag).update_module(model).hexdigest()


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")
