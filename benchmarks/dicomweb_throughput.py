"""Issue 32, DICOMweb: how fast are images read from a real PACS compared with the same files on disk?

Converts the Kermany test films ($MEDVLKIT_DATA, 624) to DICOM (tests/orthanc.py's ``to_dicom``: 8-bit CR, Explicit
VR Little Endian), stores them in a fresh Orthanc with its DICOMweb plugin on 127.0.0.1 (Debian's packages), and
prints two commands that embed the same images, one from the folder of DICOM files and one over DICOMweb, each with
the embedding cache off and, for DICOMweb, an empty fetch cache (every image fetched from the PACS). Then it keeps
Orthanc running until Ctrl-C or SIGTERM, so the commands can be timed side by side:

    python benchmarks/dicomweb_throughput.py --work /tmp/dicomweb-bench &
    farm-bench -n 3 --vs "$(cat /tmp/dicomweb-bench/web.sh)" -- "$(cat /tmp/dicomweb-bench/disk.sh)"

``--check`` also runs zero-shot both ways once and prints the largest difference of the probabilities (target:
<= 1e-6). Run by hand; the numbers go into the closing notes (machine, date), never into tests.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from orthanc import PASSWORD, USER, kermany_dicom, start_orthanc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a new folder for the DICOM files and Orthanc's storage")
    ap.add_argument("--per-class", type=int, default=10_000, help="films per class (default: all)")
    ap.add_argument("--check", action="store_true", help="zero-shot both ways and compare the probabilities")
    args = ap.parse_args()
    data = Path(os.environ.get("MEDVLKIT_DATA", "../shared/data"))
    if args.work.exists():
        shutil.rmtree(args.work)
    start = time.perf_counter()
    files = kermany_dicom(data, args.work / "dicom", args.per_class)
    print(f"{len(files)} films converted to DICOM in {time.perf_counter() - start:.1f} s", flush=True)
    server = start_orthanc(args.work / "orthanc")
    try:
        run(args, files, server)
    finally:
        server.stop()


def run(args: argparse.Namespace, files: list, server) -> None:
    start = time.perf_counter()
    server.upload([f for f, _ in files])
    print(f"stored in Orthanc at {server.url} in {time.perf_counter() - start:.1f} s", flush=True)
    medvlkit = shlex.quote(str(Path(sys.executable).parent / "medvlkit"))
    env = f"MEDVLKIT_DICOMWEB_USER={USER} MEDVLKIT_DICOMWEB_PASSWORD={PASSWORD}"
    common = "--no-cache -q --overwrite"
    disk = f"{medvlkit} embed --data {args.work / 'dicom'} {common} --out {args.work / 'out-disk'}"
    web = (f"rm -rf {args.work / 'fetched'} && {env} MEDVLKIT_CACHE={args.work / 'fetched'} {medvlkit} embed --data "
           f"'dicomweb:{server.dicomweb}/instances?Modality=CR' {common} --out {args.work / 'out-web'}")
    (args.work / "disk.sh").write_text(disk + "\n")
    (args.work / "web.sh").write_text(web + "\n")
    print(f"disk: {disk}\nweb:  {web}", flush=True)
    if args.check:
        import csv
        import subprocess

        for name, data_arg in (("disk", str(args.work / "dicom")), ("web", f"dicomweb:{server.dicomweb}")):
            subprocess.run(f"{env} {medvlkit} zeroshot --data '{data_arg}' --prompts pneumonia -q --overwrite "
                           f"--bootstrap 0 --out {args.work / ('zs-' + name)}", shell=True, check=True)
        probs: dict[str, dict[str, float]] = {}
        for name in ("disk", "web"):
            with open(args.work / f"zs-{name}" / "predictions.csv", newline="") as f:
                for r in csv.DictReader(f):  # the folder's classes are NORMAL/PNEUMONIA, the prompt set's lower case
                    sop = Path(r["file"].rsplit("/", 1)[-1]).stem if name == "disk" else r["file"].rsplit("/", 1)[-1]
                    probs.setdefault(name, {})[sop] = next(float(v) for k, v in r.items()
                                                           if k.lower() == "prob_pneumonia")
        assert set(probs["disk"]) == set(probs["web"])
        print(f"largest difference of P(PNEUMONIA), disk vs DICOMweb, {len(probs['web'])} films: "
              f"{max(abs(probs['disk'][k] - probs['web'][k]) for k in probs['web']):.3g}", flush=True)
    print("Orthanc runs until Ctrl-C (or kill: SIGTERM stops it too)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a background job ignores Ctrl-C's SIGINT
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
