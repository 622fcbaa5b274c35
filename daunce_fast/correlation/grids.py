"""Launch grids over the test columns: CUDA (and so Triton) allow at most 65,535 blocks in grid y,
so a test set wider than 65,535 x block columns is launched in slices of columns, each slice a
grid of at most ``limit`` blocks (the kernels see a shifted column pointer and a smaller M).
Pure Python, so the slicing is tested without a GPU; csrc/cuda/corr_tile.cu does the same in C++.
"""

from __future__ import annotations

GRID_Y_LIMIT = 65535  # CUDA's maximum gridDim.y (and gridDim.z)


def launch_grids(M: int, block: int, limit: int = GRID_Y_LIMIT) -> list[tuple[int, int, int]]:
    """Slices ``(col0, col1, grid_y)`` covering test columns [0, M) in order: each slice holds at
    most ``limit * block`` columns and needs ``grid_y = ceil((col1 - col0) / block) <= limit``
    blocks. M = 0 gives no slice."""
    M, block, limit = int(M), int(block), int(limit)
    if M < 0 or block < 1 or limit < 1:
        raise ValueError(f"launch_grids needs M >= 0, block >= 1, limit >= 1; got M={M}, block={block}, limit={limit}")
    width = block * limit
    return [(c0, min(M, c0 + width), -(-(min(M, c0 + width) - c0) // block)) for c0 in range(0, M, width)]
