"""The inference server against in-process segmentation on LIDC-IDRI-0001, all in one run.

Rows: time from `ServerProcess.start()` to ready (first start: fresh interpreter; second start: the OS file
cache warm), next to building a LesionSegmenter in this process; one click (16 candidates, the whole nodule)
through the server and in process, cold (the encoder runs: every repeat sends voxels shifted by one more HU,
so no embedding is cached on either side) and warm (the same region again: decoding only); peak resident
memory of the server process and of a client process that only reads the CT and talks to the server (as
Slicer's GUI process does). Median of the repeats after one warm-up.
Usage: python Testing/Benchmarks/benchmark_server.py [--repeats 3] [--samples 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import median_seconds, print_table

#: Run in a separate interpreter: a client that never imports torch, to measure what a client costs.
CLIENT_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from AmbiguousSAMLib.client import InferenceClient
from AmbiguousSAMLib.demo import LIDC_DEMO_BOX, LIDC_DEMO_SLICE
from AmbiguousSAMLib.region import lesion_region
from AmbiguousSAMLib.volume_io import read_volume
volume = read_volume(sys.argv[2])
region = lesion_region(volume.array, LIDC_DEMO_BOX, LIDC_DEMO_SLICE, volume.spacing)
InferenceClient(sys.argv[3], sys.argv[4]).segment(region, samples=int(sys.argv[5]), seed=0)
assert "torch" not in sys.modules
print([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1])
"""


def peak_rss_gb_of(pid: int | str) -> float:
    """VmHWM (peak resident set) of a process, from /proc (Linux reports KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 2 ** 20
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()

    from AmbiguousSAMLib.demo import LIDC_DEMO_BOX, LIDC_DEMO_SLICE, shared_data_folder
    from AmbiguousSAMLib.region import lesion_region
    from AmbiguousSAMLib.segmenter import LesionSegmenter
    from AmbiguousSAMLib.serverprocess import PACKAGE_PARENT, ServerProcess
    from AmbiguousSAMLib.volume_io import read_volume

    ct_path = shared_data_folder() / "lidc-volumes" / "LIDC-IDRI-0001" / "ct.nrrd"
    if not ct_path.is_file():
        raise SystemExit(f"{ct_path} is missing: this benchmark needs ../shared/data.")
    volume = read_volume(ct_path)
    region = lesion_region(volume.array, LIDC_DEMO_BOX, LIDC_DEMO_SLICE, volume.spacing)
    shifts = itertools.count(1)

    def unseen_region():
        """The region with every voxel one HU brighter than last time: same work, nothing cached."""
        shift = next(shifts)
        return dataclasses.replace(region, voxels=region.voxels + shift, fill=region.fill + shift)

    starts = []
    for _ in range(2):
        server = ServerProcess(sys.executable)
        started = time.perf_counter()
        server.start()
        server.wait_ready()
        starts.append(time.perf_counter() - started)
        if len(starts) == 1:
            server.stop()
    client = server.client()
    click = dict(samples=args.samples, seed=0)
    try:
        server_cold = median_seconds(lambda: client.segment(unseen_region(), **click), args.repeats, warmup=1)
        server_warm = median_seconds(lambda: client.segment(region, **click), args.repeats, warmup=1)
        client_run = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, str(PACKAGE_PARENT), str(ct_path),
                                     client.url, server.token, str(args.samples)],
                                    capture_output=True, text=True, check=True)
        client_rss = int(client_run.stdout.strip()) / 2 ** 20
        server_rss = peak_rss_gb_of(server.pid)
        device = client.health()["device"]
    finally:
        server.stop()

    started = time.perf_counter()
    segmenter = LesionSegmenter()
    load = time.perf_counter() - started
    local_cold = median_seconds(lambda: segmenter.segment_region(unseen_region(), **click), args.repeats, warmup=1)
    local_warm = median_seconds(lambda: segmenter.segment_region(region, **click), args.repeats, warmup=1)
    in_process_rss = peak_rss_gb_of(os.getpid())

    slices = len(segmenter.segment_region(region, **click).info["slices"])
    print(f"LIDC-IDRI-0001, {device}, bf16, {torch.get_num_threads()} threads, {args.samples} candidates over "
          f"{slices} slices, median of {args.repeats} after 1 warm-up")
    print_table(["measurement", "server", "in process", "server / in process"], [
        ["start -> ready, first start (s)", f"{starts[0]:.2f}", f"{load:.2f} (model only)", ""],
        ["start -> ready, second start (s)", f"{starts[1]:.2f}", "", ""],
        ["one click, cold: encoder runs (s)", f"{server_cold:.2f}", f"{local_cold:.2f}",
         f"{server_cold / local_cold:.2f}x"],
        ["one click, warm: embeddings cached (s)", f"{server_warm:.2f}", f"{local_warm:.2f}",
         f"{server_warm / local_warm:.2f}x"],
        ["peak RSS (GB)", f"{server_rss:.2f} (server)", f"{in_process_rss:.2f}", ""],
        ["peak RSS of a torch-free client (GB)", f"{client_rss:.2f}", "", ""],
    ])


if __name__ == "__main__":
    main()
