"""`fusion-edge make-tiny` and `fusion-edge ask` end to end (in-process CLI main)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fusion_edge.cli import main


@pytest.mark.parametrize("llm,tower", [("phi3", "so400m"), ("llama3", "siglip2")])
@pytest.mark.slow
def test_ask_json_and_logits_out(tiny_checkpoint, reference, images, tmp_path, capsys, llm, tower):
    ckpt = tiny_checkpoint(llm, tower)
    logits_path = tmp_path / "logits.npy"
    rc = main(["ask", "--model", str(ckpt), "--image", str(images["wide"]), "--question", "What is on the table?",
               "--max-new-tokens", "8", "--json", "--logits-out", str(logits_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"text", "token_ids", "prompt", "timings", "backend"} <= out.keys()
    assert len(out["token_ids"]) == 8 and all(isinstance(t, int) for t in out["token_ids"])
    assert out["prompt"].count("<latent_image>") == 1 and out["prompt"].count("<image>") == 1
    assert out["timings"]["prompt_tokens"] > {"so400m": 729, "siglip2": 576}[tower]
    ref = reference(llm, tower)
    want = ref.answer(images["wide"], "What is on the table?", max_new_tokens=8)
    assert out["token_ids"] == want.token_ids and out["text"] == want.text
    logits = np.load(logits_path)
    assert logits.dtype == np.float32 and logits.shape == (ref.cfg.llm.vocab_size,)
    np.testing.assert_allclose(logits, want.first_logits, atol=1e-5)


@pytest.mark.slow
def test_ask_streams_text(tiny_checkpoint, images, capsys):
    ckpt = tiny_checkpoint("phi3", "so400m")
    assert main(["ask", "--model", str(ckpt), "--image", str(images["tall"]), "--question", "Hi?",
                 "--max-new-tokens", "6"]) == 0
    streamed = capsys.readouterr().out
    assert main(["ask", "--model", str(ckpt), "--image", str(images["tall"]), "--question", "Hi?",
                 "--max-new-tokens", "6", "--json"]) == 0
    assert streamed.rstrip("\n") == json.loads(capsys.readouterr().out)["text"]


@pytest.mark.parametrize("image,question,match", [
    ("corrupt", "What?", "not a readable image"),
    ("wide", "   ", "empty"),
    ("wide", "x " * 3000, "more than the model's limit"),
])
@pytest.mark.slow
def test_ask_bad_input_is_a_clear_error(tiny_checkpoint, images, capsys, image, question, match):
    rc = main(["ask", "--model", str(tiny_checkpoint("phi3", "so400m")), "--image", str(images[image]),
               "--question", question])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and match in err and "fix:" in err
    assert "Traceback" not in err


def test_make_tiny_cli(tmp_path, capsys):
    assert main(["make-tiny", str(tmp_path / "t"), "--llm", "llama3", "--tower", "siglip2", "--shards", "2"]) == 0
    assert (tmp_path / "t" / "model.safetensors.index.json").is_file()
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["model_type"] == "fusion_llama" and cfg["mm_projector_type"] == "mlp2x_gelu"
    assert cfg["query_len"] == "4,16,36,64,144" and cfg["window_size"] == 3
    total = sum(f.stat().st_size for f in (tmp_path / "t").rglob("*") if f.is_file())
    assert total < 16 * 2 ** 20          # a few MB


def test_every_plugin_command_is_registered(capsys):
    from fusion_edge.cli import PLUGIN_COMMANDS
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name, *_ in PLUGIN_COMMANDS)


def test_a_plugin_whose_import_fails_hides_only_itself(tmp_path, monkeypatch, capsys):
    """A command module whose dependency is missing stays listed, and running it is one error
    naming the extra (exit 2); a missing module of fusion-edge itself names a reinstall; the
    other commands still parse and run."""
    import sys

    import importlib

    import fusion_edge.cli as cli
    (tmp_path / "fe_broken_plugin.py").write_text("import fe_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "PLUGIN_COMMANDS", [
        cli.Command("broken", "broken", "camera", lambda: importlib.import_module("fe_broken_plugin")),
        cli.Command("absent", "absent", "bench", lambda: importlib.import_module("fusion_edge.fe_not_in_this_build"))])
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert "broken" in listing and "absent" in listing and "unavailable here" in listing
    assert main(["broken", "--some-flag", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `fusion-edge broken` needs the Python package 'fe_no_such_dependency_xyz'")
    assert "fix: pip install 'fusion-edge[camera]'" in err and "Traceback" not in err
    assert main(["absent"]) == 2
    err = capsys.readouterr().err
    assert "lacks" in err and "fusion_edge.fe_not_in_this_build" in err and "pip install --force-reinstall" in err
    assert main(["make-tiny", str(tmp_path / "t")]) == 0          # the rest of the CLI is unaffected
    sys.modules.pop("fe_broken_plugin", None)


def test_every_module_extra_pair_matches_pyproject():
    """runtime/errors.py EXTRA_OF_MODULE names, for each optional import, the extra whose
    requirements install it: checked against pyproject.toml and the installed distributions."""
    import re
    import tomllib
    from importlib.metadata import packages_distributions
    from pathlib import Path

    from fusion_edge.runtime.errors import EXTRA_OF_MODULE
    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
    dists = packages_distributions()
    for module, extra in EXTRA_OF_MODULE.items():
        listed = {norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in extras[extra]}
        assert {norm(d) for d in dists.get(module, [])} & listed, (module, extra, dists.get(module))
