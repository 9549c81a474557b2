"""Time an artifact served by ``python -m export serve`` (a real Triton Inference Server) from tritonclient:
batch-1 latency of sequential HTTP requests, then throughput and latency with concurrent clients (Triton batching
their requests dynamically), beside the artifact run in process (``export.load``) for the serving overhead.

Run it in the serving environment (see the README's "Serving"):

    python scripts/bench_serving.py engines/built/deit-tiny-onnxruntime-fp32 --requests 200 --clients 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

import export
from export.runtime import random_feeds
from export.serving.client import triton_inputs
from export.serving.server import free_ports

def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99))}


def sequential(url: str, model: str, arrays: dict[str, np.ndarray], requests: int, warmup: int) -> dict:
    """Latency of one client sending ``requests`` requests one after another."""
    client, seconds = httpclient.InferenceServerClient(url), []
    for i in range(warmup + requests):
        start = time.perf_counter()
        client.infer(model, triton_inputs(httpclient, arrays))
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return {**_percentiles(seconds), "samples_per_second": len(seconds) / sum(seconds)}


def concurrent(url: str, model: str, arrays: dict[str, np.ndarray], requests: int, clients: int) -> dict:
    """Throughput and latency of ``clients`` clients sending ``requests`` requests in all, at once."""
    seconds: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        connection = httpclient.InferenceServerClient(url)
        for _ in range(requests // clients):
            start = time.perf_counter()
            connection.infer(model, triton_inputs(httpclient, arrays))
            with lock:
                seconds.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    batch = next(iter(arrays.values())).shape[0]
    return {**_percentiles(seconds), "samples_per_second": len(seconds) * batch / wall}


def in_process(artifact: Path, arrays: dict[str, np.ndarray], requests: int, warmup: int) -> dict:
    """The same batch run by export.load in this process (no server)."""
    loaded, seconds = export.load(artifact), []
    for i in range(warmup + requests):
        start = time.perf_counter()
        loaded.run(arrays)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return {**_percentiles(seconds), "samples_per_second": len(seconds) / sum(seconds)}


def _cpu() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per measurement (default 200)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args()
    manifest = export.load(args.artifact).manifest
    one = random_feeds(manifest, batch=1 if "batch" in manifest.dynamic_ranges else None)
    http, grpc, metrics = free_ports(3)
    server = subprocess.Popen([sys.executable, "-m", "export", "serve", str(args.artifact), "--http-port", str(http),
                               "--grpc-port", str(grpc), "--metrics-port", str(metrics), "-q"],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # the readiness line, or "" if the server died
        if not line.startswith("serving"):
            raise SystemExit("the server did not start (see its error above)")
        url = f"127.0.0.1:{http}"
        rows = {"in process (export.load), batch 1": in_process(args.artifact, one, args.requests, args.warmup),
                "served, 1 client, batch 1": sequential(url, manifest.model, one, args.requests, args.warmup),
                f"served, {args.clients} clients, batch 1 each": concurrent(url, manifest.model, one, args.requests,
                                                                         args.clients)}
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    machine = {"cpu": _cpu(), "cores": len(os.sched_getaffinity(0)), "model": manifest.model,
               "backend": manifest.backend, "precision": manifest.precision}
    if args.json:
        print(json.dumps({"machine": machine, "results": rows}))
        return 0
    print(", ".join(f"{k} {v}" for k, v in machine.items()))
    print("| | p50 ms | p90 ms | p99 ms | samples/s |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | "
              f"{row['samples_per_second']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
