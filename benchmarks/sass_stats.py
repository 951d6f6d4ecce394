"""Compile a matrix-vector kernel for sm_90 here, no GPU needed: registers, spills, shared memory, SASS mix
and instructions per weight in the K loop (the longest backward branch's body over the weights one thread
handles per round).

    PYTHONPATH=src python benchmarks/sass_stats.py fourbit '{}' '{"LOOKUP": "gather"}' '{"STAGES": 3}'
    PYTHONPATH=src python benchmarks/sass_stats.py gemv '{"PREFETCH": 2}' '{"STAGES": 3}' '{"BITS": 3}'
    PYTHONPATH=src python benchmarks/sass_stats.py cuda_mma '{}' '{"TILES": 4, "KS": 256}'
    PYTHONPATH=src python benchmarks/sass_stats.py mm_bytes '{"num_stages": 3}' '{"num_stages": 3, "TILE": 16}'
    PYTHONPATH=src python benchmarks/sass_stats.py mm_tc '{"num_stages": 3}' '{"num_stages": 3, "SUB16": true}'
    PYTHONPATH=src python benchmarks/sass_stats.py attention '{"num_warps": 8}' '{"SPLIT": 4, "CHUNK": 64}'
    PYTHONPATH=src python benchmarks/sass_stats.py dequant_int '{}' '{"BITS": 3}' '{"BITS": 8, "SIGNED8": true}'
    PYTHONPATH=src python benchmarks/sass_stats.py dequant_fourbit '{}' '{"DOUBLE": false}'

Each JSON object overrides the kernel's constexprs (num_warps too; gemv derives its unit shape from BITS).
Uses Triton's bundled ptxas and cuobjdump; 4096 inputs in whole tiles (EVEN), K split in 4, bf16 inputs
(fourbit: NF4, blocksize 64, double quantization; mm_bytes: the tensor-core kernel for 2-, 4- and 8-bit codes as
int8 weight-only at 16 rows, TILE 16 for tile order; mm_tc: _mm_tc's 128-row tile for int4 group 128, K split in
2; attention: triton_attention's decode kernel, Llama-3-8B's heads over a 256-position cache, per_weight per K or V
entry; dequant_int and dequant_fourbit: triton_dequant's kernels, int4 group 128 and NF4 as above, one 64 x 128 tile
a program, no loop, so per_weight is 0).
cuda_mma compiles kernels/cuda_mma.cu (4096 x 14336, 1 row, bf16, group 128 unless overridden) with the
NVRTC of the `nvidia-cuda-nvrtc` wheel (pip install nvidia-cuda-nvrtc==13.0.88; PTX lowered to 8.7 for
Triton's ptxas); it has no K loop, so per_weight counts the whole kernel over the weights a thread reads.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.tools.disasm import get_sass, path_to_cuobjdump

from lowbit.kernels.nvrtc import programmatic_ptx

POINTER = "*bf16"


def _gemv_spec():
    from lowbit.kernels.triton_gemv import _gemv

    names = ["x_ptr", "w_ptr", "scale_ptr", "zero_ptr", "bias_ptr", "y_ptr", "part_ptr", "count_ptr", "N", "K",
             "wpr", "n_groups", "G", "stride_x", "stride_y"]
    types = [POINTER, "*i32", "*fp16", "*fp16", "*fp16", POINTER, "*fp32", "*i32"] + ["i32"] * 7
    const = {"K_TILES": 32, "BITS": 4, "BN": 128, "SPLIT_K": 4, "HAS_ZERO": True, "HAS_BIAS": False,
             "SIGNED8": False, "EVEN": True, "ASM": True, "FIXUP": True, "FENCE": True, "XMODE": 2, "PREFETCH": 1,
             "STAGES": 0}
    return _gemv, names, types, const, _gemv_unit


def _gemv_unit(const: dict) -> int:
    """Fills the unit shape that BITS implies (UC codes in UW words, BU units a 128-input tile; as
    int_group_gemv does), unless given; returns the weights a round of the K loop covers."""
    from lowbit.kernels.triton_int import unit_shape

    uc, uw = unit_shape(const["BITS"])
    const.setdefault("UC", uc)
    const.setdefault("UW", uw)
    const.setdefault("BU", 128 // const["UC"])
    return const["BN"] * const["BU"] * const["UC"]


def _fourbit_spec():
    from lowbit.kernels.triton_fourbit import _fourbit_gemv

    names = ["x_ptr", "w_ptr", "absmax_ptr", "dq_scale_ptr", "dq_mean_ptr", "table_ptr", "bias_ptr", "y_ptr",
             "part_ptr", "count_ptr", "N", "K", "WPR", "stride_x", "stride_y"]
    types = [POINTER, "*i32", "*i8", "*fp16", "*fp32", "*fp32", POINTER, POINTER, "*fp32", "*i32"] + ["i32"] * 5
    const = {"B": 64, "K_TILES": 128, "NBLK": 1, "WPB": 4, "BN": 256, "SPLIT_K": 4, "DOUBLE": True,  # nf4, B 64, dq
             "HAS_BIAS": False, "EVEN": True, "FIXUP": True, "FENCE": True, "LOOKUP": "prmt", "ASM": True, "X64": True,
             "STAGES": 0}
    return _fourbit_gemv, names, types, const, lambda c: c["BN"] * c["NBLK"] * c["WPB"] * 8


def _mm_bytes_spec():
    from lowbit.kernels.triton_int import _mm_bytes

    names = ["x_ptr", "w_ptr", "scale_ptr", "zero_ptr", "bias_ptr", "y_ptr", "part_ptr", "count_ptr", "M", "N", "K",
             "row_bytes", "n_groups", "G", "stride_x", "stride_y"]
    types = [POINTER, "*u8", POINTER, POINTER, POINTER, POINTER, "*fp32", "*i32"] + ["i32"] * 8
    const = {"K_TILES": 32, "BITS": 8, "BM": 16, "BN": 64, "BK": 128, "SPLIT_K": 4, "PER_TILE": True,  # int8, 16 rows
             "HAS_ZERO": False, "HAS_BIAS": False, "SIGNED8": True, "OFFSET": 0, "DEQUANT": False, "EVEN": True,
             "FIXUP": True, "FENCE": True, "ASM": True, "SCALE_AFTER": False, "TILE": 0}
    return _mm_bytes, names, types, const, lambda c: c["BN"] * c["BK"]


def _mm_tc_spec():
    from lowbit.kernels.triton_int import _mm_tc

    names = ["x_ptr", "w_ptr", "scale_ptr", "zero_ptr", "bias_ptr", "y_ptr", "part_ptr", "count_ptr", "M", "N", "K",
             "wpr", "n_groups", "G", "stride_x", "stride_y"]
    types = [POINTER, "*i32", "*fp16", "*fp16", POINTER, POINTER, "*fp32", "*i32"] + ["i32"] * 8
    const = {"K_TILES": 32, "BITS": 4, "UC": 8, "UW": 1, "BM": 128, "BN": 64, "BU": 16, "SPLIT_K": 2,  # int4, 128 rows
             "PER_TILE": True, "HAS_ZERO": True, "HAS_BIAS": False, "SIGNED8": False, "OFFSET": 128, "ASM": True,
             "DEQUANT": True, "EVEN": True, "FIXUP": True, "FENCE": True, "TILE": 0}
    return _mm_tc, names, types, const, lambda c: c["BN"] * c["BU"] * c["UC"]


def _attention_spec():
    from lowbit.kernels.triton_attention import _decode_attention

    names = ["q_ptr", "k_ptr", "v_ptr", "k_cache", "v_cache", "cos_ptr", "sin_ptr", "pos_ptr", "o_ptr", "part_ptr",
             "count_ptr", "stride_q", "stride_k", "stride_v", "stride_o", "sm_scale"]
    types = [POINTER] * 7 + ["*i64", POINTER, "*fp32", "*i32"] + ["i32"] * 4 + ["fp32"]
    const = {"T": 256, "KV": 8, "GROUP": 4, "GP": 16, "D": 128, "BLOCK_N": 64, "SPLIT": 1, "CHUNK": 256,  # Llama-3-8B
             "FENCE": True, "PDL": True}
    return _decode_attention, names, types, const, lambda c: 2 * c["BLOCK_N"] * c["D"]  # K and V entries a round


def _dequant_int_spec():
    from lowbit.kernels.triton_dequant import _dequant_int

    names = ["w_ptr", "scale_ptr", "zero_ptr", "out_ptr", "N", "K", "wpr", "n_groups", "G"]
    types = ["*i32", "*fp16", "*fp16", POINTER] + ["i32"] * 5
    const = {"BITS": 4, "BN": 64, "PER_TILE": True, "HAS_ZERO": True, "SIGNED8": False, "OFFSET": 128,  # int4 g128
             "ASM": True, "EVEN": True, "TILE": 0}
    return _dequant_int, names, types, const, _dequant_unit


def _dequant_unit(const: dict) -> int:
    """_gemv_unit's unit shape (128 inputs a tile, as int_group_dequantize), ASM kept to unsigned 4-bit codes as
    there; returns a program's weights (the kernel has no loop)."""
    from lowbit.kernels.triton_int import nibble_asm

    const["ASM"] = const["ASM"] and nibble_asm(const["BITS"], const["SIGNED8"])
    return _gemv_unit(const)


def _dequant_fourbit_spec():
    from lowbit.kernels.triton_dequant import _dequant_fourbit

    names = ["w_ptr", "absmax_ptr", "dq_scale_ptr", "dq_mean_ptr", "table_ptr", "out_ptr", "N", "K", "WPR", "B"]
    types = ["*i32", "*i8", "*fp16", "*fp32", "*fp32", POINTER] + ["i32"] * 4
    const = {"NBLK": 2, "WPB": 8, "BN": 64, "DOUBLE": True, "EVEN": True, "TILE": 0}  # nf4, blocks of 64, dq
    return _dequant_fourbit, names, types, const, lambda c: c["BN"] * c["NBLK"] * c["WPB"] * 8


KERNELS = {"gemv": _gemv_spec, "fourbit": _fourbit_spec, "mm_bytes": _mm_bytes_spec, "mm_tc": _mm_tc_spec,
           "attention": _attention_spec, "dequant_int": _dequant_int_spec, "dequant_fourbit": _dequant_fourbit_spec}


def _loop_body(sass: str) -> list[str]:
    """Instruction lines of the longest loop: from a label to the branch back to it."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\w+):\s*$", line))}
    best: list[str] = []
    for i, line in enumerate(lines):
        m = re.search(r"BRA (\w+);", line)
        if m and labels.get(m.group(1), i) < i:
            body = [ln for ln in lines[labels[m.group(1)] + 1:i + 1] if "\t" in ln]
            best = max(best, body, key=len)
    return best


def _opcodes(lines: list[str]) -> collections.Counter:
    return collections.Counter(m.group(1).split(".")[0] for ln in lines
                               if (m := re.search(r"\t(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", ln)))


def compile_stats(kernel: str, overrides: dict) -> dict:
    fn, names, types, const, weights_per_round = KERNELS[kernel]()
    num_warps, num_stages = overrides.pop("num_warps", 4), overrides.pop("num_stages", 1)
    const |= overrides
    per_thread = weights_per_round(const) / (32 * num_warps)  # (and the gemv's unit shape filled in)
    sig = dict(zip(names, types)) | {k: "constexpr" for k in const}
    attrs = {(i,): [["tt.divisibility", 16]] for i, (name, kind) in enumerate(zip(names, types))
             if name not in ("G", "B") and kind != "fp32"}
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    sass = get_sass(compiled.asm["cubin"])
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([path_to_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    loop = _loop_body(sass)
    ops = _opcodes(loop)
    return {"registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "programmatic": programmatic_ptx(compiled.asm["ptx"]),
            "stack": int(re.search(r"STACK:(\d+)", usage).group(1)), "shared": compiled.metadata.shared,
            "instructions": sum(_opcodes(sass.splitlines()).values()), "loop": len(loop),
            "per_weight": round(len(loop) / per_thread, 2), "loop_mix": dict(ops.most_common(14)),
            "global_loads": _global_loads(sass)}


def _global_loads(sass: str) -> dict[str, int]:
    """Global loads and global-to-shared copies by opcode and width (LDG.E.128, LDGSTS.E.64, ...)."""
    return dict(collections.Counter(m.group(1) for ln in sass.splitlines()
                                    if (m := re.search(r"\t(?:@!?U?P\w+\s+)?(LDGSTS[A-Z0-9_.]*|LDG(?!DEPBAR)[A-Z0-9_.]*)", ln))))


def cuda_mma_stats(overrides: dict) -> dict:
    from lowbit.kernels.cuda_mma import sm90_offline, specialization

    rows, cols, out = overrides.pop("rows", 1), overrides.pop("cols", 4096), overrides.pop("out", 14336)
    bits = overrides.pop("BITS", 4)
    group = overrides.pop("G", 128 if bits in (3, 4) else cols)
    cfg = specialization(bits, rows, cols, out, group, 132, has_zero=bits in (3, 4), signed8=bits == 8,
                         config=overrides)
    info, cubin = sm90_offline(cfg)
    ops = _opcodes(get_sass(cubin).splitlines())
    per_thread = cfg["TILES"] * 16 * cfg["KS"] / 32  # weights
    return {"config": cfg, "registers": int(re.search(r"Used (\d+) registers", info).group(1)),
            "spill_bytes": int(re.search(r"(\d+) bytes spill stores", info).group(1)),
            "instructions": sum(ops.values()), "per_weight": round(sum(ops.values()) / per_thread, 2),
            "mix": dict(ops.most_common(14))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kernel", choices=sorted(KERNELS) + ["cuda_mma"])
    parser.add_argument("overrides", nargs="*", default=["{}"], help="JSON objects of constexprs")
    args = parser.parse_args()
    stats = cuda_mma_stats if args.kernel == "cuda_mma" else lambda o: compile_stats(args.kernel, o)
    for spec in args.overrides:
        print(spec, json.dumps(stats(json.loads(spec))))


if __name__ == "__main__":
    main()
