"""`nnx serve` under load, on loopback: median /api/predict latency, and requests/s with 8
concurrent clients (keep-alive connections, bounded in time), errors counted.

Run: NNX_DATA_DIR=... python benchmarks/serve.py [--model runs/x/model.npz] [--seconds 10]
(without --model it trains the default config first, a few seconds).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drawing_png() -> bytes:
    image = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(image).line([(70, 60), (210, 60), (120, 240)], fill=0, width=18)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def post(conn: http.client.HTTPConnection, body: bytes, content_type: str) -> int:
    conn.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    response.read()
    return response.status


def latencies(port: int, body: bytes, content_type: str, count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        assert post(conn, body, content_type) == 200
        times.append((time.perf_counter() - started) * 1000)
    conn.close()
    return times


def load(port: int, body: bytes, content_type: str, clients: int, seconds: float) -> tuple[int, int]:
    ok, errors = [0] * clients, [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            try:
                if post(conn, body, content_type) == 200:
                    ok[i] += 1
                else:
                    errors[i] += 1
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(ok), sum(errors)


def trained_model(folder: Path) -> Path:
    """The default config trained into `folder` (a few seconds), for a benchmark without --model."""
    subprocess.run([sys.executable, "-m", "nnx", "train", "-q", "--out", str(folder / "run")], check=True)
    return folder / "run" / "model.npz"


def start_server(model: Path, port: int, quiet: bool = False) -> subprocess.Popen:
    """`nnx serve` on 127.0.0.1:port, returned once /healthz answers (30 s at most)."""
    output = subprocess.DEVNULL if quiet else None
    server = subprocess.Popen([sys.executable, "-m", "nnx", "serve", str(model), "--port", str(port)],
                              stdout=output, stderr=output)  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or trained_model(Path(tmp))
        port = free_port()
        server = start_server(model, port)
        try:
            pixels = np.random.default_rng(0).integers(0, 256, 784).tolist()
            as_json = json.dumps({"pixels": pixels, "preprocess": False}).encode()
            png = drawing_png()
            json_ms = latencies(port, as_json, "application/json", 300)
            png_ms = latencies(port, png, "image/png", 300)
            ok, errors = load(port, as_json, "application/json", args.clients, args.seconds)
            ok_png, errors_png = load(port, png, "image/png", args.clients, args.seconds)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print("| measure | value |")
    print("| --- | --- |")
    for label, times in (("JSON 784 pixels", json_ms), ("280x280 PNG drawing", png_ms)):
        median, p95 = statistics.median(times), np.percentile(times, 95)
        print(f"| median latency, {label} (p95) | {median:.2f} ms ({p95:.2f}) |")
    print(f"| {args.clients} clients, JSON: requests/s (errors) | {ok / args.seconds:,.0f} ({errors}) |")
    print(f"| {args.clients} clients, PNG: requests/s (errors) | {ok_png / args.seconds:,.0f} ({errors_png}) |")


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
