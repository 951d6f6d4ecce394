"""lowbit's C++ CPU ops (kernels/int8_rows.cpp), compiled on first use and cached on disk.

`torch.utils.cpp_extension.load` builds the source with the system's C++ compiler and ninja into
torch's extension folder (TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions), under a name
that hashes the source and the torch version: a later process, or another checkout with the same
source, loads the cached library without compiling. The ops register under torch.ops.lowbit_cpu.

When the build cannot happen (no compiler, no ninja, a compile error, or LOWBIT_NO_CPP=1), `build_failure`
returns the reason, logs it once, and the selector skips the C++ candidates with that reason: the eager
paths run instead, under their own names.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("int8_rows.cpp")
CFLAGS = ["-O3", "-ffp-contract=off"]  # no fused multiply-add: the same float rounding as the eager path


def _library_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + " ".join(CFLAGS).encode())
    return f"lowbit_cpu_{digest.hexdigest()[:12]}"


def _build() -> None:
    from torch.utils import cpp_extension

    cpp_extension.load(_library_name(), [str(SOURCE)], extra_cflags=CFLAGS, is_python_module=False, verbose=False)
    torch.library.register_fake("lowbit_cpu::int8_rows_linear")(
        lambda x, qweight, w_scale, bias, dtype: x.new_empty((x.shape[0], qweight.shape[0]), dtype=dtype)
    )


@functools.cache
def build_failure() -> str | None:
    """None once the C++ ops are registered (built now or loaded from the cache), else why they are not."""
    if os.environ.get("LOWBIT_NO_CPP", "") not in ("", "0"):
        reason = "LOWBIT_NO_CPP is set"
    elif shutil.which(os.environ.get("CXX", "c++")) is None:
        reason = f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH"
    else:
        try:
            _build()
            return None
        except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as err:
            reason = f"building {SOURCE.name} failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err!r}"
    log.warning("lowbit's C++ CPU ops are off (%s): LLM.int8 on the CPU runs the eager int8_cpu path", reason)
    return reason
