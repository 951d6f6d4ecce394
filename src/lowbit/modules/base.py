"""What every quantized layer shares: buffers described by a layout, a JSON spec to rebuild it, byte counts."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from lowbit.formats.word_tiles import in_order
from lowbit.kernels.select import CallContext, Candidate, check_preference, select


class QuantizedLinear(nn.Module):
    """Base of the quantized replacements for nn.Linear (and GPT-2's Conv1D, transposed).

    Subclasses set `op` (the kernel op they call) and `layout_type` (the layout dataclass whose buffers
    __init__ registers and whose fields, with `bias`, make up `spec()` / `from_spec()`). All state is
    buffers, so `state_dict` is the packed checkpoint and meta-device construction is free.
    Subclasses also give `weight_args()` (the canonical buffers a kernel op takes) and `format_context()`.

    A kernel that needs its own layout gets it from `prepared()`: repacked once and held in a plain
    attribute (not a buffer, so never saved), counted by `kernel_cache_bytes()` and dropped when the
    module moves (`.to()`) or its buffers are replaced. Formats with a tile order (formats.word_tiles) instead put
    their one copy of the words in the order of the device they move to (`order_words_for`); the layout, and so
    the spec, records it.
    """

    op: ClassVar[str]
    layout_type: ClassVar[type]  # the layout dataclass (formats/) whose fields make up the spec
    kernel_preference: str = "auto"

    def __init__(self, layout: Any, has_bias: bool, device: torch.device | str | None = None):
        super().__init__()
        self.layout = layout
        self.in_features = layout.in_features
        self.out_features = layout.out_features
        for name, (shape, dtype) in layout.buffer_shapes().items():
            self.register_buffer(name, torch.empty(shape, dtype=dtype, device=device))
        bias = torch.empty(layout.out_features, device=device) if has_bias else None
        self.register_buffer("bias", bias)
        self._kernel_cache: dict[str, tuple[tuple[int, ...], Any]] = {}

    def spec(self) -> dict[str, Any]:
        """JSON constructor arguments: the layout's fields plus whether there is a bias."""
        return {**dataclasses.asdict(self.layout), "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: torch.device | str = "meta") -> "QuantizedLinear":
        """An empty module (on `device`) for the spec; a malformed spec raises KeyError or TypeError."""
        fields = {k: v for k, v in spec.items() if k != "bias"}
        return cls(cls.layout_type(**fields), spec["bias"], device)

    def weight_args(self) -> tuple:
        raise NotImplementedError

    def format_context(self) -> dict[str, Any]:
        """Format facts a kernel's capability check needs (bits, group_size); none by default."""
        return {}

    def cuda_tile_chunk(self) -> int:
        """Words of the tile chunks (formats.word_tiles) this layer's words take on CUDA; 0 keeps row order there."""
        return 0

    def order_words_for(self, device: torch.device) -> bool:
        """Put the packed words in the order `device`'s kernels read fastest: on CUDA cuda_tile_chunk's tile order,
        elsewhere row order (the CPU kernels read rows); formats without a tile order keep their one order. Returns
        whether the order changed."""
        if not hasattr(self.layout, "tile_chunk"):
            return False
        return self.order_words(self.cuda_tile_chunk() if device.type == "cuda" else 0)

    def order_words(self, chunk: int) -> bool:
        """Put qweight in tile order with chunks of `chunk` words (formats.word_tiles), or with 0 in row order, in
        place, for layouts with a `tile_chunk`; the layout, and so the spec a checkpoint records, says which.
        Returns whether the order changed."""
        if chunk == self.layout.tile_chunk:
            return False
        layout = dataclasses.replace(self.layout, tile_chunk=chunk)  # checks that the shape allows it
        self.qweight = self._in_layout_order(self.qweight, layout)
        self.layout = layout
        self._kernel_cache.clear()
        return True

    @staticmethod
    def _in_layout_order(packed: torch.Tensor, layout: Any) -> torch.Tensor:
        row_shape = dataclasses.replace(layout, tile_chunk=0).buffer_shapes()["qweight"][0]
        return in_order(packed, layout.out_features, row_shape, layout.tile_chunk)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A state dict's codes in either order load into the layer's order (a CPU save into a CUDA layer, say)."""
        packed = state_dict.get(prefix + "qweight")
        mine = getattr(self, "qweight", None)
        if (hasattr(self.layout, "tile_chunk") and packed is not None and mine is not None
                and packed.shape != mine.shape and packed.numel() == mine.numel()):
            state_dict[prefix + "qweight"] = self._in_layout_order(packed, self.layout)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def call_context(self, rows: int, device: torch.device, dtype: torch.dtype | None = None) -> CallContext:
        return CallContext(
            torch.device(device), rows, self.in_features, self.out_features, dtype, **self.format_context()
        )

    def kernel(self, x: torch.Tensor) -> Candidate:
        rows = x.numel() // x.shape[-1]
        return select(self.op, self.call_context(rows, x.device, x.dtype), self.kernel_preference)

    def run_kernel(self, flat: torch.Tensor, *settings: Any) -> torch.Tensor:
        """flat (rows, in) -> (rows, out) through the selected kernel; `settings` (e.g. LLM.int8's threshold)
        go between the weights and the bias: fn(x, *weights, *settings, bias)."""
        candidate = self.kernel(flat)
        if candidate.prepare is None:
            return candidate.fn(flat, *self.weight_args(), *settings, self.bias)
        return candidate.fn(flat, self.prepared(candidate.name, candidate.prepare, flat.device), *settings, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out) through `run_kernel` (subclasses with other call shapes override it)."""
        y = self.run_kernel(x.reshape(-1, self.in_features))
        return y.reshape(*x.shape[:-1], self.out_features)

    def prepared(self, name: str, prepare: Callable, device: torch.device) -> Any:
        """The canonical buffers repacked by `prepare`, computed once and cached under `name`.

        While torch.compile traces, a cached layout is taken as is (Dynamo cannot compare data pointers without
        a graph break): repack before compiling (`plan.prepare_kernels`, or one eager call)."""
        cached = self._kernel_cache.get(name)
        if cached is not None and torch.compiler.is_compiling():
            return cached[1]
        source = tuple(b.data_ptr() for b in self.weight_args() if isinstance(b, torch.Tensor))
        if cached is None or cached[0] != source:
            cached = (source, prepare(self.call_context(1, device), *self.weight_args()))
            self._kernel_cache[name] = cached
        return cached[1]

    def kernel_cache_bytes(self) -> int:
        """Bytes held by repacked kernel layouts beyond the canonical buffers (shared storage not counted)."""
        own = {b.untyped_storage().data_ptr() for b in self.buffers()}
        seen, total = set(), 0
        for _, packed in self._kernel_cache.values():
            for t in packed.tensors():
                ptr = t.untyped_storage().data_ptr()
                if ptr not in own and ptr not in seen:
                    seen.add(ptr)
                    total += t.untyped_storage().nbytes()
        return total

    def _apply(self, fn, recurse=True):
        """Moves and casts (`.to()`, `.cuda()`) as nn.Module does; the packed words then take the order of the device
        they are on (order_words_for)."""
        self._kernel_cache.clear()
        module = super()._apply(fn, recurse)
        buffer = next(self.buffers(recurse=False), None)
        if buffer is not None:
            self.order_words_for(buffer.device)
        return module

    def packed_bytes(self) -> int:
        """Bytes of the quantized weight and its qparams (bias excluded: it is not quantized)."""
        return self.layout.nbytes()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec().items())


def set_kernel_preference(model: nn.Module, preference: str) -> int:
    """Make every quantized layer of `model` ask the selector for `preference`; returns how many layers."""
    check_preference(preference)
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    for layer in layers:
        layer.kernel_preference = preference
    return len(layers)
