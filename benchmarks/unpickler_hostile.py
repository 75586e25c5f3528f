"""Hostile weight archives against medvlkit's tensor-only readers (run by hand): time and peak memory per file.

Issue 25, item 11: a 1.6 KB archive of nested shared dicts never finished (the module tree was walked path by path),
a 67 KB archive re-read one deflated record per reference (1.3 GB), a 1.2 KB stride-0 tensor was materialised to
1 GiB by the converter. Each archive of ``tests/helpers.hostile_archives`` (TorchScript layout ``.pt``, and the same
pickle as a Lightning ``.ckpt``) is read in a fresh subprocess (``read_weights`` for ``.pt``, GLoRIA's
``read_checkpoint_state_dict`` for ``.ckpt``) under a time limit; printed per file: its size, the outcome (the
one-line error, "read", or "timeout"), seconds and the subprocess's peak resident memory.

Usage: python benchmarks/unpickler_hostile.py [--timeout 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import hostile_archives, proc_status_mb  # noqa: E402

READ = """
import sys, torch
from pathlib import Path
from medvlkit.errors import MedvlkitError
p = Path(sys.argv[1])
try:
    if p.suffix == ".ckpt":
        from medvlkit.models.torchscript import read_checkpoint_state_dict
        sd, _ = read_checkpoint_state_dict(p)
    else:
        from medvlkit.models.weight_files import read_weights
        sd = read_weights(p, "a CLIP checkpoint")
    # what a converter does with the tensors: make them contiguous float32
    total = sum(v.float().contiguous().numel() for v in sd.values())
    print("read", len(sd), "tensors,", total, "elements")
except MedvlkitError as err:
    print("refused:", str(err)[:150])
"""


def _peak_mb(pid: int) -> float:
    return proc_status_mb(pid, "VmHWM")


def run_one(path: Path, timeout: float) -> dict:
    """Read ``path`` in a fresh subprocess; its peak memory is polled from /proc until it ends or times out."""
    start, peak = time.perf_counter(), 0.0
    proc = subprocess.Popen([sys.executable, "-c", READ, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while proc.poll() is None and time.perf_counter() - start < timeout:
        peak = max(peak, _peak_mb(proc.pid))
        time.sleep(0.05)
    if proc.poll() is None:
        peak = max(peak, _peak_mb(proc.pid))
        proc.kill()
        proc.wait()
        outcome = f"timeout after {timeout:.0f} s"
    else:
        out, err = proc.communicate()
        outcome = (out.strip() or (err.strip().splitlines() or ["?"])[-1])[:160]
    return {"bytes": path.stat().st_size, "outcome": outcome, "seconds": round(time.perf_counter() - start, 2),
            "peak_mb": round(peak)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for name, path in hostile_archives(Path(tmp)).items():
            rows[name] = run_one(path, args.timeout)
            print(name, rows[name], flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
