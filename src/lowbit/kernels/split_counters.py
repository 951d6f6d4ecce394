"""Per-device arrival counters for split-K launches that add their partials up in the same launch.

The last program (or block) of an output tile to finish sums the K slices' partials and resets the tile's
counter, so the counters stay zero between launches and nothing has to clear them. They assume that the
launches sharing them run one after another (one stream). Used by the Triton kernels (triton_splitk) and
the CUDA tensor-core kernel (cuda_mma); this module imports neither Triton nor a compiler.
"""

from __future__ import annotations

import torch

N_COUNTERS = 16384  # output tiles a fixed-up call may have
_counters: dict[torch.device, torch.Tensor] = {}


def counters_for(device: torch.device, tiles: int) -> torch.Tensor | None:
    """The device's zeroed counters, or None when `tiles` exceed them or they would be allocated inside a
    CUDA graph capture (the caller then sums the partials another way)."""
    if tiles > N_COUNTERS:
        return None
    if device not in _counters:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        _counters[device] = torch.zeros(N_COUNTERS, dtype=torch.int32, device=device)
    return _counters[device]
