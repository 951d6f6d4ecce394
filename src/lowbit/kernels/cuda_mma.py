"""The tensor-core kernel for few activation rows (cuda_mma.cu): group-wise 2-, 3-, 4- and 8-bit codes, int8
weight-only and NF4/FP4, compiled at first use with NVRTC.

The 1-row Triton kernel (triton_gemv) spends about four SASS instructions per int4 weight on CUDA cores,
which bounds it near 2x bf16 on an H100. This kernel feeds the codes to mma.sync instead (about 1.6 per
weight: a lop3 per pair of codes, a shift per two pairs, a tensor-core step per 256 weights of a warp) and
reads the canonical layouts (int_group's words, int8_rows' bytes as words) as they are, so there is no
second copy of the weights. The source and its design notes are in cuda_mma.cu.

nvrtc.py builds one specialization per (bits, dtype, launch shape, group size, zero) on first use. When it cannot
build, `_compile_failure` says why and the selector falls back to the Triton kernels with that reason.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from lowbit.formats.word_tiles import row_shaped, to_tiles
from lowbit.kernels import nvrtc
from lowbit.kernels.settled_weights import settled
from lowbit.kernels.split_counters import counters_for

SOURCE = Path(__file__).with_name("cuda_mma.cu")
MAX_ROWS = 16  # two 8-row activation fragments per mma k-step
FRAGMENT_ROWS = 8  # rows of one activation fragment (8 rows took 1.06-1.25x the 1-row time: kern11)
OUT_TILE = 16  # outputs per mma tile
BITS = (2, 3, 4, 8)
# int2 and int4 at 9-16 rows (short_slice_tiles): 128-input slices over 16 warps, one tile ahead, the tiles chosen
SHORT_SLICES = {"KS": 128, "WARPS": 16, "DEPTH": 1, "R8": 2, "SMEM_X": 0}
SHORT_SLICE_MAX_TILES = 8  # the warps' partial sums of 8 tiles of 16 rows take 128 KB of shared memory
WAVE_FILL = 0.9  # the least share of their waves' slots that the short-slice blocks must fill
SHORT_SLICE_MAX_WAVES = 2  # and the most waves they may make
MAX_CLUSTER = 8  # blocks a thread-block cluster may portably hold
CLUSTER_MAX_BLOCKS_PER_SM = 4  # clustered launches of more blocks than this a multiprocessor ran slower (kern28)
FEW_TILES = {"KS": 128, "WARPS": 32}  # one row, fewer tiles than multiprocessors: short slices, up to 32 warps
# __launch_bounds__(threads, 1): with no block count ptxas keeps a thread's registers low enough for blocks side by side
# that these shapes never run (one wave, or registers for one block a multiprocessor anyway); kern30
ONE_BLOCK = {"MIN_BLOCKS": 1}
# the most tiles a one-wave block of 2-, 3- and 4-bit codes takes (int8 and NF4: SHORT_SLICE_MAX_TILES); kern31
ONE_WAVE_MAX_TILES = {2: 6, 3: 8, 4: 6}
EARLY_START = {"on": os.environ.get("LOWBIT_EARLY_START", "0") == "1"}  # early_start's launches, opt-in (kern29-30)


def codes_per_word(bits: int) -> int:
    """Inputs of one of a thread's load units: a word's 32 / bits codes, or a 3-word unit's 32 3-bit codes."""
    return 32 if bits == 3 else 32 // bits


def unit_words(bits: int) -> int:
    """Words of one load unit: 3 for 3-bit codes, else 1."""
    return 3 if bits == 3 else 1


def words_per_thread(bits: int, in_features: int, group_size: int) -> int | None:
    """Words U a thread reads per row and chunk: the largest of 4, 2, 1 (3-bit codes: 1 unit of 3 words) whose
    chunk (4 threads x U words of codes_per_word inputs) divides in_features and the group size (a chunk lies in
    one group) or lies in a group that spans the row, or None."""
    chunk = 4 * codes_per_word(bits)
    fits = (lambda u: in_features % (chunk * u) == 0 and (group_size % (chunk * u) == 0 or group_size >= in_features))
    return next((u for u in ((1,) if bits == 3 else (4, 2, 1)) if fits(u)), None)


def shape_unsupported(bits: int, rows: int, in_features: int, out_features: int, group_size: int) -> str | None:
    """Why the kernel's bit width or shapes rule out a call, or None."""
    if bits not in BITS:
        return f"the tensor-core kernels take {', '.join(map(str, BITS))}-bit codes, not {bits}"
    if rows > MAX_ROWS:
        return f"more than {MAX_ROWS} rows"
    if out_features % OUT_TILE:
        return f"out_features ({out_features}) is not a multiple of {OUT_TILE}"
    if words_per_thread(bits, in_features, group_size) is None:
        chunk = 4 * codes_per_word(bits)
        return f"in_features ({in_features}) and group size ({group_size}) must be multiples of {chunk}"
    if group_size < in_features and group_size & (group_size - 1):
        return f"group size {group_size} is not a power of two (a K slice must hold whole groups or lie in one)"
    return None


def fourbit_unsupported(in_features: int, blocksize: int) -> str | None:
    """Why NF4/FP4's layout rules out the kernel (each row must hold whole absmax blocks), or None."""
    if blocksize <= 0 or in_features % blocksize:
        return f"rows must hold whole absmax blocks (in_features {in_features}, blocksize {blocksize})"
    return None


def choose_config(bits: int, rows: int, in_features: int, out_features: int, group_size: int, sms: int,
                  table: bool = False) -> dict:
    """Launch shape: U words per chunk, KS inputs per warp, WARPS per block, TILES of 16 outputs per block, DEPTH
    tiles loaded ahead, R8 8-row fragments, SMEM_X activations in shared memory; `table` for NF4/FP4 (LUT4).

    Each family below comes from H100 sweeps of the Llama-3-8B shapes (the rule picks the fastest shape of each or one
    within 3% of it; the numbers are in each helper and docs/kern11.md to docs/kern31.md), tried in this order:
    short slices at 9-16 rows (_short_slice_shape), FEW_TILES at one row on layers of fewer tiles than
    multiprocessors (_few_tiles_shape), one wave of 32-warp blocks at one row (_one_wave_shape, up to
    one_wave_max_tiles), then the register shape (_register_shape), which becomes the wide shape where it takes 4
    tiles at one row (and NF4 up to 8 rows; _wide_shape) or else takes its format's extras (_register_extras)."""
    words = words_per_thread(bits, in_features, group_size)
    short_tiles = short_slice_tiles(bits, rows, in_features, out_features, sms)
    if short_tiles:
        return _short_slice_shape(bits, in_features, out_features, words, short_tiles, sms, table)
    n_tiles = out_features // OUT_TILE
    slice_words = _slice_words(words, bits, FEW_TILES["KS"])
    short_slices = math.ceil(in_features / FEW_TILES["KS"])
    if rows == 1 and n_tiles < sms:
        return _few_tiles_shape(bits, slice_words, short_slices)
    one_wave_tiles = math.ceil(n_tiles / sms)
    if rows == 1 and short_slices <= FEW_TILES["WARPS"] and one_wave_tiles <= one_wave_max_tiles(bits, table):
        return _one_wave_shape(slice_words, short_slices, one_wave_tiles, table)
    shape = _register_shape(bits, rows, in_features, n_tiles, words, sms)
    blocks = launch_blocks(shape, in_features, out_features)
    ring = _ring(bits, rows, blocks >= sms)
    if shape["TILES"] == 4 and shape["R8"] == 1 and (table or rows == 1):
        return _wide_shape(shape, bits, rows, in_features, words, table) | ring
    return shape | _register_extras(bits, rows, table, ring, blocks > sms)


def _short_slice_shape(bits: int, in_features: int, out_features: int, words: int, tiles: int, sms: int,
                       table: bool) -> dict:
    """int2, int4 and NF4 in two row fragments (9-16 rows): SHORT_SLICES, 128-input slices over up to 16 warps, with
    the tiles short_slice_tiles gives (kern22-23). Where the two K blocks of an integer layer outnumber the
    multiprocessors, two blocks a multiprocessor (DEPTH 0, MIN_BLOCKS 2; 4096x14336 int4 at 16 rows 2.08-2.09x bf16
    against 1.87-1.89x, kern28; NF4 and 14336x4096's seven K blocks ran slower so; NF4 there keeps the build without
    a count, slower with ONE_BLOCK too: 4096x14336 at 9 / 16 rows 1.94 / 1.84x against 1.99 / 1.92x, kern31).
    Otherwise they build with ONE_BLOCK (kern30 run 3's sweeps: int4 at 16 rows 4096x1024 1.57x against 1.41x,
    14336x4096 1.83-1.84x against 1.77-1.78x; NF4 4096x1024 1.82-1.84x against 1.71-1.74x; kern31's: int2 at 16 rows
    14336x4096 2.20-2.23x against 2.10-2.11x, 4096x4096 2.42x against 2.37-2.39x, 4096x1024 1.75-1.78x against
    1.78-1.79x)."""
    shape = SHORT_SLICES | {"U": _slice_words(words, bits, SHORT_SLICES["KS"]),
                            "WARPS": _short_slice_warps(in_features), "TILES": tiles}
    two_a_sm = k_blocks(shape, in_features) == 2 and launch_blocks(shape, in_features, out_features) > sms
    if two_a_sm:
        return shape if table else shape | {"DEPTH": 0, "MIN_BLOCKS": 2}
    return shape | ONE_BLOCK


def _few_tiles_shape(bits: int, slice_words: int, short_slices: int) -> dict:
    """One row on a layer of fewer 16-output tiles than multiprocessors (4096x1024): one tile a block over up to 32
    warps of 128-input slices (FEW_TILES; kern28: int4 2.65x bf16 against 2.38x, NF4 2.33-2.39x against
    1.89-1.94x), int8 with its first tiles loaded early. ONE_BLOCK ran slower here (kern30 run 3: NF4 2.36-2.38x
    against 2.53-2.56x, int4 2.55-2.56x against 2.62-2.63x)."""
    shape = {"U": slice_words, "KS": FEW_TILES["KS"], "WARPS": min(FEW_TILES["WARPS"], short_slices), "TILES": 1,
             "DEPTH": 1, "R8": 1, "SMEM_X": 0}
    return shape | ({"EARLY": 1} if bits == 8 else {})


def one_wave_max_tiles(bits: int, table: bool) -> int:
    """The most tiles a block of the one-wave shape takes: SHORT_SLICE_MAX_TILES for int8 and NF4, else
    ONE_WAVE_MAX_TILES by bit width. kern31 (H100, kernel_bench through auto, x bf16, against the shapes the integer
    codes took before, in the same call): 4096x4096 (2 tiles) int4 3.10-3.12 against 2.68, int2 3.41 against
    3.16-3.17, int3 3.04-3.08 against 2.71-2.76 (sweep); 4096x6144 (3) int4 2.93 against 2.28, int3 3.07 against 2.48,
    int2 3.46 against 3.04; 4096x8192 / 4096x10240 / 4096x11008 (4-6) int4 3.00 / 2.91 / 3.13 against 2.45 / 2.67 /
    2.98, int2 3.44 / 3.61 / 3.66 against 2.69 / 3.00 / 3.42; 4096x14336 (7) int3 3.29 against 2.86, but int4 3.04
    against 3.07 and int2 3.72 against 3.88, so these two keep the wide shape above 6 tiles."""
    return SHORT_SLICE_MAX_TILES if table or bits == 8 else ONE_WAVE_MAX_TILES[bits]


def _one_wave_shape(slice_words: int, warps: int, tiles: int, table: bool) -> dict:
    """One row, on layers of at least as many tiles as multiprocessors whose K fits 32 warps of 128 inputs: one block
    a multiprocessor of ceil(tiles / SMs) tiles, up to one_wave_max_tiles, NF4 with L2_AHEAD above 2 tiles (kern28:
    4096x4096 int8 1.90-1.91x bf16 against 1.60x), built with ONE_BLOCK (kern30 run 3 through auto: NF4 4096x4096
    2.64x against 2.33x, int8 1.91x against 1.85x). The integer codes take it up to one_wave_max_tiles (kern31; kern28
    had timed int4 in it only on 4096x14336's 7 tiles, slower there)."""
    ahead = {"L2_AHEAD": 1} if table and tiles > 2 else {}
    return {"U": slice_words, "KS": FEW_TILES["KS"], "WARPS": warps, "TILES": tiles, "DEPTH": 0, "R8": 1,
            "SMEM_X": 1} | ahead | ONE_BLOCK


def _register_shape(bits: int, rows: int, in_features: int, n_tiles: int, words: int, sms: int) -> dict:
    """8 warps, one tile ahead, activations in registers; 256-input slices where K reaches 8192 or
    the output 4096 tiles (2- and 4-bit codes) or the rows take two fragments (their activations need twice the
    registers; 16 rows of shared fragments would overflow shared memory at 16 warps), else 512; 4 tiles a block where
    that still fills a wave of blocks, else 1 (kern11 run 1)."""
    frags = 1 if rows <= FRAGMENT_ROWS else 2
    long_k_or_n = bits < 8 and (in_features >= 8192 or n_tiles >= 4096)
    slice_k = max(256 if long_k_or_n or frags == 2 else 512, 4 * words * codes_per_word(bits))  # whole chunks
    slices = math.ceil(in_features / slice_k)
    warps = min(8, slices)
    k_split = math.ceil(slices / warps)
    tiles = 4 if math.ceil(n_tiles / 4) * k_split >= sms else 1
    return {"U": words, "KS": slice_k, "WARPS": warps, "TILES": tiles, "DEPTH": 1, "R8": frags, "SMEM_X": 0}


def _wide_shape(shape: dict, bits: int, rows: int, in_features: int, words: int, table: bool) -> dict:
    """The register shape's 4-tile blocks at one row (and NF4's up to 8 rows) as up to 16 warps of 256-input slices,
    nothing ahead, activations in shared memory (64 registers: 32 warps a multiprocessor instead of 8; int4
    1.06-1.12x faster, kern12; int2 1.09-1.15x, kern13; int8 too, kern22 runs 3-4; int4 at 8 rows kept the register
    shapes), as many warps as split K into equal blocks (14 for K = 14336: 16 left the last of 4 blocks half idle).
    Where K needs more than two such blocks, int4 and int8 at one row take up to 32 warps (28 for K = 14336: int4
    2.90-2.91x bf16 against 2.78-2.79x, kern22), built with ONE_BLOCK (int4 14336x4096 2.91-2.93x against
    2.88-2.89x, kern30 run 3). NF4 at one row prefetches each warp's next tile into L2 (14336x4096 2.46x against
    2.34x, kern28; the integer codes ran 3-16% slower with it). A two-tile ring for the 28-warp blocks was 2% faster
    in the kernel benchmark but slowed compiled decode (2.49x against 2.52x): it stays off."""
    slice_k = max(256, 4 * words * codes_per_word(bits))
    slices = math.ceil(in_features / slice_k)
    deep_k = math.ceil(slices / 16) > 2 and bits in (4, 8) and rows == 1 and not table
    warps = math.ceil(slices / math.ceil(slices / (32 if deep_k else 16)))  # every K block as busy
    ahead = {"L2_AHEAD": 1} if table and rows == 1 else {}
    return shape | {"KS": slice_k, "WARPS": warps, "DEPTH": 0, "SMEM_X": 1} | ahead | (ONE_BLOCK if deep_k else {})


def _register_extras(bits: int, rows: int, table: bool, ring: dict, blocks_outnumber_sms: bool) -> dict:
    """What the register shape adds by format at one row. 3-bit codes ask for two blocks a multiprocessor (148
    registers held one; 128 with 16 bytes spilled: 4096x4096 1.69x -> 2.15x bf16, kern14 run 4). int8 codes load
    their first tiles before the activations (EARLY: 1.01-1.08x faster, kern15 run 2), and so does NF4 where its
    blocks outnumber the multiprocessors, asking for two blocks a multiprocessor (192 registers left a second wave;
    the early loads bring it to 128 without spills: 4096x4096 1.76-1.81x -> 1.93-2.03x, runs 2-3). Early loads slowed
    int2, int3 and int4 on 12 of their 15 cells and NF4 on 4096x1024: there they stay off. 2- and 3-bit codes take
    _ring's shared-memory rings where it says so (kern17, kern19)."""
    if rows == 1 and bits == 3:
        return {"MIN_BLOCKS": 2} | ring
    if rows == 1 and bits == 8:
        return {"EARLY": 1}
    if ring:
        return ring
    if rows == 1 and table and blocks_outnumber_sms:
        return {"EARLY": 1, "MIN_BLOCKS": 2}
    return {}


def _slice_words(words: int, bits: int, slice_k: int) -> int:
    """Words U a thread reads per row and chunk in slices of slice_k inputs: at most `words`, and a chunk (4 U
    units) within the slice."""
    return min(words, slice_k // (4 * codes_per_word(bits)))


def short_slice_tiles(bits: int, rows: int, in_features: int, out_features: int, sms: int) -> int:
    """Tiles a block of int2 or int4 in two row fragments (9-16 rows) takes in the short-slice shape (SHORT_SLICES,
    one block a multiprocessor): the most, up to 8, whose blocks make at most two waves and fill them to WAVE_FILL,
    or 0 where no count does (the register shape then, and auto the Triton kernel). Fewer blocks of more tiles read the
    activations and sum the warps less often; waves left part empty idle the multiprocessors. At 9 / 12 / 16 rows
    (kern23 run 4, against the Triton tensor-core kernel in the same run): 4096x4096 (4 tiles, 128 blocks) 1.90 /
    1.96 / 1.91x bf16 against 1.55 / 1.63 / 1.57x; 4096x14336 (7 tiles, 256 blocks) 2.03 / 1.97 / 1.85x against
    1.56 / 1.59 / 1.57x (4 tiles, 448 blocks in 3.4 waves: 1.51x at 16 rows, run 3); 14336x4096 (7 tiles, 259
    blocks) 2.03 / 1.94 / 1.81x against 1.82 / 1.84 / 1.80x; 4096x1024 (1 tile, 128 blocks) 1.59 / 1.56 / 1.46x
    against 1.12 / 1.13 / 1.01x. 4096x128256's 2004 blocks of 8 tiles (16 waves) ran 1.99 / 1.95 / 1.82x against
    1.98 / 1.97 / 1.98x: many waves stay with the Triton kernel. int2 at 16 rows (the same tile counts, kern23 run
    5's sweep): 2.01 / 1.53 / 2.16 / 2.10x on 4096x4096 / 4096x1024 / 4096x14336 / 14336x4096 against the register
    shape's 1.39 / 1.32 / 1.44 / 1.56x (and the Triton kernel's 1.50 / 0.99 / 1.71 / 1.76x in run 1)."""
    if not short_slice_candidate(bits, rows) or in_features % SHORT_SLICES["KS"]:
        return 0
    n_tiles = out_features // OUT_TILE
    k_blocks = math.ceil(in_features / (SHORT_SLICES["KS"] * _short_slice_warps(in_features)))
    for tiles in range(SHORT_SLICE_MAX_TILES, 0, -1):
        blocks = math.ceil(n_tiles / tiles) * k_blocks
        waves = math.ceil(blocks / sms)
        if waves <= SHORT_SLICE_MAX_WAVES and blocks >= WAVE_FILL * waves * sms:
            return tiles
    return 0


def short_slice_candidate(bits: int, rows: int) -> bool:
    """Whether a call's bit width and rows are ones the short-slice shape serves (int2 and int4 in two row fragments),
    before its layer's shape and the device are looked at."""
    return bits in (2, 4) and FRAGMENT_ROWS < rows <= MAX_ROWS


def _short_slice_warps(in_features: int) -> int:
    return min(SHORT_SLICES["WARPS"], math.ceil(in_features / SHORT_SLICES["KS"]))


def _ring(bits: int, rows: int, full_wave: bool) -> dict:
    """The words through shared-memory rings of two tiles (ASYNC 2: cp.async, no registers for the tile ahead) for
    3-bit codes at one row (with two blocks a multiprocessor: 1.03-1.07x faster on the five shapes, kern17 run 3;
    1.03-1.11x in run 5) and in two row fragments (likewise, in tile order at 16 rows: 1.35-1.40x faster where
    blocks hold 4 tiles, 4096x14336 / 14336x4096 / 4096x128256 1.70 / 1.73 / 1.91x bf16 against 1.26 / 1.36 /
    1.37x, and 1.00-1.03x on 4096x4096 and 4096x1024, kern19 runs 1 and 8), and 2-bit codes at one row where the
    blocks fill a wave (1.03-1.13x, kern17 runs 1 and 3; 0.80x on 4096x1024's 64 blocks). int4, NF4 and int8 ran
    0.80-0.99x with them at one row and int4 0.87-0.97x at 8 rows (runs 1, 3); int4 at 16 rows 1.16-1.33x faster
    where blocks hold 4 tiles but behind the Triton tensor-core kernel that auto takes there on two of three shapes,
    0.90x on 4096x4096 (kern19 run 8)."""
    if bits == 3 and (rows == 1 or rows > FRAGMENT_ROWS):
        return {"ASYNC": 2, "MIN_BLOCKS": 2}
    if rows == 1 and bits == 2 and full_wave:
        return {"ASYNC": 2}
    return {}


def specialization(bits: int, rows: int, in_features: int, out_features: int, group_size: int, sms: int,
                   bf16: bool = True, has_zero: bool = True, signed8: bool = False, config: dict | None = None,
                   clusters: bool = False) -> dict:
    """The -D settings of one compiled kernel: choose_config's launch shape, the code format (BITS, G, HAS_ZERO,
    SIGNED8, LUT4, DQ) and the activations' type (BF16), then `config`'s changes to any of them; on a device with
    thread-block `clusters`, the cluster fix-up where cluster_fixup says so and `config` names no CLUSTER."""
    table = bool((config or {}).get("LUT4"))
    shape = choose_config(bits, rows, in_features, out_features, group_size, sms, table)
    code = {"BITS": bits, "BF16": int(bf16), "HAS_ZERO": int(has_zero), "G": group_size, "SIGNED8": int(signed8),
            "LUT4": 0, "DQ": 0}
    spec = shape | code | (config or {})
    if clusters and "CLUSTER" not in (config or {}):
        spec |= cluster_fixup(spec, in_features, out_features, sms)
    early = early_start(spec, rows, in_features)
    return spec | {key: value for key, value in early.items() if key not in (config or {})}


def k_blocks(spec: dict, in_features: int) -> int:
    """Blocks that share a launch's K (its grid's y): KS-input slices, WARPS of them a block."""
    return math.ceil(math.ceil(in_features / spec["KS"]) / spec["WARPS"])


def launch_blocks(spec: dict, in_features: int, out_features: int) -> int:
    """Blocks of a launch: groups of TILES output tiles times its K blocks."""
    return math.ceil(out_features // OUT_TILE / spec["TILES"]) * k_blocks(spec, in_features)


def cluster_fixup(spec: dict, in_features: int, out_features: int, sms: int) -> dict:
    """{"CLUSTER": 2} where a launch splits K in two blocks and makes at most CLUSTER_MAX_BLOCKS_PER_SM blocks a
    multiprocessor, else {}: the two blocks add up their sums through one cluster's shared memory instead of global
    partials and a counter. On an H100 (kern28 runs 1-2, against the global fix-up in the same run): int4 at 9 and 16
    rows 4096x4096 2.11-2.14x / 1.96-1.97x bf16 against 1.89-1.90x / 1.81-1.82x, 4096x14336 at 16 rows 1.87-1.89x
    against 1.82-1.84x (at 9 rows 2.00-2.03x against 2.03-2.04x), 4096x1024 at 9 rows 1.69-1.71x against 1.57-1.58x
    (at 16 rows 1.44x against 1.45-1.46x); int2 at 16 rows 4096x1024 1.61-1.63x against 1.41-1.42x, 4096x4096
    2.35-2.36x against 2.11-2.12x; NF4 at 16 rows 1.96-1.99x against 1.76-1.77x (4096x4096) and 1.87-1.90x against
    1.81-1.82x (4096x14336); int8 weight-only 1.07-1.12x against 1.03-1.07x; 3-bit 4096x14336 1.87-1.90x against
    1.70-1.71x; int4 and int8 at one row on 14336x4096 within 1.5%. 4096x128256 at 8 rows (4008 blocks) ran
    1.98-1.99x against 2.68-2.69x: pairs of blocks that must start together leave gaps over many waves; clusters of 4
    and 7 blocks ran 23-30% slower."""
    few_waves = launch_blocks(spec, in_features, out_features) <= CLUSTER_MAX_BLOCKS_PER_SM * sms
    return {"CLUSTER": 2} if k_blocks(spec, in_features) == 2 and few_waves else {}


def early_start(spec: dict, rows: int, in_features: int) -> dict:
    """With LOWBIT_EARLY_START=1 (off by default: it slows compiled decode, below), how far a one-row PDL launch
    overlaps the launches beside it: int4's one-tile blocks (the register shape, FEW_TILES) let the next launch start
    as they start (LAUNCH_NEXT 2, so its blocks prefetch and preload while this one streams) and load their words into
    registers before waiting for the launch ahead (PRELOAD, behind settled_weights' guard); NF4's wide shape preloads
    where it splits K (the preloaded tile takes 74 registers a thread in 4096x128256's unsplit 16-warp blocks: one
    block a multiprocessor instead of two).
    kern29 run 1's sweeps, x bf16 against kern28's launches in the same call: int4 4096x4096 3.56-3.58 against
    2.60-2.69 (LAUNCH_NEXT 2 alone 3.00-3.03, PRELOAD alone 2.37-2.39; that layer takes the one-wave shape since
    kern31, 3.10-3.15 without early start), 4096x1024 3.72-3.83 against 2.46-2.70; NF4
    14336x4096 2.68-2.69 against 2.53. Left out, as timed there: int4's 28-warp blocks (14336x4096: 2.91-2.94 with
    LAUNCH_NEXT 2, 2.70-2.74 with PRELOAD, against 2.91-2.92) and NF4's FEW_TILES (2.22-2.28 with either, against
    2.32-2.41). In compiled decode the launch ahead is a norm or attention kernel, not the same layer: int4 at batch 1
    ran 426.4-427.3 tokens/s with the rule against 437.4-437.7 without, 428.3-428.8 with PRELOAD alone and 436.6-437.2
    with LAUNCH_NEXT 2 alone (kern30 run 2, H100, two passes each); on an H200 473 against 490 (run 1)."""
    if not EARLY_START["on"] or rows != 1 or not spec.get("PDL") or spec.get("ASYNC"):
        return {}
    if spec["LUT4"]:
        wide_split = spec["TILES"] == 4 and spec["KS"] == 256 and k_blocks(spec, in_features) > 1
        return {"PRELOAD": 1} if wide_split else {}
    return {"LAUNCH_NEXT": 2, "PRELOAD": 1} if spec["BITS"] == 4 and spec["TILES"] == 1 else {}


def launch_mode(bits: int, table: bool, programmatic: bool) -> dict:
    """PDL (programmatic dependent launch, where nvrtc.programmatic allows it) and the tiles a block prefetches into
    L2 before it waits for the kernel ahead: one for 4-bit codes, none for the others (kern20 runs 2-5: int4 at one
    row 2.54 / 2.36 / 3.08 / 2.76 / 3.56x bf16 with one tile against 2.48 / 2.10 / 2.95 / 2.76 / 3.42 without and
    2.42 / 1.92 / 2.83 / 2.68 / 3.41 launched in line; int8 1.60 / 1.79 / 1.64 / 1.60 / 1.99 without against 1.47 /
    1.82 / 1.63 / 1.59 / 2.00 with; NF4 2.19 / 2.02 / 2.34 / 2.39 / 2.85 against 2.11 / 1.89 / 2.32 / 2.35 / 2.71; 2-
    and 3-bit codes even in the kernel benchmark and 2-3% slower in compiled decode with it). All of a block's tiles
    (4 on the larger shapes) ran slower still: 2.54 and 2.32 on 4096x14336 and 14336x4096."""
    if not programmatic:
        return {"PDL": 0}
    return {"PDL": 1, "PREFETCH": int(bits == 4 and not table)}


def tile_chunk(bits: int, in_features: int, out_features: int, group_size: int) -> int:
    """Words of a tile chunk (formats.word_tiles) that TILED launches read for a layer: a chunk's 4 U units a row
    (words_per_thread; 12 words for 3-bit codes), or 0 where the kernel does not take the shape."""
    if shape_unsupported(bits, 1, in_features, out_features, group_size):
        return 0
    return 4 * words_per_thread(bits, in_features, group_size) * unit_words(bits)


def tile_words(qweight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """qweight (out, in * bits / 32) int32 words in tile order (formats.word_tiles) with tile_chunk's chunks, the
    order TILED launches read (benchmarks and tests; a layer's own words: order_words)."""
    out, words = qweight.shape
    in_features = words // unit_words(bits) * codes_per_word(bits)
    return to_tiles(qweight, tile_chunk(bits, in_features, out, group_size))


def shared_bytes(spec: dict, rows: int) -> int:
    """Dynamic shared memory of a launch (cuda_mma.cu): the NF4/FP4 pair table (LUT4), the warps' fp32 results
    (red), their rings of ASYNC tiles' words, and with SMEM_X each warp's activation fragments of
    `rows` rows (XROW u32 a row: half its K slice and a bank-shifting pad)."""
    nvals = spec["TILES"] * 32 * 4 * spec["R8"]
    bits = spec["BITS"]
    xregs = codes_per_word(bits) // 2
    xrow = spec["KS"] // 2 + (4 * xregs if xregs <= 4 else 4)
    ring = spec.get("ASYNC", 0) * spec["KS"] * bits * OUT_TILE // 32  # u32: 16 outputs x KS inputs a tile
    lut = 256 * 32 * 4 if spec.get("LUT4") else 0  # the NF4/FP4 pair table, 32 copies
    return lut + 4 * spec["WARPS"] * (nvals + ring + (rows * xrow if spec.get("SMEM_X") else 0))


def _kernel(device_index: int, config: tuple):
    """The specialization of `config` (BITS, BF16, HAS_ZERO, G and the launch shape), compiled by NVRTC for the
    device's compute capability and loaded on that device, allowed the shared memory of its most rows."""
    spec = dict(config)
    return nvrtc.kernel(device_index, SOURCE, "lowbit_mma", config, shared_bytes(spec, FRAGMENT_ROWS * spec["R8"]))


def ptx_offline(spec: dict, ptx_version: str | None = None) -> str:
    """PTX for sm_90 of the specialization `spec` (its -D settings), built with no GPU (nvrtc.ptx_offline)."""
    return nvrtc.ptx_offline(SOURCE, spec, ptx_version)


def sm90_offline(spec: dict) -> tuple[str, bytes]:
    """(ptxas -v log, cubin) of the specialization `spec` for sm_90, built with no GPU (nvrtc.sm90_offline)."""
    return nvrtc.sm90_offline(SOURCE, spec)


def _compile_failure(device_index: int) -> str | None:
    """None when this device builds and loads the kernel (a default specialization), else why not. A plain
    function, so that torch.compile keeps it as a constant (below): Dynamo ignores an lru_cache wrapper and its
    mark, and would trace into the NVRTC build."""
    return _build_failure(device_index)


# torch.compile evaluates it once while tracing and keeps the answer (as triton_ops._platform_unavailable).
_compile_failure._dynamo_marked_constant = True


def _build_failure(device_index: int) -> str | None:
    return nvrtc.build_failure(device_index, SOURCE, _build_default)


def _build_default(device_index: int) -> None:
    _kernel(device_index, tuple(sorted(specialization(4, 1, 4096, 4096, 128, 1).items())))


def unavailable(device: torch.device, dtype: torch.dtype | None, bits: int | None, rows: int, in_features: int,
                out_features: int, group_size: int) -> str | None:
    """Why the kernel cannot run a call, or None."""
    shape_reason = shape_unsupported(bits or 0, rows, in_features, out_features, group_size)
    return nvrtc.unavailable(device, dtype, shape_reason, _compile_failure)


def mma_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
               bias: torch.Tensor | None, bits: int, group_size: int, signed8: bool = False,
               config: dict | None = None) -> torch.Tensor:
    """x (rows <= 16, in) fp16/bf16 @ dequant(qweight)^T + bias -> (rows, out) in x's dtype.

    qweight (out, in * bits / 32) int32 words of int_group codes (bits 2, 4 or 8), or those words in tile order
    (formats.int_group's tile_chunk: (out / 16, in * bits / (32 chunk), 16 chunk)), or with signed8 int8
    weight-only's codes seen as words (zero None, group_size = in); scale (and zero) (out, groups) fp16."""
    if scale.dtype != torch.float16 or (signed8 and (bits != 8 or zero is not None)):
        raise ValueError(f"the tensor-core kernels take fp16 qparams and signed 8-bit codes without zeros, not "
                         f"{scale.dtype}, {bits} bits, zero {zero is not None}")
    codes = {"HAS_ZERO": int(zero is not None), "SIGNED8": int(signed8)}
    words, chunk = row_shaped(qweight)
    if chunk:
        codes["TILED"] = _own_chunk(chunk, bits, x.shape[-1], words.shape[0], group_size)
    return _launch(x, words, scale, zero, bias, bits, group_size, scale.shape[1], codes, config)


def foreign_chunk(chunk: int, bits: int, in_features: int, out_features: int, group_size: int) -> str | None:
    """Why a tile-order layer's chunks are not the ones TILED launches read (a checkpoint tiled elsewhere), or None."""
    expected = tile_chunk(bits, in_features, out_features, group_size)
    if chunk != expected:
        return f"its words are in tile chunks of {chunk}, the kernel reads {expected}"
    return None


def _own_chunk(chunk: int, bits: int, in_features: int, out_features: int, group_size: int) -> int:
    """1 where a tile-order layer's chunks are the ones TILED launches read, else a ValueError naming the fix."""
    reason = foreign_chunk(chunk, bits, in_features, out_features, group_size)
    if reason:
        raise ValueError(f"{reason}: put the layer back in row order (order_words(0))")
    return 1


def fourbit_mma(x: torch.Tensor, qweight: torch.Tensor, absmax: torch.Tensor, absmax_scale: torch.Tensor | None,
                absmax_mean: torch.Tensor | None, table: torch.Tensor, blocksize: int, out_features: int,
                bias: torch.Tensor | None, config: dict | None = None) -> torch.Tensor:
    """NF4/FP4 (formats.nf4): x (rows <= 16, in) fp16/bf16 @ (table[code] * absmax)^T + bias -> (rows, out).

    qweight (out * in / 2,) uint8, two codes a byte (the first in the high nibble), or those bytes in tile order
    (formats.nf4's tile_chunk: (out / 16, in / (8 chunk), 64 chunk)); table (16,) fp32; absmax
    (out * in / blocksize,) fp32, or int8 with absmax_scale (fp16, one per 256 blocks) and absmax_mean (1,) fp32
    under double quantization. Each row must hold whole blocks (in_features % blocksize == 0)."""
    cols = x.shape[-1]
    reason = fourbit_unsupported(cols, blocksize)
    if reason is not None or table.dtype != torch.float32 or table.numel() != 16:
        raise ValueError(f"the tensor-core NF4/FP4 kernel: {reason or 'it takes a 16-entry fp32 table'}")
    words, chunk = row_shaped(qweight.view(torch.int32))  # eight codes a word, row or tile order
    words = words.view(out_features, cols // 8)
    dq = absmax_scale is not None
    codes = {"LUT4": 1, "DQ": int(dq), "HAS_ZERO": 0}
    if chunk:
        codes["TILED"] = _own_chunk(chunk, 4, cols, out_features, blocksize)
    return _launch(x, words, absmax, absmax_scale, bias, 4, blocksize, cols // blocksize, codes, config,
                   table=table, mean=absmax_mean if dq else None)


def _launch(x: torch.Tensor, words: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
            bias: torch.Tensor | None, bits: int, group_size: int, groups: int, codes: dict, config: dict | None,
            table: torch.Tensor | None = None, mean: torch.Tensor | None = None) -> torch.Tensor:
    """One launch of the specialization for `codes` (the code format's -D settings) and x's rows, K and N;
    `groups` qparams a row."""
    x = nvrtc.aligned_rows(x)
    rows, cols = x.shape
    out_features = words.shape[0]
    reason = shape_unsupported(bits, rows, cols, out_features, group_size)
    if reason is not None:
        raise ValueError(reason)
    device = x.device
    codes = codes | launch_mode(bits, bool(codes.get("LUT4")), nvrtc.programmatic(device.index))
    spec = specialization(bits, rows, cols, out_features, group_size, nvrtc.multiprocessors(device.index),
                          x.dtype == torch.bfloat16, config=codes | (config or {}),
                          clusters=nvrtc.clusters(device.index))
    if spec.get("PRELOAD") and not settled(words, scale, zero):  # first launch since a write: wait before loading
        spec["PRELOAD"] = 0
    if not (spec["KS"] % group_size == 0 or group_size % spec["KS"] == 0 or group_size >= cols):
        raise ValueError(f"K slice {spec['KS']} neither holds whole groups of {group_size} nor lies in one")
    shared = shared_bytes(spec, rows)
    kernel = _kernel(device.index, tuple(sorted(spec.items())))
    nvrtc.check_shared(device.index, shared, config, "use fewer WARPS or TILES, or SMEM_X 0", kernel.static_shared)
    grid_x = math.ceil(out_features // OUT_TILE / spec["TILES"])
    grid_y = k_blocks(spec, cols)
    cluster = spec.get("CLUSTER", 1)
    if cluster > 1:
        _check_cluster(device.index, cluster, grid_y)
    y = torch.empty((rows, out_features), dtype=x.dtype, device=device)
    if rows == 0:
        return y
    part, counters = y, None
    if grid_y > 1 and cluster == 1:
        part = torch.empty((grid_y, rows, out_features), dtype=torch.float32, device=device)
        counters = counters_for(device, grid_x)
    unread = part  # a valid pointer for the arguments a specialization does not read
    bias32 = bias.float().contiguous() if bias is not None else unread
    qparams = [t.contiguous() if t is not None else unread for t in (scale, zero)]
    args = [words.contiguous(), *qparams, x, bias32, y, part, counters if counters is not None else unread,
            rows, cols, out_features, groups, int(bias is not None), int(counters is not None),
            table if table is not None else unread, mean if mean is not None else unread]
    with torch.cuda.device(device):
        nvrtc.launch(kernel, (grid_x, grid_y, 1), (spec["WARPS"] * 32, 1, 1), args, shared, bool(spec["PDL"]))
    if grid_y > 1 and cluster == 1 and counters is None:  # no fix-up in the launch: add the partials here
        total = part.sum(0) + (bias.float() if bias is not None else 0)
        y = total.to(x.dtype)
    return y


def _check_cluster(device_index: int, cluster: int, k_split: int) -> None:
    """A ValueError naming the fix unless a CLUSTER launch can run: its clusters are the launch's K blocks (the
    kernel adds their sums up through one cluster's shared memory), at most the portable 8, on a Hopper GPU."""
    if cluster != k_split or cluster > MAX_CLUSTER:
        raise ValueError(f"CLUSTER {cluster} must equal the launch's K blocks ({k_split}) and be at most "
                         f"{MAX_CLUSTER}: change KS or WARPS, or drop CLUSTER")
    if not nvrtc.clusters(device_index):
        raise ValueError("CLUSTER needs thread-block clusters (compute capability 9.0): drop CLUSTER")


def int8_weight_mma(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                    config: dict | None = None) -> torch.Tensor:
    """W8A16 (formats.int8_rows): x (rows, in) @ (qweight (out, in) int8 * scale (out, 1))^T + bias; qweight in
    row or tile order."""
    words = qweight.contiguous().view(torch.int32)  # four codes per word, the first input in the low byte
    return mma_matmul(x, words, scale, None, bias, 8, x.shape[-1], signed8=True, config=config)
