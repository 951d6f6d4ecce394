"""Tile order: packed words stored so that each load of the GPU tensor-core kernel reads consecutive bytes.

A layer's packed words, (out, words_per_row) in row order, become (out / 16, words_per_row / chunk, 16 * chunk) in
tile order: for each tile of 16 output rows and each chunk of `chunk` words along the row, the 16 rows' words of
that chunk, row after row. kernels/cuda_mma.cu reads a tile's chunk as two row halves of 8 rows, lane 4 g + t taking
the chunk's words t * chunk / 4 .. of row g, so one warp load covers 8 * chunk consecutive words instead of 8 pieces
of chunk / 2 words in 8 rows: on an H100 that halved the L2 requests of the same bytes and ran NF4 15-22% and int4
4-8% faster at one row on large layers (docs/kern17.md). Only the order changes: the words, their count and the
qparams are the row order's.
"""

from __future__ import annotations

import torch

TILE_ROWS = 16  # output rows of a tile (the mma's m16)


def tile_order_problem(out_features: int, words_per_row: int, chunk: int) -> str | None:
    """Why an (out_features, words_per_row) layer cannot be put in tile order with chunks of `chunk` words, or None."""
    if chunk <= 0:
        return f"a tile chunk of {chunk} words"
    if out_features % TILE_ROWS:
        return f"out_features ({out_features}) is not a multiple of {TILE_ROWS}"
    if words_per_row % chunk:
        return f"a row's {words_per_row} words are not whole chunks of {chunk}"
    return None


def tile_shape(out_features: int, words_per_row: int, chunk: int, per_word: int = 1) -> tuple[int, int, int]:
    """The tile-order shape of (out_features, words_per_row) words, counted in elements of which `per_word` make a
    4-byte word (4 for the byte-packed formats)."""
    return (out_features // TILE_ROWS, words_per_row // chunk, TILE_ROWS * chunk * per_word)


def check_layout_order(layout: str, out_features: int, in_features: int, words_per_row: int, chunk: int,
                       problem: str | None = None) -> None:
    """Raise a ValueError naming `layout` if a layer of its shape cannot hold tile order with chunks of `chunk`
    words (0: row order, always possible); `problem` is the format's own reason, if it has one."""
    if not chunk:
        return
    problem = problem or tile_order_problem(out_features, words_per_row, chunk)
    if problem:
        raise ValueError(f"{layout} layout {out_features}x{in_features} in tile order: {problem}")


def to_tiles(words: torch.Tensor, chunk: int) -> torch.Tensor:
    """(out, words_per_row) words in row order -> (out / 16, words_per_row / chunk, 16 * chunk) in tile order."""
    out, per_row = words.shape
    problem = tile_order_problem(out, per_row, chunk)
    if problem:
        raise ValueError(f"cannot put the words in tile order: {problem}")
    tiles = words.reshape(out // TILE_ROWS, TILE_ROWS, per_row // chunk, chunk).transpose(1, 2)
    return tiles.reshape(tile_shape(out, per_row, chunk)).contiguous()


def to_rows(tiles: torch.Tensor) -> torch.Tensor:
    """Inverse of to_tiles: (out / 16, words_per_row / chunk, 16 * chunk) -> (out, words_per_row) in row order."""
    n_tiles, n_chunks, block = tiles.shape
    chunk = block // TILE_ROWS
    rows = tiles.reshape(n_tiles, n_chunks, TILE_ROWS, chunk).transpose(1, 2)
    return rows.reshape(n_tiles * TILE_ROWS, n_chunks * chunk).contiguous()


def row_order(packed: torch.Tensor) -> torch.Tensor:
    """Packed words in either order -> row order: a tile-order tensor (3-D) as (out, per_row), others unchanged."""
    return to_rows(packed) if packed.dim() == 3 else packed


def in_order(packed: torch.Tensor, out_features: int, row_shape: tuple[int, ...], chunk: int) -> torch.Tensor:
    """Packed words of any dtype, in either order -> row order of shape `row_shape` (chunk 0) or tile order with
    chunks of `chunk` 4-byte words."""
    rows = row_order(packed)
    if not chunk:
        return rows.reshape(row_shape)
    return to_tiles(rows.reshape(out_features, -1), chunk * 4 // packed.element_size())


def row_shaped(words: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(words viewed as (out, words_per_row), tile chunk): a tile-order tensor keeps its memory order under the
    row-shaped view, which gives a kernel launch its sizes; chunk 0 for a row-order tensor, returned as it is."""
    if words.dim() != 3:
        return words, 0
    n_tiles, n_chunks, block = words.shape
    chunk = block // TILE_ROWS
    return words.view(n_tiles * TILE_ROWS, n_chunks * chunk), chunk
