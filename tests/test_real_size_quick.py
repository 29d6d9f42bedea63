"""The quick real-width check (bench/real_size.py --llm-layers/--vision-layers, issue 25):
the depths it cuts must still give a valid checkpoint — interaction schedule inside the
shorter LLM, early/late split inside the shorter tower, a reference that loads and answers.
Checked on TINY widths (the real widths take minutes); the plumbing of the real-width maker
is checked without writing its weights."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from fusion_edge.bench import real_size
from fusion_edge.export.tiny import SIZES, interaction_schedule, make_tiny_checkpoint, preset_size, scaled_early_layers
from fusion_edge.runtime.config import TOWER_TYPES, load_fusion_config, parse_fusion_config
from fusion_edge.runtime.errors import ConfigError


def test_quick_sizes_keep_the_real_widths_and_cut_the_depths():
    full = preset_size("phi3.5-mini", "siglip2")
    assert real_size.checkpoint_size() == full                   # no options: the full run, unchanged
    quick = real_size.checkpoint_size(4, 6)
    assert (quick.layers, quick.tower_layers) == (4, 6)
    assert replace(quick, layers=full.layers, tower_layers=None) == full


def test_schedule_and_split_fit_every_depth_and_match_the_released_ones():
    assert interaction_schedule(32)["num_of_vision_sampler_layers"] == 10       # released: 0, 3, ..., 27
    assert scaled_early_layers("siglip2", 39) == TOWER_TYPES["siglip2"]["early_layers"] == 19
    assert scaled_early_layers("so400m", 26) == TOWER_TYPES["so400m"]["early_layers"] == 13
    for n in range(2, 33):
        s = interaction_schedule(n)
        layers = [s["start_of_vision_sampler_layers"] + k * s["stride_of_vision_sampler_layers"]
                  for k in range(s["num_of_vision_sampler_layers"])]
        assert layers and layers[-1] < n - 1 and layers == list(range(0, n - 1, 3))[:10]   # a layer after each
    for m in range(2, 40):
        e = scaled_early_layers("siglip2", m)
        assert 1 <= e and 2 * e <= m


def test_quick_steps_pass_the_depths_to_the_maker_and_build_the_subset(tmp_path):
    from fusion_edge.cli import _parser
    got = real_size.steps(tmp_path, 2, 2, llm_layers=4, vision_layers=6, bundles=["gguf-q8_0"])
    assert [n for n, _, _ in got] == ["checkpoint", "gguf-q8_0"]       # no fp32 export, no calibration
    make = got[0][2]
    assert make[make.index("--llm-layers") + 1] == "4" and make[make.index("--vision-layers") + 1] == "6"
    (tmp_path / "calib").mkdir()            # --calib must exist when parsed (a run's calibrate step made it)
    onnx = real_size.steps(tmp_path, 2, 2, bundles=["onnx-int8"], vision="int8")
    assert [n for n, _, _ in onnx] == ["checkpoint", "onnx-fp32", "calibrate", "onnx-int8"]
    assert _parser().parse_args(onnx[-1][2][3:]).vision_precision == "int8"
    full = real_size.steps(tmp_path, 2, 2)
    assert "--llm-layers" not in full[0][2] and [n for n, _, _ in full][3:] == list(real_size.BUNDLES)
    assert all(_parser().parse_args(c[3:]).vision_precision == "fp32" for n, _, c in full if n.startswith("onnx-int"))


def test_shortened_checkpoint_loads_and_the_reference_answers(tmp_path):
    from fusion_edge.export.reference import FusionReference
    ck = make_tiny_checkpoint(tmp_path / "ck", "phi3", "siglip2", size=replace(SIZES["tiny"], layers=4, tower_layers=6))
    cfg = load_fusion_config(ck)
    assert cfg.llm.num_layers == 4 and cfg.interaction_layers == (0,)
    assert cfg.tower.num_layers == 6 and cfg.tower.early_layers == 3
    assert json.loads((ck / "config.json").read_text())["mm_vision_early_layers"] == 3
    assert real_size.check_depths(ck, 4, 6)["interaction_layers"] == [0]
    from fusion_edge.export.onnx_graphs import segment_plan     # every interaction runs in the bundles' prefill
    assert [p["align_after"] for p in segment_plan(cfg)] == [0, None]
    ref = FusionReference.load(str(ck))
    assert len(ref.model.vision.layers) == 6
    image = tmp_path / "x.jpg"
    Image.new("RGB", (320, 240), (10, 200, 30)).save(image)
    logits = ref.ask(ref.look(str(image)), "What is this?", max_new_tokens=2).first_logits
    assert np.isfinite(np.asarray(logits)).all()


def test_early_override_is_checked_and_absent_from_released_configs(tmp_path):
    ck = make_tiny_checkpoint(tmp_path / "ck", "phi3", "siglip2", size=replace(SIZES["tiny"], layers=4, tower_layers=6))
    raw = json.loads((ck / "config.json").read_text())
    for bad in (0, 4, 2.5):
        with pytest.raises(ConfigError):
            parse_fusion_config(raw | {"mm_vision_early_layers": bad}, ck)
    cfg = parse_fusion_config(raw | {"mm_vision_early_layers": 2}, ck)
    assert cfg.tower.early_layers == 2 and type(cfg).from_dict(cfg.to_dict()) == cfg    # bundles keep it
    released = {k: v for k, v in raw.items() if k != "mm_vision_early_layers"}
    plain = parse_fusion_config(released, ck)
    assert plain.tower.early_layers == 19 and "early_override" not in plain.to_dict()["tower"]
