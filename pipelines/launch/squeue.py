"""SLURM job states as squeue reports them: which states are final, which pending reasons never resolve."""
from __future__ import annotations

import logging
import subprocess
import typing as tp

log = logging.getLogger(__name__)

# Final states: the job will not run again (a requeued job goes back to PENDING instead).
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT",
})


# Pending reasons that never resolve by themselves: the request can never be satisfied
# (clusters without EnforcePartLimits=ALL accept such jobs) or a dependency failed. Held jobs
# (JobHeldUser/JobHeldAdmin) are waited for: bound those with max_wait_s.
HOPELESS_REASONS = frozenset({
    "BadConstraints", "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit",
    "InvalidAccount", "InvalidQOS", "DependencyNeverSatisfied",
})


def squeue_states(job_ids: tp.Iterable[str]) -> tp.Optional[tp.Dict[str, tp.Tuple[str, str]]]:
    """``{job_id: (state, pending_reason)}`` for the given ids, in any state.

    Array tasks appear as ``<array id>_<task>``. Jobs SLURM no longer knows are absent.
    Returns None when squeue itself fails (controller unreachable), so that callers can tell
    "gone" from "unknown".
    """
    masters = sorted({str(j).split("_")[0] for j in job_ids})
    if not masters:
        return {}
    cmd = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r",
           "--jobs=" + ",".join(masters)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("squeue failed: %s", e)
        return None
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # a single, already purged job id
            return {}
        log.warning("squeue failed (rc=%d): %s", proc.returncode, proc.stderr.strip())
        return None
    states: tp.Dict[str, tp.Tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) < 2:
            continue
        reason = parts[2].strip() if len(parts) == 3 else ""
        states[parts[0]] = (parts[1].split()[0].rstrip("+"), reason)  # "CANCELLED by 0"
    return states
