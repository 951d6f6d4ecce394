"""Run a benchmark with module-level settings of lowbit.kernels.cuda_mma replaced, to time a launch rule against
another in the same call (docs/kern31.md):

    PYTHONPATH=src:benchmarks python benchmarks/with_setting.py 'ONE_BLOCK={}' benchmarks/kernel_bench.py --rows 16
    PYTHONPATH=src:benchmarks python benchmarks/with_setting.py 'ONE_WAVE_MAX_TILES={2: 8, 3: 8, 4: 8}' \\
        benchmarks/decode.py --modes compiled --batch 1

Each NAME=VALUE (a Python literal) must name a setting the module has; the rest of the arguments are the script and
its own arguments."""

import ast
import runpy
import sys
from pathlib import Path

from lowbit.kernels import cuda_mma


def main(argv: list[str]) -> None:
    while argv and "=" in argv[0] and not argv[0].startswith("-"):
        name, value = argv.pop(0).split("=", 1)
        if not hasattr(cuda_mma, name):
            sys.exit(f"cuda_mma has no setting {name}: name one of its module-level constants, e.g. ONE_BLOCK")
        setattr(cuda_mma, name, ast.literal_eval(value))
        print(f"cuda_mma.{name} = {getattr(cuda_mma, name)!r}", flush=True)
    if not argv or not Path(argv[0]).is_file():
        sys.exit(f"no benchmark script at {argv[0] if argv else '(none)'}: name it after the settings")
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
