"""Calibration data sets (folder, JSONL, built in), recordings of graph inputs, the CLI."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from fusion_edge.calibration.builtin import CALIB_QUESTIONS, EVAL_QUESTIONS, builtin_pairs
from fusion_edge.calibration.dataset import (CalibItem, CalibrationDataError, builtin_set, load_calibration_set)
from fusion_edge.calibration.reader import GraphFeeds
from fusion_edge.calibration.record import Recordings, record_calibration

# one xdist worker: its module fixture records calibration once
pytestmark = pytest.mark.xdist_group("test_calibration")

GOOD = ("wide", "tall", "strip", "rgba", "gray", "palette")
BAD = ("empty", "corrupt", "notimage")


# ---- data sets -----------------------------------------------------------------------------
@pytest.fixture()
def image_folder(tmp_path, images):
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in GOOD + BAD:
        shutil.copy(images[name], folder / images[name].name)
    (folder / "notes.md").write_text("not an image")
    (folder / "questions.txt").write_text("What is on the table?\n\n  Is the door open?  \nAny people?\n\n\n")
    return folder


def test_folder_pairs_round_robin_and_reports_every_bad_entry(image_folder):
    s = load_calibration_set(image_folder)
    assert s.kind == "folder"
    assert len({i.key for i in s.items}) == len(GOOD)                 # only the readable images
    assert len(s) == len(GOOD)                                       # max(6 images, 3 questions)
    assert [i.question for i in s.items[:4]] == ["What is on the table?", "Is the door open?", "Any people?",
                                                 "What is on the table?"]
    reasons = {sk.where: sk.reason for sk in s.skipped}
    assert {"empty.jpg", "corrupt.jpg", "notimage.png", "notes.md", "questions.txt:2"} == set(reasons)
    assert "empty" in reasons["empty.jpg"] and "not an image file type" in reasons["notes.md"]
    assert reasons["questions.txt:2"] == "empty question"             # trailing blank lines are not entries
    summary = s.summary(show=10)
    assert "5 bad entries skipped" in summary and "corrupt.jpg" in summary


def test_folder_with_other_questions_file_and_missing_one(image_folder, tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("\n".join(f"question {n}?" for n in range(10)))
    s = load_calibration_set(image_folder, questions=q)
    assert len(s) == 10 and s.items[7].question == "question 7?"
    (image_folder / "questions.txt").unlink()
    with pytest.raises(CalibrationDataError) as e:
        load_calibration_set(image_folder)
    assert "questions.txt" in e.value.fix


def test_jsonl_records_relative_paths_and_bad_lines(tmp_path, images):
    shutil.copy(images["wide"], tmp_path / "a.jpg")
    lines = [json.dumps({"image": "a.jpg", "question": "What is here?"}),
             "",
             json.dumps({"image": str(images["tall"]), "question": "Any cars?"}),
             json.dumps({"image": "missing.jpg", "question": "Lost?"}),
             json.dumps({"image": "a.jpg", "question": "   "}),
             "{not json",
             json.dumps({"image": "a.jpg"}),
             json.dumps(["a.jpg", "q"]),
             json.dumps({"image": str(images["corrupt"]), "question": "Broken?"})]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines))
    s = load_calibration_set(path)
    assert [(i.key.endswith("a.jpg"), i.question) for i in s.items] == [(True, "What is here?"), (False, "Any cars?")]
    reasons = {sk.where: sk.reason for sk in s.skipped}
    assert set(reasons) == {"data.jsonl:4", "data.jsonl:5", "data.jsonl:6", "data.jsonl:7", "data.jsonl:8",
                            "data.jsonl:9"}
    assert "does not exist" in reasons["data.jsonl:4"]
    assert reasons["data.jsonl:5"] == "empty question"
    assert "not valid JSON" in reasons["data.jsonl:6"]
    assert "no 'question' field" in reasons["data.jsonl:7"]
    assert "6 bad entries skipped" in s.summary()


def test_unusable_sets_raise_with_a_fix(tmp_path, images):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": str(images["empty"]), "question": "q?"}) + "\n")
    with pytest.raises(CalibrationDataError) as e:
        load_calibration_set(bad)
    assert "1 bad entries" in e.value.problem and e.value.fix
    with pytest.raises(CalibrationDataError):
        load_calibration_set(tmp_path / "nowhere")
    with pytest.raises(CalibrationDataError):
        load_calibration_set(bad, questions=bad)            # --questions is for folders


def test_builtin_set_is_deterministic_with_disjoint_eval_split():
    a, b = builtin_pairs("calib", 5), builtin_pairs("calib", 5)
    assert [k for k, _, _ in a] == [k for k, _, _ in b]
    assert np.array_equal(np.asarray(a[3][1]), np.asarray(b[3][1]))
    s = load_calibration_set(None)
    assert s.kind == "builtin" and len(s) == len(CALIB_QUESTIONS) >= 24 and not s.skipped
    ev = builtin_set("eval", 4)
    assert not {i.question for i in ev.items} & set(CALIB_QUESTIONS)
    assert set(EVAL_QUESTIONS) >= {i.question for i in ev.items}
    assert not {i.key for i in ev.items} & {i.key for i in s.items}
    calib_pixels = {np.asarray(i.image).tobytes()[:4096] for i in s.items}
    assert not any(np.asarray(i.image).tobytes()[:4096] in calib_pixels for i in ev.items)
    assert s.split(4)[1] == s.items[-4:] and s.split(100) == (s.items, [])


# ---- recordings ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recording(pipe, bundle, tmp_path_factory):
    img = builtin_pairs("calib", 1)[0][1]
    items = [CalibItem("one", img, "What is on the table?"), CalibItem("one", img, "<image>"),
             CalibItem("one", img, "Is the door open?")]
    direct = []
    out = tmp_path_factory.mktemp("rec") / "calib"
    rec = record_calibration(pipe, items, out, samples=3, source={"fingerprint": "abc"}, progress=False)
    pipe.recorder = lambda name, inputs: direct.append((name, inputs))
    pipe.ask(pipe.look(img), "Is the door open?", max_new_tokens=1)
    pipe.recorder = None
    return rec, direct


def test_recording_layout_counts_and_skips(recording, bundle):
    rec, _ = recording
    m = rec.manifest
    assert m["samples"] == 2 and m["images"] == 1                # global tiles once per image
    assert rec.graphs["vision_global"] == 1 and rec.graphs["vision_main"] == 2
    assert all(rec.graphs[f"align_{k:02d}"] == 2 for k in range(10))
    assert all(rec.graphs[f"segment_{k:02d}"] == 2 for k in range(11))
    assert len(m["record_skipped"]) == 1 and "<image>" in m["record_skipped"][0]["reason"]
    assert m["dtype"] == "float16" and m["bytes"] > 0 and m["options"]["query_len"] == 36
    assert (rec.path / "segment_03" / "000001.npz").is_file()


def test_recorded_inputs_read_back_as_the_pipeline_fed_them(recording, pipe):
    rec, direct = recording
    want = dict(direct)                                         # the last sample, recorded directly
    for name in ("vision_main", "align_04", "segment_02", "segment_10"):
        got = list(rec.samples(name))[-1]
        assert set(got) == set(want[name])
        for k, v in want[name].items():
            assert got[k].dtype == (np.bool_ if v.dtype == np.bool_ else np.float32)
            assert got[k].shape == v.shape
            np.testing.assert_allclose(got[k], v, rtol=2e-3, atol=2e-3)   # float16 storage
    seg = list(rec.samples("segment_01"))[0]
    assert seg["hidden"].shape[:2] == (1, seg["cos"].shape[0]) and seg["past_k_1"].shape[1] == 0


def test_graph_feeds_drive_the_real_graph(recording, pipe, bundle):
    import onnxruntime as ort
    rec, _ = recording
    feeds = GraphFeeds(rec, "vision", ["pixels", "instruct_embeds", "instruct_keep"])
    assert len(feeds) == 3                                       # 2 main-tile calls + 1 global call
    sess = ort.InferenceSession(str(bundle / "vision.onnx"), providers=["CPUExecutionProvider"])
    outs = []
    while (f := feeds.get_next()) is not None:
        outs.append(sess.run(None, f)[0].shape)
    assert outs[-1][0] == 4 and outs[0][0] == 1
    seg = GraphFeeds(rec, "segment_01", pipe.bundle.components["segment_01"]["inputs"])
    assert set(seg.get_next()) == set(pipe.bundle.components["segment_01"]["inputs"])
    with pytest.raises(CalibrationDataError):
        GraphFeeds(rec, "segment_99")
    with pytest.raises(CalibrationDataError):
        rec.check_source("another-fingerprint")


def test_max_mb_stops_early_with_a_notice(pipe, tmp_path, caplog):
    items = [CalibItem(k, img, q) for k, img, q in builtin_pairs("calib", 3)]
    caplog.set_level(logging.INFO, logger="fusion_edge")
    rec = record_calibration(pipe, items, tmp_path / "small", samples=3, max_mb=0.5, progress=False)
    notices = caplog.messages
    assert rec.manifest["samples"] == 1 and any("--max-mb" in n for n in notices)
    with pytest.raises(CalibrationDataError):             # exists, no --overwrite
        record_calibration(pipe, items, tmp_path / "small", samples=1, progress=False)
    assert not list(tmp_path.glob(".small.partial-*"))


def test_cli_calibrate(bundle, tmp_path, images, capsys):
    from fusion_edge.cli import main
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"image": str(images["wide"]), "question": "Where is the box?"}) + "\n"
                    + json.dumps({"image": str(images["empty"]), "question": "x"}) + "\n"
                    + json.dumps({"image": str(images["tall"]), "question": "Any people?"}) + "\n")
    out = tmp_path / "calib"
    assert main(["calibrate", str(bundle), "--data", str(data), "-o", str(out), "--samples", "1",
                 "--holdout", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "1 bad entries skipped" in text and "empty.jpg" in text
    m = Recordings.open(out).manifest
    assert m["samples"] == 1 and m["dataset"]["kind"] == "jsonl" and len(m["dataset"]["skipped"]) == 1
    assert m["held_out"] == [{"image": str(images["tall"]), "question": "Any people?"}]
    assert m["source"]["fingerprint"]
    assert main(["calibrate", str(bundle), "-o", str(out), "--quiet"]) == 2     # exists: typed error
    assert "--overwrite" in capsys.readouterr().err
