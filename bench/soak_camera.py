"""Soak test of the camera app: N questions in a row over its web socket, reporting
answers per second, latency and the server process's resident memory (RSS) growth, then
three disturbances (--scenarios, on by default when the app is started here):
  disconnect  a second client asks a long question and drops its socket mid-answer; the
              answer ends and the next question is answered
  two-tabs    two clients connected at once both receive the streamed answer of one
  source      the camera (an image folder) disappears and comes back: the app reports the
              source down, keeps answering about its last frame or refuses clearly, and is
              live again once the folder is back

  python bench/soak_camera.py --bundle B -n 200                  starts the app itself on
                                                                 127.0.0.1 (free port) with a
                                                                 generated demo clip as camera
  python bench/soak_camera.py --url http://127.0.0.1:8080/ --pid PID -n 200
                                                                 against an app already running

Each question waits for its answer before the next is sent (one inference at a time is the
app's rule). RSS is read after one warm-up answer, every --sample questions, and at the end.
Needs: websockets, psutil. Loopback only; the loop is bounded by -n and --timeout.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_app(args, workdir: Path):
    """Start `fusion-edge camera` on 127.0.0.1:0 → (process, URL incl. token)."""
    source = args.source
    if source is None:                     # a live slideshow of generated scenes: a folder we can take away
        source = str(write_scene_folder(workdir / "camera", 12))
    cmd = [sys.executable, "-m", "fusion_edge.cli", "camera", args.bundle, "--source", source, "--host", "127.0.0.1",
           "--port", "0", "--max-new-tokens", str(args.max_new_tokens), "--device", args.device, "--max-fps", "10",
           "--slide-seconds", str(args.slide_seconds)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 180
    assert proc.stdout is not None          # stdout=PIPE
    for line in proc.stdout:
        if "camera QA ready: open " in line:
            return proc, line.split("open ", 1)[1].strip()
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the camera app did not start")


def write_scene_folder(folder: Path, n: int) -> Path:
    from fusion_edge.calibration.builtin import builtin_pairs
    folder.mkdir(parents=True, exist_ok=True)
    for k, (_, img, _) in enumerate(builtin_pairs("calib", n)):
        img.save(folder / f"scene_{k:03d}.jpg", quality=90)
    return folder


class Client:
    def __init__(self, url: str):
        from websockets.sync.client import connect
        base, _, query = url.partition("?")
        ws_url = base.replace("http://", "ws://").rstrip("/") + "/ws" + (f"?{query}" if query else "")
        self._stack = contextlib.ExitStack()
        self.conn = self._stack.enter_context(connect(ws_url, open_timeout=30))
        self.recv()                                   # the state snapshot

    def recv(self, timeout: float = 60.0) -> dict:
        return json.loads(self.conn.recv(timeout=timeout))

    def wait_for(self, match, timeout: float) -> dict | None:
        """The first event for which match(event) is true, or None after `timeout` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                ev = self.recv(timeout=max(end - time.monotonic(), 0.01))
            except TimeoutError:
                return None
            if match(ev):
                return ev
        return None

    def ask(self, question: str, max_new_tokens: int, timeout: float) -> dict:
        """Send one question; → its final job dict (done / cancelled / error) or a refusal."""
        self.conn.send(json.dumps({"type": "ask", "question": question, "max_new_tokens": max_new_tokens}))
        end = time.monotonic() + timeout
        job_id = None
        while time.monotonic() < end:
            ev = self.recv(timeout=max(end - time.monotonic(), 0.01))
            if ev["type"] == "error" and ev.get("request") == "ask":
                return {"state": "refused", "error": ev["message"]}
            if ev["type"] == "job" and ev["job"]["question"] == question and job_id is None:
                job_id = ev["job"]["id"]
            if ev["type"] == "end" and ev["job"]["id"] == job_id:
                return ev["job"]
        return {"state": "timeout", "error": f"no answer within {timeout} s"}

    def close(self) -> None:
        self._stack.close()


def rss_mb(proc) -> float:
    return proc.memory_info().rss / 2**20


def soak(args) -> dict:
    import psutil
    with tempfile.TemporaryDirectory() as tmp:
        app_proc = None
        url, pid = args.url, args.pid
        if url is None:
            app_proc, url = start_app(args, Path(tmp))
            pid = app_proc.pid
        if pid is None:
            raise SystemExit("--pid is needed with --url (the app's process id, for its memory)")
        server = psutil.Process(pid)
        url = url + (f"?token={args.token}" if args.token and "?" not in url else "")
        client = Client(url)
        try:
            report = run_questions(args, client, server)
            if args.scenarios:
                report["scenarios"] = {"disconnect": disconnect_mid_answer(args, url, client),
                                       "two_tabs": two_tabs(args, url, client)}
                if app_proc is not None and args.source is None:
                    report["scenarios"]["source"] = source_gone_and_back(args, client, Path(tmp) / "camera")
            return report
        finally:
            client.close()
            if app_proc is not None:
                app_proc.send_signal(signal.SIGINT)
                try:
                    app_proc.wait(20)
                except subprocess.TimeoutExpired:
                    app_proc.kill()


def run_questions(args, client, server) -> dict:
    if args.freeze:
        client.conn.send(json.dumps({"type": "freeze", "on": True}))
    warm = client.ask("warm-up: what is there?", args.max_new_tokens, args.timeout)
    rss_start = rss_mb(server)
    samples = [(0, rss_start)]
    latencies: list[float] = []
    states: dict[str, int] = {}
    rss_warm = rss_start
    t0 = time.perf_counter()
    for i in range(1, args.n + 1):
        t = time.perf_counter()
        job = client.ask(f"question {i}: what is in the picture?", args.max_new_tokens, args.timeout)
        latencies.append(time.perf_counter() - t)
        states[job["state"]] = states.get(job["state"], 0) + 1
        if i % args.sample == 0 or i == args.n:
            samples.append((i, rss_mb(server)))
            print(f"  {i:4d}/{args.n}  rss {samples[-1][1]:.1f} MB  last {latencies[-1]:.2f} s  {job['state']}",
                  file=sys.stderr, flush=True)
        if i == args.warmup:
            rss_warm = rss_mb(server)
    wall = time.perf_counter() - t0
    rss_end = samples[-1][1]

    return {"questions": args.n, "states": states, "warmup_state": warm["state"], "wall_s": wall,
            "answers_per_s": states.get("done", 0) / wall, "latency_mean_s": statistics.mean(latencies),
            "latency_p50_s": statistics.median(latencies),
            "latency_p95_s": sorted(latencies)[max(0, int(0.95 * len(latencies)) - 1)],
            "max_new_tokens": args.max_new_tokens, "frozen_frame": args.freeze,
            "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_growth_mb": rss_end - rss_start,
            # after the first sample: allocator arenas have reached their working size by then,
            # so growth here is what a leak would show
            "rss_growth_after_first_sample_mb": rss_end - samples[min(1, len(samples) - 1)][1],
            "rss_after_warmup_mb": rss_warm, "warmup_questions": args.warmup,
            "rss_growth_after_warmup_pct": 100 * (rss_end - rss_warm) / rss_warm,
            "rss_samples": samples}


def disconnect_mid_answer(args, url: str, client) -> dict:
    """A second client asks a long question and drops its socket at the first token."""
    other = Client(url)
    other.conn.send(json.dumps({"type": "ask", "question": "describe everything you see", "max_new_tokens": 48}))
    first = other.wait_for(lambda ev: ev["type"] == "token", args.timeout)
    other.conn.close()                                  # no goodbye: the tab is gone
    job_id = first["id"] if first else None
    ended = client.wait_for(lambda ev: ev["type"] == "end" and ev["job"]["id"] == job_id, args.timeout)
    after = client.ask("after the disconnect: what is there?", args.max_new_tokens, args.timeout)
    return {"orphan_started": first is not None, "orphan_end_state": ended["job"]["state"] if ended else None,
            "next_question": after["state"], "passed": bool(first and ended and after["state"] == "done")}


def two_tabs(args, url: str, client) -> dict:
    """Two clients at once: a question from one is streamed to both, with the same text."""
    other = Client(url)
    try:
        job = client.ask("two tabs: what colour is it?", args.max_new_tokens, args.timeout)
        seen = other.wait_for(lambda ev: ev["type"] == "end" and ev["job"]["id"] == job.get("id"), args.timeout)
    finally:
        other.close()
    same = seen is not None and seen["job"]["text"] == job.get("text")     # an "end" event is never empty
    return {"asker": job["state"], "other_tab_saw_end": bool(seen), "same_text": same,
            "passed": job["state"] == "done" and same}


def source_gone_and_back(args, client, folder: Path) -> dict:
    """Take the camera folder away, ask, put it back: down reported, clear answer or refusal, live again."""
    away = folder.with_name(folder.name + ".away")
    folder.rename(away)
    t0 = time.monotonic()
    down = client.wait_for(lambda ev: ev["type"] == "source" and ev["source"]["state"] in ("retrying", "stalled"),
                           args.timeout)
    t_down = time.monotonic() - t0
    during = client.ask("while the camera is gone: what is there?", args.max_new_tokens, args.timeout)
    away.rename(folder)
    t1 = time.monotonic()
    live = client.wait_for(lambda ev: ev["type"] == "source" and ev["source"]["state"] == "live", args.timeout)
    t_live = time.monotonic() - t1
    after = client.ask("camera back: what is there?", args.max_new_tokens, args.timeout)
    return {"down_reported": down is not None, "down_after_s": round(t_down, 2),
            "down_message": down["source"]["message"] if down else None,
            "question_while_down": during["state"], "live_again": live is not None,
            "live_after_s": round(t_live, 2), "question_after": after["state"],
            "passed": bool(down and live) and during["state"] in ("done", "refused", "error")
            and after["state"] == "done"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--bundle", help="bundle to start the app with (omit with --url)")
    p.add_argument("--source", default=None, help="camera source (default: a generated demo clip)")
    p.add_argument("--url", default=None, help="a running app's address (127.0.0.1) instead of starting one")
    p.add_argument("--pid", type=int, default=None, help="with --url: the app's process id")
    p.add_argument("--token", default=None, help="with --url: the app's access token, if it has one")
    p.add_argument("-n", type=int, default=200, help="questions (default 200)")
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer")
    p.add_argument("--sample", type=int, default=25, help="read RSS every this many questions")
    p.add_argument("--freeze", action="store_true", help="ask every question about one frozen frame")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the report to this file")
    p.add_argument("--slide-seconds", type=float, default=1.0, help="seconds per image of the generated camera")
    p.add_argument("--warmup", type=int, default=25,
                   help="questions after which RSS is the baseline for growth (allocator arenas fill first)")
    p.add_argument("--max-growth-pct", type=float, default=5.0, help="RSS growth after warm-up that fails the soak")
    p.add_argument("--no-scenarios", dest="scenarios", action="store_false",
                   help="only the questions (no disconnect, two-tab and source scenarios)")
    args = p.parse_args(argv)
    if args.url is None and args.bundle is None:
        p.error("give --bundle (start the app) or --url and --pid (a running app)")
    if args.url is not None and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        p.error("the soak test only talks to an app on this machine (127.0.0.1 / localhost)")
    report = soak(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    ok = (report["states"].get("done", 0) == args.n and report["rss_growth_after_warmup_pct"] < args.max_growth_pct
          and all(s["passed"] for s in report.get("scenarios", {}).values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
