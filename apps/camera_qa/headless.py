"""`--no-browser`: no web server; the watch question's answers are printed to the terminal
(for robots and boxes without a screen). Source problems go to stderr."""
from __future__ import annotations

import sys
import threading
import time


def format_answer(job: dict) -> str:
    st = job.get("stats") or {}
    when = time.strftime("%H:%M:%S", time.localtime(job["frame"]["time"]))
    if job["state"] == "error":
        return f"[{when}] {job['frame']['key']} error: {job['error']}"
    figures = (f"vision {st.get('vision_s', 0):.2f}s, prefill {st.get('prefill_s', 0):.2f}s, "
               f"decode {st.get('decode_s', 0):.2f}s, {st.get('tokens_per_s', 0):.1f} tok/s")
    text = " ".join(job["text"].split())            # one line per answer, whatever the model wrote
    return f"[{when}] {job['frame']['key']} {text}  ({figures})"


def run_headless(cam, question: str, interval: float, max_answers: int | None = None,
                 out=sys.stdout, err=sys.stderr) -> int:
    """Watch until Ctrl-C, or until max_answers answers were printed. Returns an exit code."""
    done = threading.Event()
    count = [0]

    def listener(event: dict) -> None:
        if event["type"] == "source":
            st = event["source"]
            print(f"source: {st['message']}" + (f" ({st['fix']})" if st.get("fix") else ""), file=err, flush=True)
        elif event["type"] == "end" and event["job"]["kind"] == "watch" and event["job"]["state"] != "cancelled":
            print(format_answer(event["job"]), file=out, flush=True)
            count[0] += 1
            if max_answers and count[0] >= max_answers:
                done.set()

    unsubscribe = cam.hub.subscribe(listener)
    try:
        cam.set_watch(True, question, interval)
        print(f"watching {cam.source.label} every {interval:g} s: {question!r} (Ctrl-C stops)", file=err, flush=True)
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        print("stopped", file=err)
    finally:
        unsubscribe()
    return 0
