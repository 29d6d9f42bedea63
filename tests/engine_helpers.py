"""Helpers shared by the LLM-engine tests (tests/ and tests/gpu/)."""
from __future__ import annotations

import numpy as np


def greedy_tokens(engine, seed: int, steps: int = 10, rows: int = 12, capacity: int = 40) -> list[int]:
    """Prefill `rows` random embedding rows (from `seed`) into a fresh cache of `capacity`
    positions, then `steps` greedy decode steps → the decoded token ids."""
    embeds = np.random.default_rng(seed).standard_normal((rows, engine.cfg.llm.hidden_size)).astype(np.float32)
    engine.reserve(capacity)
    tok, out = int(np.argmax(engine.prefill(embeds))), []
    for _ in range(steps):
        tok = engine.decode_greedy(tok)
        out.append(tok)
    return out
