"""Issue 28 item 1: a bad `ask` option is one clear error (exit 2, one `error:` and one `fix:`
line, no traceback) raised before any work, so nothing is lost; through the real CLI on both
the --model (PyTorch reference) and the --bundle (runtime pipeline) paths."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fusion_edge.cli import main
from fusion_edge.runtime.errors import FusionEdgeError, OptionError, PromptError
from fusion_edge.runtime.prompt import check_max_new_tokens, check_room
from fusion_edge.runtime.sampling import SEED_MAX, Sampler

QUESTION = "What is on the table?"

# (case id, extra CLI args ({tmp} is the test's folder), words the error must contain)
BAD_OPTIONS = [
    ("max-new-tokens-0", ["--max-new-tokens", "0"], "max_new_tokens must be a whole number of at least 1, got 0"),
    ("max-new-tokens-negative", ["--max-new-tokens", "-3"], "at least 1, got -3"),
    # fits the context alone (≤ 131072) but not with the ~800-token prompt: the prompt-aware check
    ("max-new-tokens-beyond-context", ["--max-new-tokens", "130284"], "and 130284 new tokens pass the model's context"),
    ("max-new-tokens-alone-beyond-context", ["--max-new-tokens", "200000"], "200000 exceeds the model's context"),
    ("temperature-inf", ["--temperature", "inf"], "sampling option out of range: temperature inf"),
    ("temperature-nan", ["--temperature", "nan"], "sampling option out of range: temperature nan"),
    ("top-p-0", ["--temperature", "0.7", "--top-p", "0"], "sampling option out of range: top_p 0.0"),
    ("top-p-1.5", ["--temperature", "0.7", "--top-p", "1.5"], "sampling option out of range: top_p 1.5"),
    ("top-k-negative", ["--temperature", "0.7", "--top-k", "-1"], "sampling option out of range: top_k -1"),
    ("seed-negative", ["--seed", "-1"], "seed -1 is out of range"),
    ("seed-2**64", ["--seed", str(2 ** 64)], f"seed {2 ** 64} is out of range"),
    ("query-len-0", ["--query-len", "0"], "query_len 0 is not one the checkpoint was trained with"),
    ("logits-out-txt", ["--logits-out", "{tmp}/logits.txt"], "does not end in .npy"),
    ("logits-out-folder", ["--logits-out", "{tmp}/folder.npy"], "exists and is not a regular file"),
    ("logits-out-missing-folder", ["--logits-out", "{tmp}/missing/logits.npy"], "the folder {tmp}/missing does not"),
]
FIXES = {"max-new-tokens-beyond-context": "lower --max-new-tokens to ",
         "max-new-tokens-alone-beyond-context": "lower --max-new-tokens below ",
         "seed-2**64": f"from 0 to {SEED_MAX}", "logits-out-missing-folder": "mkdir -p {tmp}/missing"}


@pytest.fixture(scope="module")
def sources(tiny_checkpoint, onnx_bundle) -> dict[str, list[str]]:
    return {"model": ["--model", str(tiny_checkpoint("phi3", "so400m"))],
            "bundle": ["--bundle", str(onnx_bundle("phi3", "so400m"))]}


@pytest.fixture
def no_image_work(monkeypatch):
    """Encoding the image is the first real work on both paths: a bad option never gets there."""
    from fusion_edge.export.reference import FusionReference
    from fusion_edge.runtime.pipeline import Pipeline

    def refuse(self, image):
        raise AssertionError("the image was encoded before the options were checked")
    monkeypatch.setattr(Pipeline, "look", refuse)
    monkeypatch.setattr(FusionReference, "look", refuse)


def one_error(err: str) -> None:
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    assert sum(line.strip().startswith("fix:") for line in lines) == 1, err
    assert all(line.startswith(("error:", "  fix:", "warning:")) for line in lines), err   # nothing else


@pytest.mark.parametrize("source", ["model", "bundle"])
@pytest.mark.parametrize("case,extra,words", BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
@pytest.mark.slow
def test_bad_option_is_one_clear_error_before_any_work(case, extra, words, source, sources, images, tmp_path,
                                                       no_image_work, capsys):
    (tmp_path / "folder.npy").mkdir()
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    keep = tmp_path / "kept.npy"                 # a good --logits-out beside the bad option: never written
    logits = [] if "--logits-out" in extra else ["--logits-out", str(keep)]
    rc = main(["ask", *sources[source], "--image", str(images["wide"]), "--question", QUESTION, *logits, *extra])
    out, err = capsys.readouterr()
    assert rc == 2, err
    one_error(err)
    assert words.replace("{tmp}", str(tmp_path)) in err, err
    if case in FIXES:
        assert FIXES[case].replace("{tmp}", str(tmp_path)) in err.split("fix:", 1)[1], err
    assert out == ""                              # nothing was generated or streamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.npy"]       # nothing written
    assert (tmp_path / "folder.npy").is_dir() and not any((tmp_path / "folder.npy").iterdir())


def test_the_beyond_context_case_fits_the_context_alone(reference):
    """130284 tests the prompt-aware check: it fits the tiny model's context alone, not with
    QUESTION's prompt (793 tokens: 130280 is the most that fits); 200000 does not fit alone."""
    ref = reference("phi3", "so400m")
    context, prompt = ref.cfg.llm.max_position_embeddings, ref.layout(QUESTION, ref.cfg.default_query_len).seq_len
    assert prompt + 130284 - 1 > context >= 130284 and 200000 > context


@pytest.mark.parametrize("source", ["model", "bundle"])
def test_good_logits_out_writes_exactly_that_file(source, sources, tiny_checkpoint, images, tmp_path, capsys):
    (tmp_path / "FIRST.NPY").write_bytes(b"old")          # an existing file is replaced; upper case suffix:
    rc = main(["ask", *sources[source], "--image", str(images["wide"]), "--question", QUESTION,   # np.save(path)
               "--max-new-tokens", "2", "--json", "--logits-out", str(tmp_path / "FIRST.NPY")])   # would add .npy
    assert rc == 0, capsys.readouterr().err
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FIRST.NPY"]
    logits = np.load(tmp_path / "FIRST.NPY")
    vocab = json.loads((tiny_checkpoint("phi3", "so400m") / "config.json").read_text())["vocab_size"]
    assert logits.dtype == np.float32 and logits.shape == (vocab,)


def test_pipeline_ask_checks_options_when_called_not_when_iterated(onnx_bundle):
    """A streaming caller gets the error from ask() itself; scene None: nothing of it is used."""
    from fusion_edge.runtime.pipeline import Pipeline
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"))
    context, what = pipe.context_limit()
    assert what == "the model's context"
    for kw, err in (({"max_new_tokens": context + 1}, "exceeds the model's context"),
                    ({"max_new_tokens": context}, "pass the model's context"),
                    ({"max_new_tokens": 0}, "at least 1"),
                    ({"query_len": 0}, "query_len 0"),
                    ({"temperature": float("nan")}, "temperature nan"),
                    ({"seed": -1}, "seed -1")):
        with pytest.raises(FusionEdgeError, match=err):
            pipe.ask(None, QUESTION, stream=True, **kw)


# ---- check_room / check_max_new_tokens ------------------------------------------------------
@pytest.mark.parametrize("prompt,max_new,context,ok", [
    (10, 91, 100, True),          # prompt + max_new - 1 == context: the last token is never fed back
    (10, 92, 100, False),
    (1, 100, 100, True),
    (1, 101, 100, False),
    (100, 1, 100, True),
    (101, 1, 100, False),
])
def test_check_room_boundaries(prompt, max_new, context, ok):
    if ok:
        check_room(prompt, max_new, context)
        return
    with pytest.raises(PromptError, match=f"the prompt \\({prompt} tokens\\) and {max_new} new tokens pass") as e:
        check_room(prompt, max_new, context)
    want = f"lower --max-new-tokens to {context - prompt + 1}" if prompt <= context else "ask a shorter question"
    assert want in e.value.fix


def test_check_room_names_the_limit():
    with pytest.raises(PromptError, match="pass the bundle's context of 2048 positions"):
        check_room(2000, 50, 2048, "the bundle's context")


@pytest.mark.parametrize("max_new", [0, -3, 2.0, 1.5, True, "3", None])
def test_max_new_tokens_must_be_a_positive_whole_number(max_new):
    with pytest.raises(PromptError, match="whole number of at least 1"):
        check_max_new_tokens(max_new)
    with pytest.raises(PromptError, match="whole number of at least 1"):
        check_room(1, max_new, 100)


def test_max_new_tokens_alone_against_the_context():
    check_max_new_tokens(100, 100)
    check_max_new_tokens(np.int64(7), 100)
    check_max_new_tokens(10 ** 9)                       # no context: only the lower bound
    with pytest.raises(PromptError, match="101 exceeds the model's context of 100 positions") as e:
        check_max_new_tokens(101, 100)
    assert "lower --max-new-tokens below 100" in e.value.fix and "prompt (0 tokens)" not in str(e.value)


# ---- Sampler seed bounds ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [None, 0, 1, SEED_MAX, np.uint64(SEED_MAX), np.int64(5)])
def test_seed_in_range_is_accepted(seed):
    s, t = Sampler(0.8, seed=seed), Sampler(0.8, seed=seed)
    logits = np.linspace(0, 1, 50)
    if seed is not None:                                    # the same seed, the same tokens
        assert [s(logits) for _ in range(8)] == [t(logits) for _ in range(8)]


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 2 ** 70, 1.5, True, "7"])
def test_seed_out_of_range_is_an_option_error(seed):
    with pytest.raises(OptionError, match="seed .* is out of range"):
        Sampler(seed=seed)


@pytest.mark.parametrize("kw", [{"temperature": float("inf")}, {"temperature": float("nan")},
                                {"temperature": -0.1}, {"top_p": 0}, {"top_p": 1.5}, {"top_p": float("nan")},
                                {"top_k": -1}])
def test_sampling_options_out_of_range(kw):
    with pytest.raises(OptionError, match="sampling option out of range"):
        Sampler(**kw)
