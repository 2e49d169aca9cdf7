"""The run's matmul precision: which device types train under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from model_src.common import training

CPU = torch.device("cpu")


def _autocast_dtype() -> torch.dtype:
    """The dtype a CPU matmul produces inside `training.autocast(CPU)`."""
    with training.autocast(CPU):
        return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype


def test_fp32_keeps_cpu_matmuls_in_fp32_and_bf16_puts_them_in_bf16() -> None:
    training.use_precision("fp32")
    assert _autocast_dtype() == torch.float32
    training.use_precision("bf16")
    assert _autocast_dtype() == torch.bfloat16


@pytest.mark.parametrize("native", [True, False])
def test_auto_uses_bf16_on_cpu_only_where_the_cpu_has_native_bf16(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    chosen = training.use_precision("auto")
    assert chosen == {"cpu": native, "cuda": True}
    assert _autocast_dtype() == (torch.bfloat16 if native else torch.float32)


def test_an_unknown_precision_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        training.use_precision("fp16")


def test_the_cpu_flag_check_reads_proc_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx512f avx512_vnni\n")
    real_path = training.Path
    monkeypatch.setattr(
        training, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p)
    )
    assert training.cpu_has_native_bf16() is False
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
    assert training.cpu_has_native_bf16() is True
