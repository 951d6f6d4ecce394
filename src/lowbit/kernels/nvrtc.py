"""Building lowbit's CUDA C++ kernels (cuda_mma.cu, cuda_aqlm.cu) with NVRTC: at first use on the GPU, and offline
for sm_90 with no GPU (tests, benchmarks/sass_stats.py).

`torch.cuda._compile_kernel` (NVRTC, shipped with CUDA builds of PyTorch; no nvcc or C++ compiler) builds one
specialization per set of -D settings, about a second each, and launches it on the current stream, so CUDA
graphs capture it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from pathlib import Path
from typing import Callable

import torch

COMMON = Path(__file__).with_name("cuda_common.cuh")  # compiled ahead of each kernel's source
_PROGRAMMATIC = {"on": os.environ.get("LOWBIT_PDL", "1") != "0"}  # LOWBIT_PDL=0: every launch waits in line
CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # cuda.h's CUlaunchAttributeID


def full_source(source: Path) -> str:
    """The text NVRTC compiles for `source`: the shared definitions, then the kernel."""
    return COMMON.read_text() + "\n" + source.read_text()


@functools.lru_cache(maxsize=None)
def kernel(device_index: int, source: Path, entry: str, defines: tuple, shared: int):
    """`entry` of `source` with the -D settings `defines` ((name, value) pairs), compiled for the device's compute
    capability and loaded on it, allowed `shared` bytes of dynamic shared memory (capped at the device's limit)."""
    options = ["-std=c++17"] + [f"-D{k}={int(v)}" for k, v in defines]
    with torch.cuda.device(device_index):
        built = torch.cuda._compile_kernel(full_source(source), entry, nvcc_options=options)
        built.static_shared = static_shared(built)
        most = min(shared, shared_limit(device_index) - built.static_shared)
        if most >= 48 * 1024:  # above the default limit: opt in (up to the device's 227 KB on an H100)
            built.set_shared_memory_config(most)
        return built


def static_shared(built) -> int:
    """Bytes of static shared memory (__shared__ arrays) of a kernel built by torch.cuda._compile_kernel: a block's
    dynamic shared memory may take the device's limit less these."""
    from torch.cuda._utils import _check_cuda, _get_gpu_runtime_library

    value = ctypes.c_int()
    cu_func_attribute_shared_size_bytes = 1
    _check_cuda(_get_gpu_runtime_library().cuFuncGetAttribute(ctypes.byref(value), cu_func_attribute_shared_size_bytes,
                                                              built.func))
    return value.value


@functools.lru_cache(maxsize=None)
def build_failure(device_index: int, source: Path, build: Callable[[int], object]) -> str | None:
    """None when the device builds and loads `source` (`build(device_index)` compiles a default specialization),
    else why not."""
    if torch.cuda.get_device_capability(device_index) < (8, 0):
        return "mma.sync with bf16 needs compute capability 8.0 or newer"
    if not hasattr(torch.cuda, "_compile_kernel"):
        return f"torch {torch.__version__} has no torch.cuda._compile_kernel (NVRTC)"
    try:
        build(device_index)
    except (OSError, RuntimeError, AttributeError) as err:
        lines = str(err).strip().splitlines()
        return f"NVRTC could not build {source.name}: {lines[-1] if lines else repr(err)}"
    return None


def unavailable(device: torch.device, dtype: torch.dtype | None, shape_reason: str | None,
                compile_failure: Callable[[int], str | None]) -> str | None:
    """Why a kernel built here cannot run a call, or None: the activations are not fp16/bf16, its layout rules the
    call out (`shape_reason`), the device is not CUDA, or `compile_failure(device_index)` says it does not build."""
    if dtype not in (torch.float16, torch.bfloat16):
        return f"the tensor-core kernels take fp16/bf16 activations, not {dtype}"
    if shape_reason is not None:
        return shape_reason
    if device.type != "cuda":
        return f"they run on CUDA devices, not {device.type}"
    return compile_failure(device.index if device.index is not None else torch.cuda.current_device())


def aligned_rows(x: torch.Tensor) -> torch.Tensor:
    """x contiguous and 16-byte aligned (the kernels read activations 16 bytes at a time)."""
    x = x.contiguous()
    return x.clone() if x.data_ptr() % 16 else x


def programmatic(device_index: int) -> bool:
    """Whether launches on the device use programmatic dependent launch (PDL, cuda_common.cuh): compute capability
    9.0 or newer, unless LOWBIT_PDL=0 or serialized_launches() says otherwise."""
    return _PROGRAMMATIC["on"] and _capability(device_index) >= (9, 0)


def clusters(device_index: int) -> bool:
    """Whether the device runs thread-block clusters (compute capability 9.0 or newer)."""
    return _capability(device_index) >= (9, 0)


@functools.lru_cache(maxsize=None)
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


@contextlib.contextmanager
def serialized_launches():
    """Within it the kernels launch without PDL (benchmarks time both)."""
    before = _PROGRAMMATIC["on"]
    _PROGRAMMATIC["on"] = False
    try:
        yield
    finally:
        _PROGRAMMATIC["on"] = before


class _AttributeValue(ctypes.Union):  # CUlaunchAttributeValue: 64 bytes, 8-byte aligned
    _fields_ = [("pad", ctypes.c_char * 64), ("flag", ctypes.c_int), ("align", ctypes.c_uint64)]


class _Attribute(ctypes.Structure):  # CUlaunchAttribute
    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_char * 4), ("value", _AttributeValue)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_Attribute)), ("num_attrs", ctypes.c_uint)]


def launch(kernel, grid: tuple, block: tuple, args: list, shared: int, pdl: bool) -> None:
    """Launch a kernel built by `kernel()` on the current stream and device. A kernel built with PDL (`pdl`: -DPDL=1)
    goes through cuLaunchKernelEx with the programmatic-serialization attribute, so that it may start while the
    kernel ahead finishes, wherever `programmatic` allows it; elsewhere it launches in line (its griddepcontrol
    instructions then return at once)."""
    if not (pdl and programmatic(torch.cuda.current_device())):
        kernel(grid=grid, block=block, args=args, shared_mem=shared)
        return
    from torch.cuda._utils import _check_cuda, _get_gpu_runtime_library

    values = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int(a) for a in args]
    params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in values])
    attribute = _Attribute(id=CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
    attribute.value.flag = 1
    config = _LaunchConfig((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), shared,
                           ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), ctypes.pointer(attribute), 1)
    _check_cuda(_get_gpu_runtime_library().cuLaunchKernelEx(ctypes.byref(config), kernel.func, params, None))


def check_shared(device_index: int, shared: int, config: dict | None, fix: str, static: int = 0) -> None:
    """Raise a ValueError naming `fix` when a launch's `shared` bytes (dynamic, with `static` bytes of __shared__
    arrays beside them) exceed what the device allows a block."""
    if shared + static > shared_limit(device_index):
        raise ValueError(f"launch shape {config} needs {shared + static} bytes of shared memory a block, the device "
                         f"allows {shared_limit(device_index)}: {fix}")


@functools.lru_cache(maxsize=None)
def shared_limit(device_index: int) -> int:
    """Shared memory a block may opt in to on the device (bytes)."""
    return torch.cuda.get_device_properties(device_index).shared_memory_per_block_optin


@functools.lru_cache(maxsize=None)
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def ptx_offline(source: Path, defines: dict, ptx_version: str | None = None) -> str:
    """PTX for sm_90 of `source` with the -D settings `defines`, built with no GPU by the NVRTC of the
    nvidia-cuda-nvrtc wheel. ptx_version rewrites the header for an older ptxas (Triton 3.6's reads up to 8.7).
    Raises ImportError without the wheel, RuntimeError with the log."""
    import glob
    import re

    import nvidia  # the wheel's namespace package

    libs = [d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", "lib"))
            if glob.glob(d + "/libnvrtc.so*")]
    if not libs:
        raise ImportError("no libnvrtc in the nvidia packages: pip install nvidia-cuda-nvrtc")
    ctypes.CDLL(glob.glob(libs[0] + "/libnvrtc-builtins.so*")[0])  # NVRTC finds it by name when it compiles
    lib = ctypes.CDLL(sorted(glob.glob(libs[0] + "/libnvrtc.so*"))[0])
    prog = ctypes.c_void_p()
    lib.nvrtcCreateProgram(ctypes.byref(prog), full_source(source).encode(), source.name.encode(), 0, None, None)
    options = [b"--gpu-architecture=compute_90", b"-std=c++17"] + [f"-D{k}={int(v)}".encode()
                                                                   for k, v in defines.items()]
    failed = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if failed:
        raise RuntimeError(log.value.decode())
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    text = ptx.value.decode()
    return re.sub(r"\.version \d+\.\d+", f".version {ptx_version}", text) if ptx_version else text


def programmatic_ptx(ptx: str) -> dict[str, int | None]:
    """PDL in a kernel's PTX (NVRTC's or Triton's): griddepcontrol waits and launches, the memory accesses other than
    parameter reads ahead of the first wait (none where the kernel waits before it reads) and the launches after it
    (None for both without a wait)."""
    import re

    before, wait, after = ptx.partition("griddepcontrol.wait")
    accesses = len(re.findall(r"\b(?:ld\.(?!param)|st\.|cp\.async|atom\.|red\.)", before)) if wait else None
    return {"waits": ptx.count("griddepcontrol.wait"), "launches": ptx.count("griddepcontrol.launch_dependents"),
            "accesses_before_wait": accesses,
            "launches_after_wait": after.count("griddepcontrol.launch_dependents") if wait else None}


def sm90_offline(source: Path, defines: dict) -> tuple[str, bytes]:
    """(ptxas -v log, cubin) of `source` with `defines` for sm_90, built with no GPU: ptx_offline's PTX, lowered to
    8.7, through Triton's bundled ptxas."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "k.ptx").write_text(ptx_offline(source, defines, ptx_version="8.7"))
        log = subprocess.run([get_ptxas(90).path, "-arch=sm_90", "-v", f"{tmp}/k.ptx", "-o", f"{tmp}/k.cubin"],
                             capture_output=True, text=True, check=True).stderr
        return log, Path(tmp, "k.cubin").read_bytes()
