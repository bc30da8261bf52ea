"""`scalerec serve` under load: the server started as a user starts it, on a loopback port, and C concurrent
clients (keep-alive connections, as a service's callers hold them) sending a fixed number of requests for random
users. Prints one JSON line per setting: requests/s, p50/p99 latency, and the answers by status.

Each setting runs against a server that scores every request live, and one started with --precompute 100 (every
user's top 100 scored at start: the same lists, looked up). Settings: GET /recommend?user=ID&k=10; POST
/recommend of 100 users at k=10; and a mix in which every fourth request is malformed (unknown user, bad k, broken
JSON: each must get a 4xx with an error, the rest a 200). Requests go to 127.0.0.1 only, bounded in count and time. Run:

    .venv/bin/python benchmarks/serve_load.py                       # trains a NeuMF on the NCF paper's ML-1M first
    .venv/bin/python benchmarks/serve_load.py --run runs/my-run --clients 8 --requests 4000 --precompute 0
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine, run

NCF = Path(__file__).resolve().parents[2] / "shared" / "data" / "ncf-ml-1m" / "ml-1m"


def trained(args, tmp: Path) -> Path:
    """The run to serve: --run, or a NeuMF trained for one epoch on the NCF paper's ML-1M (as configs/ncf-ml-1m)."""
    if args.run:
        return Path(args.run)
    if not Path(f"{args.ncf}.train.rating").is_file():
        sys.exit(f"{args.ncf}.train.rating: not found; give --ncf PREFIX or --run RUN")
    out = tmp / "run"
    cmd = [
        sys.executable,
        "-m",
        "scalerec",
        "train",
        "--config",
        str(Path(__file__).parents[1] / "configs" / "ncf-ml-1m.toml"),
    ]
    cmd += ["--data", str(args.ncf), "--epochs", "1", "--output", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def start(run_dir: Path, threads: int, precompute: int | None) -> tuple[subprocess.Popen, str, int]:
    cmd = [sys.executable, "-m", "scalerec", "serve", str(run_dir), "--port", "0", "--threads", str(threads)]
    cmd += ["--precompute", str(precompute)] if precompute else []
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    while line.startswith("Precomputed"):
        line = p.stdout.readline()
    if "on http://" not in line:
        p.kill()
        sys.exit(f"scalerec serve did not start: {line}{p.stderr.read()}")
    host, port = line.split("on http://")[1].split()[0].rsplit(":", 1)
    return p, host, int(port)


def load(host: str, port: int, requests: list[tuple[str, str, bytes | None]], clients: int, limit_s: float) -> dict:
    """Send the requests from `clients` threads, each on its own connection; latencies and statuses."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors_without_message = 0
    lock = threading.Lock()
    work = iter(requests)
    deadline = time.monotonic() + limit_s

    def client() -> None:
        nonlocal errors_without_message
        conn = http.client.HTTPConnection(host, port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                item = next(work, None)
            if item is None:
                break
            method, path, body = item
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status >= 400 and "error" not in json.loads(data):
                    errors_without_message += 1
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "errors_without_message": errors_without_message,
    }


def settings(users: list, n: int, rng: random.Random) -> dict[str, list[tuple[str, str, bytes | None]]]:
    get = [("GET", f"/recommend?user={rng.choice(users)}&k=10", None) for _ in range(n)]
    post = [
        ("POST", "/recommend", json.dumps({"users": rng.sample(users, 100), "k": 10}).encode())
        for _ in range(max(1, n // 20))
    ]
    malformed = [
        ("GET", "/recommend?user=no-such-user&k=10", None),
        ("GET", f"/recommend?user={users[0]}&k=0", None),
        ("GET", f"/recommend?user={users[0]}&k=ten", None),
        ("POST", "/recommend", b"{not json"),
        ("POST", "/score", json.dumps({"user": users[0], "items": "x"}).encode()),
    ]
    mix = [malformed[i // 4 % len(malformed)] if i % 4 == 3 else get[i] for i in range(n)]
    return {"get_k10": get, "post_100_users": post, "mix_malformed": mix}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a trained run folder (default: train one on --ncf for one epoch)")
    p.add_argument("--ncf", default=str(NCF), help="the NCF paper's ML-1M files' prefix")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=2000, help="per setting (POST: a twentieth as many)")
    p.add_argument("--threads", type=int, default=1, help="the server's PyTorch threads")
    p.add_argument("--limit-s", type=float, default=120, help="at most this long per setting")
    p.add_argument(
        "--precompute", type=int, nargs="+", default=[0, 100], metavar="K",
        help="one server per K: 0 scores each request live, K > 0 is scalerec serve --precompute K (default: 0 100)",
    )  # fmt: skip
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = trained(args, Path(tmp))
        import scalerec

        rec = scalerec.load(run_dir)
        users = [str(u) for u in rec.users]
        base = {"bench": "serve_load", **machine(), "items": len(rec.items), "clients": args.clients}
        for precompute in args.precompute:
            server, host, port = start(run_dir, args.threads, precompute)
            try:
                load(host, port, settings(users, 50, random.Random(1))["get_k10"], args.clients, 30)  # warm up
                for name, requests in settings(users, args.requests, random.Random(0)).items():
                    got = load(host, port, requests, args.clients, args.limit_s)
                    mode = {"server_threads": args.threads, "precompute": precompute}
                    print(json.dumps({**base, "setting": name, **mode, **got}), flush=True)
            finally:
                server.terminate()
                server.communicate(timeout=30)


if __name__ == "__main__":
    run(main)
