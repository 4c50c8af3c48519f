"""Shared pytest fixtures."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def one_thread():
    """The CI machine has 2 shared cores: one intra-op thread is ~10x faster for these tiny
    models than two contended ones (and makes the float results thread-count independent)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----- real single-node SLURM (ci/slurm/start.sh) ---------------------------------------------
_NO_SBATCH = "SLURM is not installed (no sbatch on PATH): apt-get install slurm-wlm munge"


def pytest_collection_modifyitems(config, items):
    """Tests marked `slurm` skip, with a clear reason, only when sbatch is absent."""
    if shutil.which("sbatch") is None:
        for item in items:
            if "slurm" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=_NO_SBATCH))


def _slurm_node_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = {s.strip().rstrip("*~#!%$@^-") for s in out.stdout.split()}
    return out.returncode == 0 and bool(states & {"idle", "mixed", "allocated", "completing"})


@pytest.fixture(scope="session")
def slurm():
    """The real SLURM: starts ci/slurm/start.sh when the node is not up; fails if that fails."""
    if shutil.which("sbatch") is None:
        pytest.skip(_NO_SBATCH)
    if not _slurm_node_up():
        r = subprocess.run(["bash", str(REPO_ROOT / "ci" / "slurm" / "start.sh")],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0 or not _slurm_node_up():
            pytest.fail(f"ci/slurm/start.sh could not bring SLURM up (rc={r.returncode}):\n"
                        f"{r.stdout}\n{r.stderr}")
    return True
