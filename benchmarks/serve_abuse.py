"""`nnx serve` under abuse, on loopback: what good clients see while others misbehave.

Good clients send JSON digits and record each latency; at the same time abusers send the largest
images the server accepts (1 MB PNGs of noise, just under the body limit and the pixel limit),
pixel bombs (PNG headers claiming 13000x13000), pathological JSON (deeply nested, 5,000-digit
integers, wrong types), unknown routes and oversized bodies. Reported: the good clients' p50 and
p99 latency with and without the abuse, the server's memory before and after (RSS from /proc), and
the count of 5xx answers (which must be 0). Every loop is bounded in time.

Run: NNX_DATA_DIR=... python benchmarks/serve_abuse.py [--seconds 10] [--good 4] [--abusers 4]
"""

from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve import free_port, start_server, trained_model  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def largest_png() -> bytes:
    """Noise compresses badly: the largest square PNG under the 1 MB body limit."""
    side = 1000
    while True:
        image = Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        if len(buffer.getvalue()) < 1_000_000:
            return buffer.getvalue()
        side -= 50


def pixel_bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 13000, 13000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    )


def abuse_requests() -> list[tuple[str, str, bytes, str]]:
    """(method, path, body, content type) of each kind of abuse."""
    return [
        ("POST", "/api/predict", largest_png(), "image/png"),
        ("POST", "/api/predict", pixel_bomb(), "image/png"),
        ("POST", "/api/predict", b"[" * 50_000 + b"]" * 50_000, "application/json"),
        ("POST", "/api/predict", b'{"pixels": 1' + b"0" * 5000 + b"}", "application/json"),
        ("POST", "/api/predict", b'{"pixels": {"a": [1, 2]}}', "application/json"),
        ("POST", "/api/predict", b"\0" * 2_000_000, "image/png"),
        ("GET", "/nope", b"", "text/plain"),
        ("DELETE", "/api/model", b"", "text/plain"),
    ]


def run(port: int, good: int, abusers: int, seconds: float, abuse: bool) -> dict:
    pixels = json.dumps({"pixels": np.random.default_rng(0).integers(0, 256, 784).tolist()}).encode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def count(status: int) -> None:
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    def good_client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            started = time.perf_counter()
            conn.request("POST", "/api/predict", body=pixels, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)
            count(response.status)
        conn.close()

    def abuser(i: int) -> None:
        requests = itertools.cycle(abuse_requests()[i % 8 :] + abuse_requests()[: i % 8])
        while time.monotonic() < stop:
            method, path, body, kind = next(requests)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request(method, path, body=body, headers={"Content-Type": kind})
                response = conn.getresponse()
                response.read()
                count(response.status)
            except (OSError, http.client.HTTPException):
                count(0)  # the server closed on us (e.g. a body over the limit): not an error answer
            finally:
                conn.close()

    threads = [threading.Thread(target=good_client) for _ in range(good)]
    threads += [threading.Thread(target=abuser, args=(i,)) for i in range(abusers if abuse else 0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        "good_requests": len(latencies),
        "statuses": statuses,
        "server_errors": sum(n for status, n in statuses.items() if status >= 500),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--good", type=int, default=4)
    parser.add_argument("--abusers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or trained_model(Path(tmp))
        port = free_port()
        server = start_server(model, port, quiet=True)
        try:
            quiet = run(port, args.good, args.abusers, args.seconds / 2, abuse=False)
            before = rss_mb(server.pid)
            abused = run(port, args.good, args.abusers, args.seconds, abuse=True)
            after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"| measure ({args.good} good clients; {args.abusers} abusers) | quiet | under abuse |")
    print("| --- | --- | --- |")
    print(f"| good clients' p50 / p99 latency | {quiet['p50']:.2f} / {quiet['p99']:.2f} ms | "
          f"{abused['p50']:.2f} / {abused['p99']:.2f} ms |")  # fmt: skip
    print(f"| good requests answered | {quiet['good_requests']:,} | {abused['good_requests']:,} |")
    print(f"| server RSS | {before:.0f} MB | {after:.0f} MB after the abuse |")
    print(f"| 5xx answers | {quiet['server_errors']} | {abused['server_errors']} |")
    print(f"answers under abuse by status: {dict(sorted(abused['statuses'].items()))}")
    if quiet["server_errors"] or abused["server_errors"]:
        sys.exit(1)


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
