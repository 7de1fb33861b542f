"""DeRTa under torchrun: two CPU processes (gloo) train the same tiny model and must agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from derta_tiny import tiny_recipe

HERE = Path(__file__).parent


@pytest.mark.distributed
def test_two_ranks_agree_on_final_weights(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, check={"enabled": False}, max_steps=3, save_steps=100)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(HERE / "dist_derta.py"),
        str(recipe),
        str(tmp_path),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 of 2: 3 steps" in result.stdout and "rank 1 of 2: 3 steps" in result.stdout
    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
    # training happened: LoRA B starts at zero and must have moved
    assert any(rank0[n].abs().sum() > 0 for n in rank0 if "lora_B" in n)
