"""hqq: half-quadratic quantization (Badri & Shaji, 2023), calibration-free, 1 to 8 bits.

The algorithm is core.hqq; this file turns its IntWeights into a module. Grouping along the input axis
(axis=1, the default) with fp16 qparams is the shared int_group format, run by `IntLinear` and the same
kernels as rtn/gptq/awq. Grouping along the output axis (axis=0) or 8-bit qparams (`quant_qparams`,
axis 1 only: scales and zeros round-to-nearest to 8 bits in blocks of 128 rows, counted exactly by
formats.int_group_meta) give an `HQQLinear`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.affine import IntWeights, quantize_affine, resolve_group_size
from lowbit.core.checks import check_bits, check_group_size
from lowbit.core.hqq import HQQSchedule, hqq_quantize
from lowbit.errors import LowbitError
from lowbit.formats.int_group_meta import QPARAM_NAMES, IntGroupMetaLayout, dequantize_qparam, quantize_qparam
from lowbit.methods.base import MethodConfig, register_method
from lowbit.modules.base import QuantizedLinear
from lowbit.modules.hqq_linear import HQQLinear
from lowbit.modules.int_linear import IntLinear


@register_method("hqq")
@dataclass(frozen=True, kw_only=True)
class HQQConfig(MethodConfig):
    bits: int = 4
    group_size: int = 64  # -1: one group per row (axis 1) or per column (axis 0)
    axis: int = 1  # 1: groups of consecutive inputs; 0: groups of consecutive outputs
    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iters: int = 20
    tol: float = 1e-3  # stop once a step lowers the weight error by less than this fraction (0: only when it rises)
    optimize_scale: bool = False
    round_zero: bool = True  # start from the integer-rounded min-max zero (the hqq package's 4-bit default)
    quant_qparams: bool = False  # store scales and zeros in 8 bits (axis 1 only)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.bits, 1, 8, "hqq")
        check_group_size(self.group_size)
        if self.axis not in (0, 1):
            raise LowbitError(f"hqq axis must be 0 (group outputs) or 1 (group inputs), got {self.axis!r}")
        if self.quant_qparams and self.axis != 1:
            raise LowbitError("hqq quant_qparams needs axis=1: 8-bit qparams are stored for input groups only")
        if not 0 < self.lp_norm <= 1:
            raise LowbitError(f"hqq lp_norm must be in (0, 1], got {self.lp_norm}")
        if self.beta <= 0 or self.kappa < 1 or self.iters < 1:
            raise LowbitError("hqq needs beta > 0, kappa >= 1 and iters >= 1")
        if not 0 <= self.tol < 1:
            raise LowbitError(f"hqq tol must be in [0, 1), got {self.tol}")

    def quantize_layer(self, weight: torch.Tensor, bias: torch.Tensor | None, stats=None) -> QuantizedLinear:
        w = weight if self.axis == 1 else weight.t().contiguous()  # (rows, cols), groups along cols
        schedule = HQQSchedule(self.lp_norm, self.beta, self.kappa, self.iters, self.tol)
        q = hqq_quantize(w, self.bits, self.group_size, schedule, self.optimize_scale, self.round_zero)
        if self.axis == 1 and not self.quant_qparams:
            return IntLinear.from_weights(q, bias)
        qparams8 = None
        if self.quant_qparams:
            qparams8 = {p: quantize_qparam(getattr(q, p)) for p in QPARAM_NAMES}
            scale, zero = (dequantize_qparam(**qparams8[p]) for p in QPARAM_NAMES)
            q = IntWeights(quantize_affine(w, scale, zero, q.bits, q.group_size), scale, zero, q.bits, q.group_size)
        return HQQLinear.from_weights(q, bias, self.axis, qparams8)

    def empty_layer(self, out_features: int, in_features: int, has_bias: bool = False) -> QuantizedLinear:
        if self.axis == 1 and not self.quant_qparams:
            return IntLinear.empty(out_features, in_features, self.bits, self.group_size, False, has_bias)
        grouped = in_features if self.axis == 1 else out_features
        group = resolve_group_size(self.group_size, grouped)
        layout = IntGroupMetaLayout(out_features, in_features, self.bits, group, self.axis, self.quant_qparams)
        return HQQLinear(layout, has_bias, device="meta")
