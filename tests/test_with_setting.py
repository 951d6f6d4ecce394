"""benchmarks/with_setting.py: a benchmark run with cuda_mma's launch settings replaced."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import with_setting  # noqa: E402

from lowbit.kernels import cuda_mma  # noqa: E402


def test_the_script_runs_with_the_settings_replaced(tmp_path, monkeypatch, capsys):
    script = tmp_path / "bench.py"
    script.write_text("import sys\nfrom lowbit.kernels import cuda_mma\n"
                      "print('seen', cuda_mma.ONE_BLOCK, cuda_mma.choose_config(4, 1, 4096, 14336, 128, 132)['TILES'],"
                      " sys.argv[1:])\n")
    for name in ("ONE_BLOCK", "ONE_WAVE_MAX_TILES"):  # restored after the test
        monkeypatch.setattr(cuda_mma, name, getattr(cuda_mma, name))
    monkeypatch.setattr(sys, "argv", sys.argv)
    with_setting.main(["ONE_BLOCK={}", "ONE_WAVE_MAX_TILES={2: 8, 3: 8, 4: 8}", str(script), "--rows", "1"])
    assert "seen {} 7 ['--rows', '1']" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [(["NO_SUCH=1", "x.py"], "cuda_mma has no setting NO_SUCH"),
                                          (["ONE_BLOCK={}"], "no benchmark script at (none)")])
def test_bad_arguments_say_what_to_fix(argv, message, monkeypatch):
    monkeypatch.setattr(cuda_mma, "ONE_BLOCK", cuda_mma.ONE_BLOCK)
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        with_setting.main(argv)
