"""The bad-input corpus for images and questions (tests/corpus/), through the Python API and
the command line (`ask`, `calibrate`): every case either answers (images: preprocessed
exactly as upstream's Pillow loading; questions: the PyTorch reference's token ids; the
command line: the API's token ids), or fails with its typed error — exit code 2, one `error:` and one `fix:` line, no
traceback — within a bounded time, writing nothing half."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from fusion_edge.cli import main
from fusion_edge.runtime import errors
from fusion_edge.runtime.preprocess import static_hd_tiles
from fusion_edge.runtime.prompt import TEMPLATES
from tests.corpus import assert_clean_failure, bounded
from tests.corpus import images as image_corpus
from tests.corpus import questions as question_corpus

STEPS = 3


@pytest.fixture(scope="module")
def ref(reference):
    return reference("phi3", "so400m")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


# ---- images ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,make,expect", image_corpus.CASES, ids=[c[0] for c in image_corpus.CASES])
@pytest.mark.slow
def test_image_case_api_and_cli(name, make, expect, corpus_dir, bundle, pipe, capsys):
    path = make(corpus_dir)
    q = question_corpus.QUESTION
    if expect == "answers":
        # what the reference sees: upstream opens with Pillow and converts to RGB (the
        # reference and the runtime share preprocessing, so compare with upstream's loading)
        with Image.open(path) as img:
            upstream = static_hd_tiles(img.convert("RGB"))
        ours = static_hd_tiles(path)
        np.testing.assert_array_equal(ours.main, upstream.main)
        np.testing.assert_array_equal(ours.global_tiles, upstream.global_tiles)
        bounded(lambda: pipe.ask(pipe.look(path), q, max_new_tokens=STEPS))
        want = pipe.last_result
    else:
        with pytest.raises(getattr(errors, expect)):
            bounded(lambda: pipe.look(path))
    rc = bounded(lambda: main(["ask", "--bundle", str(bundle), "--image", str(path), "--question", q,
                               "--max-new-tokens", str(STEPS), "--json"]))
    out, err = capsys.readouterr()
    if expect == "answers":
        assert rc == 0 and json.loads(out)["token_ids"] == list(want.token_ids)
    else:
        assert_clean_failure(rc, err)


@pytest.mark.slow
def test_calibrate_skips_bad_images_and_names_them(corpus_dir, bundle, capsys, tmp_path):
    """A calibration folder with every broken image of the corpus and one good one: the bad ones
    are skipped with their reasons, the good one is recorded."""
    data = tmp_path / "data"
    data.mkdir()
    bad = [make(data) for _, make, expect in image_corpus.CASES if expect != "answers"]
    image_corpus.draw_scene(320, 240, 31).save(data / "good.jpg")
    (data / "questions.txt").write_text("What is on the table?\n")
    rc = bounded(lambda: main(["calibrate", str(bundle), "--data", str(data), "-o", str(tmp_path / "calib"),
                               "--samples", "1", "--holdout", "0", "--quiet"]))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"{len(bad)} bad entries skipped" in out
    shown = re.findall(r"skipped (\S+): ", out)                 # the summary names the first five
    assert len(shown) == min(5, len(bad)) and set(shown) <= {p.name for p in bad}
    assert (tmp_path / "calib" / "calibration.json").is_file()


def test_calibrate_with_only_bad_images_fails_cleanly_and_writes_nothing(bundle, capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for _, make, expect in image_corpus.CASES:
        if expect != "answers":
            make(data)
    (data / "questions.txt").write_text("What is on the table?\n")
    rc = bounded(lambda: main(["calibrate", str(bundle), "--data", str(data), "-o", str(tmp_path / "calib"),
                               "--quiet"]))
    assert_clean_failure(rc, capsys.readouterr().err)
    assert not (tmp_path / "calib").exists() and not list(tmp_path.glob(".calib*"))


# ---- questions -----------------------------------------------------------------------------
QUESTION_CASES = question_corpus.CASES + question_corpus.template_token_cases(TEMPLATES["phi_3"].control_tokens)


@pytest.mark.parametrize("name,question,expect", QUESTION_CASES, ids=[c[0] for c in QUESTION_CASES])
@pytest.mark.slow
def test_question_case_api_and_cli(name, question, expect, images, bundle, pipe, ref, capsys):
    scene = pipe.look(images["wide"])
    if expect == "answers":
        bounded(lambda: pipe.ask(scene, question, max_new_tokens=STEPS))
        want = ref.answer(images["wide"], question, max_new_tokens=STEPS)
        assert list(pipe.last_result.token_ids) == list(want.token_ids)
    else:
        with pytest.raises(getattr(errors, expect)):
            bounded(lambda: pipe.ask(scene, question, max_new_tokens=STEPS))
    rc = bounded(lambda: main(["ask", "--bundle", str(bundle), "--image", str(images["wide"]), "--question",
                               question, "--max-new-tokens", str(STEPS), "--json"]))
    out, err = capsys.readouterr()
    if expect == "answers":
        assert rc == 0 and json.loads(out)["token_ids"] == list(want.token_ids)
    else:
        assert_clean_failure(rc, err)


def _question_of_length(pipe, seq_len: int) -> str:
    """A question whose prompt expands to exactly `seq_len` tokens ("▁a" is one token)."""
    from fusion_edge.runtime.prompt import build_prompt

    def length(n: int) -> int:
        return build_prompt(pipe.tokenizer, pipe.cfg.template, "What" + " a" * n + "?", pipe.image_tokens,
                            pipe.default_query_len).seq_len
    n = seq_len - length(0)
    assert length(n) == seq_len
    return "What" + " a" * n + "?"


@pytest.mark.slow
def test_question_at_the_length_limit_answers_and_one_over_is_refused(images, bundle, pipe, ref, capsys):
    limit = pipe.cfg.tokenizer_model_max_length
    at = _question_of_length(pipe, limit)
    scene = pipe.look(images["wide"])
    pipe.ask(scene, at, max_new_tokens=2)
    assert list(pipe.last_result.token_ids) == list(ref.answer(images["wide"], at, max_new_tokens=2).token_ids)
    over = _question_of_length(pipe, limit + 1)
    with pytest.raises(errors.PromptError, match=f"more than the model's limit of {limit}"):
        pipe.ask(scene, over, max_new_tokens=2)
    rc = main(["ask", "--bundle", str(bundle), "--image", str(images["wide"]), "--question", over, "--json"])
    assert_clean_failure(rc, capsys.readouterr().err)


# ---- generation options ----------------------------------------------------------------------
OPTION_CASES = [
    ("negative temperature", ["--temperature", "-1"]),
    ("NaN temperature", ["--temperature", "nan"]),
    ("top_p zero", ["--temperature", "0.7", "--top-p", "0"]),
    ("top_p above one", ["--temperature", "0.7", "--top-p", "1.5"]),
    ("negative top_k", ["--temperature", "0.7", "--top-k", "-3"]),
]


@pytest.mark.parametrize("name,args", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_sampling_option_out_of_range_is_a_clean_error(name, args, images, bundle, capsys):
    rc = bounded(lambda: main(["ask", "--bundle", str(bundle), "--image", str(images["wide"]), "--question",
                               question_corpus.QUESTION, "--max-new-tokens", "2", *args]))
    err = capsys.readouterr().err
    assert_clean_failure(rc, err)
    assert "sampling option out of range" in err
