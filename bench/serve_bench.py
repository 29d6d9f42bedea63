"""Load test of `fusion-edge serve`: N concurrent clients against the single-process server and
against Ray Serve with R replicas; requests/s, TTFT p50/p95 and generated tokens/s.

    python3 -m fusion_edge.bench.serve_bench BUNDLE [--clients 1,2,4,8] [--requests 4] [--max-tokens 32]
        [--modes single,ray] [--replicas 2] [--single-threads 2] [--replica-threads 1] [--json OUT]

Each mode starts its own server process (`fusion-edge serve`, a local Ray cluster for `ray`),
warms it up with one request, then for each N runs N client threads that each send --requests
streamed requests one after another (same image, so after the warm-up every request reuses the
cached scene: the figures are question cost, not image cost). TTFT: request sent → first answer
text received, queue wait included. tokens/s: completion tokens of all requests / wall time.
Standard library only on the client side (http.client), so the client adds little CPU.
The warm-up sends rounds of R concurrent requests until every replica has answered once.
--json writes {"meta": {UTC times, commit, CPU, cores, load average before / after, command},
"rows": [...]}.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import io
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

READY = re.compile(r"serving .* at http://([^/:]+):(\d+)/v1")
QUESTION = "What is on the table?"


def image_url() -> str:
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (640, 480), (40, 90, 160))
    ImageDraw.Draw(img).rectangle((100, 120, 400, 380), fill=(220, 180, 40))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


class Server:
    def __init__(self, argv: list[str], timeout: float = 300):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = subprocess.Popen([sys.executable, "-m", "fusion_edge.cli", "serve", *argv], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        ready = threading.Event()
        stdout = self.proc.stdout
        assert stdout is not None     # stdout=PIPE

        def read():                   # the server's output, kept for the error message
            for line in stdout:
                self.lines.append(line)
                m = READY.search(line)
                if m and not ready.is_set():
                    self.host, self.port = m.group(1), int(m.group(2))
                    ready.set()
        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"server did not start (exit {self.proc.poll()}):\n" + "".join(self.lines[-30:]))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_request(host: str, port: int, body: bytes) -> dict:
    """One streamed request → {status, ttft_s, total_s, tokens, replica}."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        resp.read()
        conn.close()
        return {"status": resp.status}
    ttft, tokens = None, 0
    status: int | str = 200           # "stream_error": the server failed after the 200 went out
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:          # the server failed after the 200 went out
            status = "stream_error"
            continue
        choice = (event.get("choices") or [{}])[0]
        if ttft is None and choice.get("delta", {}).get("content"):
            ttft = time.perf_counter() - t0
        if choice.get("finish_reason"):
            tokens = len(event["fusion"]["token_ids"])
    conn.close()
    return {"status": status, "ttft_s": ttft, "total_s": time.perf_counter() - t0, "tokens": tokens,
            "replica": resp.getheader("x-fusion-replica")}


def warm_up(host: str, port: int, body: bytes, replicas: int, rounds: int = 10) -> set[str]:
    """Rounds of `replicas` concurrent requests until every replica has answered once (its scene
    is then cached and its sessions warm). → the replicas seen."""
    seen: set[str] = set()
    with concurrent.futures.ThreadPoolExecutor(replicas) as pool:
        for _ in range(rounds):
            out = list(pool.map(lambda _: one_request(host, port, body), range(replicas)))
            seen |= {r["replica"] for r in out if r["status"] == 200 and r.get("replica")}
            if len(seen) >= replicas:
                break
    return seen


def run_level(host: str, port: int, body: bytes, clients: int, requests: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client():
        barrier.wait()
        for _ in range(requests):
            r = one_request(host, port, body)
            with lock:
                results.append(r)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    ttfts = sorted(r["ttft_s"] for r in ok if r["ttft_s"] is not None)
    return {"clients": clients, "requests": len(results), "ok": len(ok), "refused": len(results) - len(ok),
            "replicas_used": len({r.get("replica") for r in ok}),
            "wall_s": wall, "requests_per_s": len(ok) / wall, "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "ttft_p50_s": statistics.median(ttfts) if ttfts else None, "ttft_p95_s": percentile(ttfts, 0.95)}


def percentile(sorted_vals: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q of the values at or below it."""
    if not sorted_vals:
        return None
    k = math.ceil(q * len(sorted_vals) - 1e-9) - 1
    return sorted_vals[max(0, min(len(sorted_vals) - 1, k))]


def bench_mode(mode: str, args) -> list[dict]:
    argv = [args.bundle, "--port", "0", "--max-queue", "64",
            "--device", args.device]
    if mode == "single":
        argv += ["--threads", str(args.single_threads)] if args.single_threads else []
    else:
        argv += ["--ray", "--replicas", str(args.replicas), "--threads", str(args.replica_threads),
                 "--ray-object-store-mb", "100"]
    print(f"[{mode}] starting: fusion-edge serve {' '.join(argv)}", file=sys.stderr, flush=True)
    server = Server(argv)
    try:
        body = json.dumps({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url()}}, {"type": "text", "text": QUESTION}]}],
            "max_tokens": args.max_tokens, "stream": True}).encode()
        replicas = args.replicas if mode == "ray" else 1
        seen = warm_up(server.host, server.port, body, replicas)
        if len(seen) < replicas:
            print(f"[{mode}] warning: only {len(seen)} of {replicas} replicas answered the warm-up",
                  file=sys.stderr, flush=True)
        rows = []
        for n in args.clients:
            row = {"mode": mode, "replicas_warmed": len(seen),
                   **run_level(server.host, server.port, body, n, args.requests)}
            print(f"[{mode}] {format_row(row)}", file=sys.stderr, flush=True)
            rows.append(row)
        return rows
    finally:
        server.stop()


def format_row(r: dict) -> str:
    f = lambda v: "–" if v is None else f"{v:.2f}"
    return (f"| {r['mode']} | {r['clients']} | {r['ok']}/{r['requests']} | {r['replicas_used']} | "
            f"{r['requests_per_s']:.2f} | "
            f"{f(r['ttft_p50_s'])} | {f(r['ttft_p95_s'])} | {r['tokens_per_s']:.1f} |")


def provenance(argv, tool: str = "fusion_edge.bench.serve_bench") -> dict:
    """Where and when the figures come from: UTC time, commit, CPU, cores, load, the command
    (`python3 -m TOOL` with argv, or this process's arguments)."""
    from .runner import machine_info

    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
        except OSError:
            return None
    here = os.path.dirname(os.path.abspath(__file__))
    return {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": out("git", "-C", here, "rev-parse", "--short", "HEAD"),
            "dirty": bool(out("git", "-C", here, "status", "--porcelain", "--untracked-files=no")),
            "cpu": machine_info()["cpu"], "cores": os.cpu_count(), "loadavg_before": os.getloadavg(),
            "command": " ".join([f"python3 -m {tool}", *(sys.argv[1:] if argv is None else argv)])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--clients", default="1,2,4,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--requests", type=int, default=4, help="requests per client, sent one after another")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--modes", default="single,ray")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--single-threads", type=int, default=None, help="onnxruntime threads of the single server")
    p.add_argument("--replica-threads", type=int, default=1, help="onnxruntime threads of each Ray replica")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    meta = provenance(argv)
    rows = [row for mode in args.modes.split(",") for row in bench_mode(mode, args)]
    meta["loadavg_after"] = os.getloadavg()
    meta["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print("| server | clients | answered | replicas used | requests/s | TTFT p50 s | TTFT p95 s | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(format_row(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
