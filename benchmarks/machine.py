"""What machine a benchmark ran on, for the header of its report, and what its GPU can peak at."""

from __future__ import annotations

import platform

GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bfloat16": 756.0, "tf32": 378.0, "float32": 51.0}),
    ("H100", {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0}),
    ("H200", {"bfloat16": 989.0, "tf32": 494.0, "float32": 67.0}),
)
"""Dense matmul peak TFLOP/s (NVIDIA datasheets, without sparsity) by substring of
torch.cuda.get_device_name(), first match: bfloat16 and tf32 on tensor cores, float32 on the
CUDA cores (what a float32 matmul runs on while torch's float32 matmul precision is "highest",
its default)."""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpu_peak_tflops(device_name: str, dtype: str = "bfloat16") -> float | None:
    """Dense matmul peak of a GPU for "bfloat16", "tf32" or "float32"; None if not in the table."""
    peaks = next((peaks for key, peaks in GPU_PEAK_TFLOPS if key in device_name), None)
    return None if peaks is None else peaks.get(dtype)
