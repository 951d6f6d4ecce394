"""Compile-only probe (no GPU needed): can Triton's Gluon dialect (triton.experimental.gluon, Triton 3.6) build for
sm_90 the shape the int4 128-row corner needs (docs/kern34.md's profile, docs/kern35.md)? A producer warp
(warp_specialize) fills shared memory with x's tile and arrives on an mbarrier; the default warpgroup unpacks 4-bit
codes straight into wgmma's register operand layout (DotOperandLayout: no shared-memory round trip for the weights)
and runs warpgroup_mma. Prints the SASS opcodes that show each piece: HGMMA, SYNCS (mbarrier), USETMAXREG (the
partitions' register split), LDSM (0: the weights never pass through shared memory). Not a kernel of lowbit's.

    PYTHONPATH=src python benchmarks/gluon_probe.py
"""
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, warpgroup_mma,
                                                             warpgroup_mma_wait)
from triton.experimental.gluon._runtime import GluonASTSource
from triton.tools.disasm import get_sass

from sass_stats import _opcodes

BM, BN, BK = 64, 128, 64


@gluon.jit
def producer(x_ptr, x_smem, bar, BN: gl.constexpr, BK: gl.constexpr):
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [1, 1], [1, 0])
    rows = gl.arange(0, BN, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, BK, layout=gl.SliceLayout(0, layout))
    x = gl.load(x_ptr + rows[:, None] * BK + cols[None, :])
    x_smem.store(x)
    fence_async_shared()
    mbarrier.arrive(bar, count=1)


@gluon.jit
def consumer(w_ptr, y_ptr, x_smem, bar, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    rows = gl.arange(0, BM, layout=gl.SliceLayout(1, a_layout))
    cols = gl.arange(0, BK, layout=gl.SliceLayout(0, a_layout))
    words = gl.load(w_ptr + rows[:, None] * (BK // 8) + (cols // 8)[None, :])  # each weight's word
    w = ((words >> ((cols % 8) * 4)[None, :]) & 15).to(gl.bfloat16)
    mbarrier.wait(bar, 0)
    acc = gl.zeros([BM, BN], gl.float32, layout=mma)
    acc = warpgroup_mma(w, x_smem.permute((1, 0)), acc)
    acc = warpgroup_mma_wait(0, deps=[acc])
    r = gl.arange(0, BM, layout=gl.SliceLayout(1, mma))
    c = gl.arange(0, BN, layout=gl.SliceLayout(0, mma))
    gl.store(y_ptr + r[:, None] * BN + c[None, :], acc)


@gluon.jit
def kernel(x_ptr, w_ptr, y_ptr, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr):
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [BN, BK], smem_layout)
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    gl.warp_specialize([(consumer, (w_ptr, y_ptr, x_smem, bar, BM, BN, BK)), (producer, (x_ptr, x_smem, bar, BN, BK))],
                       [1], [40])


def main() -> None:
    """Compile `kernel` for sm_90 and print its SASS opcode counts."""
    sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "y_ptr": "*fp32", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"}
    src = GluonASTSource(kernel, sig, {"BM": BM, "BN": BN, "BK": BK})
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    sass = get_sass(c.asm["cubin"])
    ops = _opcodes(sass.splitlines())
    shown = ("HGMMA", "LDSM", "STS", "LDG", "SYNCS", "USETMAXREG")
    print(len(sass.splitlines()), "SASS lines", {k: ops[k] for k in shown})


if __name__ == "__main__":
    main()
