"""A small HTTP/1.1 load generator: keep-alive connections on 127.0.0.1, fixed duration.

Run as its own process so it does not share the server's interpreter:
    python benchmarks/loadgen.py --port 8000 --token T --seconds 20 --connections 8
Prints one JSON line: requests, errors, throughput, p50/p99 latency (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

TRIP = {"PULocationID": 236, "DOLocationID": 239, "trip_distance": 1.98}
# MLflow's scoring protocol has three body forms; `mlflow models serve` of a model with type hints
# (ours: list[TripRecord]) accepts only "inputs", taxi-assets serve all three.
BODIES = {
    "inputs": {"inputs": [TRIP]},
    "dataframe_records": {"dataframe_records": [TRIP]},
    "dataframe_split": {"dataframe_split": {"columns": list(TRIP), "data": [list(TRIP.values())]}},
}


async def worker(port: int, request: bytes, stop_at: float, latencies: list[float], errors: list[str]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not status_line.startswith(b"HTTP/1.1 200"):
                errors.append(status_line.decode(errors="replace").strip())
    except (ConnectionError, asyncio.IncompleteReadError) as error:
        errors.append(repr(error))
    finally:
        writer.close()


async def main_async(args) -> dict:
    body = json.dumps(BODIES[args.body]).encode()
    auth = f"Authorization: Bearer {args.token}\r\n" if args.token else ""
    request = (
        f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    stop_at = start + args.seconds
    await asyncio.gather(*(worker(args.port, request, stop_at, latencies, errors) for _ in range(args.connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def percentile(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(elapsed, 2),
        "throughput": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(0.50), 3),
        "p99_ms": round(percentile(0.99), 3),
        "max_ms": round(percentile(1.0), 3),
        "connections": args.connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default="", help="bearer token (none: no Authorization header)")
    parser.add_argument("--path", default="/predict", help="endpoint: /predict or /invocations")
    parser.add_argument("--body", default="inputs", choices=sorted(BODIES), help="the one-trip body's form")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
