"""Peak memory and environment facts reported at the end of the demo."""

from __future__ import annotations

import os
import platform
import resource
import sys


def peak_rss_bytes() -> int:
    """Peak resident set size of this process and of its finished children (``getrusage``)."""
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * scale


def fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def environment() -> dict[str, object]:
    import torch
    import transformers

    from safeft import __version__

    return {
        "safeft": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.is_available(),
        "machine": platform.machine(),
    }
