"""The machine and software a results file was measured on (no hostname, no user names)."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import torch

RESULTS_DIR = Path("benchmarks") / "results"

# Dense bf16 tensor-core peaks (FLOP/s) for MFU, matched against the device name.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
)

_REPO = Path(__file__).resolve().parent.parent


def peak_bf16_flops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a known GPU, else None (CPUs and unknown GPUs)."""
    if not device_name:
        return None
    upper = device_name.upper()
    for key, flops in PEAK_BF16_FLOPS:
        if key in upper:
            return flops
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


def slug(text: str, limit: int = 48) -> str:
    """Lower-case letters, digits and dashes: safe in file names."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "device"


def device_slug(device: torch.device) -> str:
    name = device_name(device)
    return slug(name) if device.type == "cuda" else slug(f"cpu-{name}")


def _run(argv: list[str]) -> str | None:
    """stdout of a short command given as an argv list (never a shell string), or None."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=_REPO, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = proc.stdout.strip()
    return text if proc.returncode == 0 and text else None


def git_commit() -> str | None:
    """``GPT1_GIT_COMMIT`` when set (a tree shipped to a GPU machine may carry a stale
    ``.git``: seen on 2026-11-30, where ``git rev-parse`` named the commit before the one
    shipped); else ``git rev-parse HEAD`` of the checkout; else None."""
    for commit in (os.environ.get("GPT1_GIT_COMMIT", "").strip().lower(), _run(["git", "rev-parse", "HEAD"])):
        if commit and re.fullmatch(r"[0-9a-f]{40}", commit):
            return commit
    return None


def driver_version() -> str | None:
    line = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return line.splitlines()[0].strip() if line else None


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def environment(device: torch.device, triton_mode: str) -> dict:
    """Device, driver, library versions, git commit and date of this run."""
    name = device_name(device)
    cuda = device.type == "cuda"
    return {
        "device_type": device.type,
        "device_name": name,
        "device_slug": device_slug(device),
        "device_count": torch.cuda.device_count() if cuda else None,
        "driver_version": driver_version() if cuda else None,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
        "peak_bf16_tflops": (peak_bf16_flops(name) / 1e12) if cuda and peak_bf16_flops(name) else None,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "triton_mode": triton_mode,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "date": utc_now().isoformat(timespec="seconds"),
    }


def default_results_path(device: torch.device) -> Path:
    """``benchmarks/results/<device-slug>-<YYYY-MM-DD>.json`` (relative to the working directory)."""
    return RESULTS_DIR / f"{device_slug(device)}-{utc_now().date().isoformat()}.json"
