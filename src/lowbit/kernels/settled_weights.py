"""Whether a layer's weights are unchanged since its last launch: the guard of cuda_mma.cu's PRELOAD.

With PRELOAD a block loads its first tiles' codes and qparams before waiting for the kernel ahead in the stream
(programmatic dependent launch), as CUTLASS's weight-prefetch GEMM does where the weights are not produced by the
kernel before. That holds for a layer that already ran and that nothing wrote since: then no kernel between its last
launch and this one wrote them, the one just ahead included. A layer's first launch after its words were written
(loaded, repacked, copied into in place) waits first, as every launch did before PRELOAD.

Writes are seen through PyTorch's version counters (every in-place op bumps its tensor's, views share their base's),
a replaced tensor by its data pointer; the record is the words' storage's, and goes with it, so a new layer whose
storage takes a freed one's address starts unsettled. Inference tensors keep no counter: they never count as settled.
"""

from __future__ import annotations

import weakref

import torch

class StorageMemo(dict):
    """Values recorded against a tensor's storage and a state of it, each record dropped with its storage:
    id(storage) -> (weak reference, state, value)."""

    def lookup(self, tensor: torch.Tensor, state: tuple):
        """The value recorded for tensor's storage at `state`, or None."""
        storage = tensor.untyped_storage()
        seen = self.get(id(storage))
        return seen[2] if seen is not None and seen[0]() is storage and seen[1] == state else None

    def record(self, tensor: torch.Tensor, state: tuple, value) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        self[key] = (weakref.ref(storage, lambda _, key=key: self.pop(key, None)), state, value)


def version_state(*tensors: torch.Tensor | None) -> tuple | None:
    """(data pointer, version counter) of each tensor given, or None for an inference tensor (no counter)."""
    try:
        return tuple((t.data_ptr(), t._version) for t in tensors if t is not None)
    except RuntimeError:
        return None


_last_seen = StorageMemo()


def settled(words: torch.Tensor, *qparams: torch.Tensor | None) -> bool:
    """True when `words` (any view of the layer's codes) and `qparams` are the ones of this layer's last call,
    unwritten since; records them for the next call either way."""
    state = version_state(words, *qparams)
    if state is None:
        return False
    if _last_seen.lookup(words, state):
        return True
    _last_seen.record(words, state, True)
    return False
