"""Shared pytest setup: the report header names the CPU kernels libtorch runs (this process and
libadpo share one libtorch), so a log says which instruction set each parity run used."""

import os

import torch


def pytest_report_header(config):
    held = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ)
    return f"libtorch CPU kernels: {torch.backends.cpu.get_cpu_capability()}" + (f" ({held})" if held else "")
