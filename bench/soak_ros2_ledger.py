"""The accounting of the ROS 2 soak: which question got what, read from what the client received.

The node's contract (docs/ros2.md): a question it accepts (status `queued` or `running`
with a `job`) ends exactly once (a final status: done, cancelled or error, same job id) and
a done one is published once on ~/answer; a question it refuses gets one `event: error`
status with no job and `last_error.question` = the question. ~/answer and ~/answer_partial
carry only text, so questions are told apart by their text (the soak makes each unique)
and jobs by the id in their status.

    account(asked, events) → {"counts": {...}, "questions": {text: outcome}, "latency": {...}}

asked:  Asked records, in the order published.
events: (output, monotonic arrival time, data) as NodeClient.log keeps them, every client's
        log concatenated (the soak replaces its client once; times share one clock).
"""
from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from dataclasses import dataclass

FINAL = ("done", "cancelled", "error")


@dataclass
class Asked:
    i: int                       # 1-based question number in the soak
    text: str                    # unique per question
    phase: str                   # steady | camera-gone | burst
    t: float                     # monotonic time the question was published
    stamp: float | None = None   # header stamp of the frame it should be about (None: not checked)
    sequential: bool = True      # the soak waited for its outcome before the next question


def account(asked: list[Asked], events: list[tuple[str, float, str]]) -> dict:
    jobs, refusals, finals = _read_status(events)
    t0 = min((a.t for a in asked), default=math.inf)
    answers = Counter(d for o, t, d in events if o == "answer" and t >= t0)
    outcomes: dict[str, dict] = {}
    done_texts: Counter[str] = Counter()
    for a in asked:
        out = _outcome(a, jobs.get(a.text, set()), refusals.get(a.text, 0), finals)
        outcomes[a.text] = out
        if out["state"] == "done":
            done_texts[out["answer"]] += 1
    counts = Counter(o["verdict"] for o in outcomes.values())
    counts.update(f"final_{o['state']}" for o in outcomes.values() if o["state"] in FINAL)
    frames = Counter(o["frame"] for o in outcomes.values() if o["frame"] is not None)
    return {"counts": {"asked": len(asked), "accepted": sum(o["accepted"] for o in outcomes.values()),
                       "answered": counts["final_done"], "cancelled": counts["final_cancelled"],
                       "errored": counts["final_error"], "refused": counts["refused"],
                       "lost": counts["lost"], "duplicated": counts["duplicated"], "unseen": counts["unseen"],
                       # ~/answer against the done finals (text multisets: the topic carries no id)
                       "answer_topic_missing": sum((done_texts - answers).values()),
                       "answer_topic_extra": sum((answers - done_texts).values()),
                       "about_expected_frame": frames["expected"], "about_other_frame": frames["other"]},
            "questions": outcomes, "latency": latency(asked, events, outcomes)}


def _read_status(events):
    """→ (question text → job ids seen for it, question text → refusals, job id → final jobs)."""
    jobs: dict[str, set] = {}
    refusals: Counter = Counter()
    finals: dict[str, list] = {}
    for out, t, data in events:
        if out != "status":
            continue
        s = json.loads(data)
        job = s.get("job")
        if job is not None and job.get("kind") == "ask":
            jobs.setdefault(job["question"], set()).add(job["id"])
            if job["state"] in FINAL:
                finals.setdefault(job["id"], []).append((t, job))
        elif s["event"] == "error" and (s.get("last_error") or {}).get("where") == "question":
            refusals[s["last_error"].get("question")] += 1
    return jobs, refusals, finals


def _outcome(a: Asked, ids: set, refused: int, finals: dict) -> dict:
    """verdict: ok | refused | lost (accepted, never ended) | duplicated (two jobs, two ends, or
    accepted and refused) | unseen (the node said nothing about it)."""
    ends = [f for i in ids for f in finals.get(i, [])]
    out = {"i": a.i, "phase": a.phase, "accepted": bool(ids), "ids": sorted(ids), "refusals": refused,
           "ends": len(ends), "state": ends[0][1]["state"] if ends else None,
           "answer": ends[0][1]["text"] if ends else None, "end_t": ends[0][0] if ends else None,
           "frame": None}
    if len(ids) > 1 or len(ends) > 1 or refused > 1 or (ids and refused):
        out["verdict"] = "duplicated"
    elif ids:
        out["verdict"] = "ok" if ends else "lost"
    else:
        out["verdict"] = "refused" if refused else "unseen"
    if ends and a.stamp is not None and out["state"] == "done":
        seen = ends[0][1]["frame"]["time"]
        out["frame"] = "expected" if abs(seen - a.stamp) < 1e-6 else "other"
    return out


def latency(asked: list[Asked], events, outcomes: dict) -> dict:
    """Seconds from publishing a question to: its first ~/answer_partial and its ~/answer (only
    questions asked one at a time, whose window up to the next question holds only their
    messages), and its final status (every answered question; a burst's includes the wait)."""
    first: list[float] = []
    answer: list[float] = []
    final: dict[str, list[float]] = {"sequential": [], "burst": []}
    events = sorted(events, key=lambda e: e[1])
    times = [t for _, t, _ in events]
    bounds = [a.t for a in asked] + [math.inf]
    for k, a in enumerate(asked):
        out = outcomes[a.text]
        if out["state"] != "done":
            continue
        final["sequential" if a.sequential else "burst"].append(out["end_t"] - a.t)
        if not a.sequential:
            continue
        window = events[bisect.bisect_left(times, a.t):bisect.bisect_left(times, bounds[k + 1])]
        partial = next((t for o, t, _ in window if o == "answer_partial"), None)
        full = next((t for o, t, _ in window if o == "answer"), None)
        if partial is not None:
            first.append(partial - a.t)
        if full is not None:
            answer.append(full - a.t)
    return {"first_partial_s": summary(first), "answer_s": summary(answer),
            "final_status_s": summary(final["sequential"]), "burst_final_status_s": summary(final["burst"])}


def summary(xs: list[float]) -> dict | None:
    """p50 / p95 (nearest rank) / max in ms, and the count; None when empty."""
    if not xs:
        return None
    s = sorted(xs)

    def rank(q):
        return s[max(0, min(len(s) - 1, math.ceil(q * len(s) - 1e-9) - 1))]
    return {"n": len(s), "p50_ms": round(rank(0.5) * 1000, 1), "p95_ms": round(rank(0.95) * 1000, 1),
            "max_ms": round(s[-1] * 1000, 1)}
