"""What a measurement ran on: the device (CPU model and instruction-set flags, or the GPU card), the thread
count, library versions and the command line. Recorded beside every latency and size figure."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path

import torch

# CPU flags that decide which kernels run (int8 dot products, bf16/fp16 arithmetic, matrix tiles)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
             "amx_fp16", "fma", "f16c")


# The CPU kinds this project has been measured on (name -> (model, flags)): what the catalogue reports for each and
# what `ptqflow variants --cpu-kind NAME` assumes.
CPU_KINDS = {
    "avx2": ("AMD EPYC Zen 3 (GitHub's hosted runners, most VMs and laptops)", ["avx2", "fma", "f16c"]),
    "avx512-vnni-bf16": ("AMD EPYC Zen 4", ["avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"]),
    "amx": ("Intel Xeon Sapphire Rapids", ["avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                                          "amx_tile", "amx_int8", "amx_bf16"]),
}

_ASSUMED: dict | None = None  # assume_cpu(): another CPU's model and flags, to plan for it (never set in a stage)


@contextlib.contextmanager
def assume_cpu(flags: list[str], model: str = "assumed CPU"):
    """Within the block, cpu_info() answers `model` and `flags` (filtered to CPU_FLAGS): what would run on
    another kind of CPU (`ptqflow variants --cpu-flags`), decided by the same code as on this one."""
    global _ASSUMED
    saved, _ASSUMED = _ASSUMED, {"model": model, "flags": [f for f in CPU_FLAGS if f in set(flags)]}
    try:
        yield
    finally:
        _ASSUMED = saved


ASSUME_ENV = "PTQFLOW_CPU_FLAGS"  # e.g. "avx2 fma f16c": plan (and test) as on that kind of CPU, in every process


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """{"model": ..., "flags": [...]} from /proc/cpuinfo (Linux); the platform's processor string elsewhere.
    Inside assume_cpu(), or with $PTQFLOW_CPU_FLAGS set, the assumed flags instead (the decisions of another CPU
    kind, taken by the same code: `PTQFLOW_CPU_FLAGS="avx2 fma f16c" make test` runs the suite as on an AVX2-only
    CPU where only the decision is under test; the kernels still run on this CPU)."""
    if _ASSUMED is not None:
        return dict(_ASSUMED)
    if os.environ.get(ASSUME_ENV) is not None:
        present = set(os.environ[ASSUME_ENV].replace(",", " ").split())
        return {"model": f"assumed CPU (${ASSUME_ENV})", "flags": [f for f in CPU_FLAGS if f in present]}
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {"model": model, "flags": flags}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.processor() or platform.machine()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            present = set(value.split())
            flags = [f for f in CPU_FLAGS if f in present]
    return {"model": model, "flags": flags}


# Kernels whose speed depends on the CPU's instruction set: the flags that give each a fast path. Without one of
# them the kernel still runs, correctly, but many times slower than float32 (a variant using it is skipped, said so).
FAST_PATHS = {
    "bfloat16": ("avx512_bf16", "amx_bf16"),  # bf16 arithmetic; else PyTorch emulates it through float32
    "float16": ("avx512_fp16", "amx_fp16"),  # fp16 arithmetic; else emulated, 10x+ slower than float32
    # torch._int_mm on a CPU: oneDNN's int8 GEMM with VNNI dot products (or AMX tiles). Measured on an AVX2-only AMD
    # EPYC (Zen 3) on 2026-12-01: ~50x slower than a float32 matmul of the same shape (1,351 ms vs 26 ms).
    "torch._int_mm": ("avx512_vnni", "amx_int8"),
}


def fast_path(kernel: str, flags: list[str] | None = None) -> bool:
    """Whether this CPU (or `flags`) has a fast path for `kernel` (a key of FAST_PATHS)."""
    flags = cpu_info()["flags"] if flags is None else flags
    return any(f in flags for f in FAST_PATHS[kernel])


def no_fast_path(kernel: str, flags: list[str] | None = None) -> str | None:
    """Why `kernel` would crawl on this CPU (one line naming the CPU and the flags it lacks), or None."""
    if fast_path(kernel, flags):
        return None
    return f"{kernel} has no fast path on this CPU ({cpu_info()['model']}: no {' / '.join(FAST_PATHS[kernel])} in its flags)"


def native_half(dtype: str, flags: list[str] | None = None) -> bool:
    """Whether this CPU does `dtype` ("bfloat16" / "float16") arithmetic in hardware, from its flags:
    bf16 with avx512_bf16 or amx_bf16, fp16 with avx512_fp16 or amx_fp16. Without them PyTorch emulates the type
    (correct, but float16 is then many times slower than float32)."""
    return fast_path(dtype, flags)


def exact_int8_products(flags: list[str] | None = None) -> bool:
    """Whether fbgemm's / oneDNN's / MLAS's u8 x s8 int8 GEMMs accumulate exactly in int32 on this CPU: with
    AVX-512 VNNI (vpdpbusd) or AMX, yes. AVX2-only CPUs multiply u8 x s8 pairs with vpmaddubsw, whose int16 sum of two products
    saturates (|sum| up to 2 * 255 * 127 > 32,767), so an int8 product can differ from its formula there; tests
    bound the error by the saturation's worst case on such CPUs instead of the exact formula."""
    flags = cpu_info()["flags"] if flags is None else flags
    return any(f in flags for f in ("avx512_vnni", "amx_int8"))  # (AVX-VNNI alone: not every library uses it)


def device_name(device: torch.device) -> str:
    """The card's name on CUDA; on CPU the model, the flags that matter and the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = cpu_info()
    return f"cpu: {info['model']} [{' '.join(info['flags']) or 'no listed flags'}], {torch.get_num_threads()} threads"


def command_line() -> str:
    """The command that is running, as a user would type it (`python -m ptqflow ...` for the package's __main__)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("ptqflow", "__main__.py")):
        argv[0:1] = ["python", "-m", "ptqflow"]
    elif argv and os.path.basename(argv[0]) == "ptqflow":
        argv[0] = "ptqflow"
    elif argv and argv[0].endswith(".py"):
        argv[0:1] = ["python", os.path.relpath(argv[0])]
    return " ".join(argv)


def installed_version(package: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    """Device and library versions to record beside every measurement (read from the installed packages'
    metadata: importing bitsandbytes only to ask its version costs seconds)."""
    env = {
        "command": command_line(),
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": installed_version("transformers"),
        "bitsandbytes": installed_version("bitsandbytes"),
        "onnxruntime": installed_version("onnxruntime"),
        "openvino": installed_version("openvino"),
        "nncf": installed_version("nncf"),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }
    if device.type == "cpu":
        env["cpu"] = cpu_info()
    return env
