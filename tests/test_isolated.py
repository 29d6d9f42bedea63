"""A step run in a child process (export/isolated.py): results, log records and typed errors come
back (the records on the loggers of the same names here); an untyped error or a native crash becomes an error here, and this process goes on. The
end-to-end case crashes llama.cpp's prefill for real inside a gguf export's verification."""
from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from fusion_edge.cli import main
from fusion_edge.export.isolated import IsolatedStepError, run_isolated
from fusion_edge.runtime.errors import PromptError

# a logger of the package: its records in the child travel back (export/isolated.py)
log = logging.getLogger("fusion_edge.tests.isolated")


def square(x):
    log.info(f"squaring {x}")
    return {"x": x, "square": x * x}


def refuse():
    raise PromptError("the question is empty.", "ask something")


def untyped():
    return {}["missing"]


def segfault():
    log.info("about to read address 0")
    ctypes.string_at(0)


def test_the_result_and_the_log_lines_come_back(caplog):
    caplog.set_level(logging.INFO, logger="fusion_edge")
    assert run_isolated(square, 7) == {"x": 7, "square": 49}
    assert caplog.messages == ["squaring 7"]
    assert [(r.name, r.levelno) for r in caplog.records] == [(log.name, logging.INFO)]     # same logger and level


def test_a_typed_error_comes_back_with_its_type_problem_and_fix():
    with pytest.raises(PromptError) as e:
        run_isolated(refuse)
    assert (e.value.problem, e.value.fix) == ("the question is empty.", "ask something")


def test_an_untyped_error_comes_back_with_its_traceback():
    with pytest.raises(IsolatedStepError, match="KeyError: 'missing'") as e:
        run_isolated(untyped, what="the lookup", fix="look elsewhere")
    assert "in untyped" in e.value.problem and e.value.fix == "look elsewhere"


def test_a_native_crash_is_an_error_naming_the_signal_and_the_frames(caplog):
    caplog.set_level(logging.INFO, logger="fusion_edge")
    with pytest.raises(IsolatedStepError) as e:
        run_isolated(segfault, what="reading address 0", fix="do not")
    assert e.value.problem.startswith("reading address 0 crashed: the process died with SIGSEGV, in ")
    assert "segfault (test_isolated.py:" in e.value.problem and e.value.fix == "do not"
    assert caplog.messages == ["about to read address 0"]
    assert run_isolated(square, 3)["square"] == 9       # and the next step still runs


def test_a_script_without_a_main_guard_is_not_run_again_in_the_child(tmp_path):
    """multiprocessing's spawn would re-import the caller's __main__: an unguarded user script
    (exporting at top level) would run again inside the child. The child must not import it."""
    (tmp_path / "helper.py").write_text("import logging\n\n"
                                        "def square(x):\n"
                                        "    logging.getLogger('fusion_edge.helper').info('in the child')\n"
                                        "    return x * x\n")
    (tmp_path / "script.py").write_text(textwrap.dedent('''
        import logging
        import sys
        sys.path.insert(0, sys.argv[1])
        from helper import square
        from fusion_edge.export.isolated import run_isolated
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)   # the user's choice
        print("script body ran")
        print("result", run_isolated(square, 4))
    '''))
    r = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["script body ran", "in the child", "result 16"]


CRASH_PREFILL = textwrap.dedent('''
    # Loaded at start-up of the child processes of one test only (PYTHONPATH): llama.cpp's
    # prefill reads address 0, a real SIGSEGV inside the gguf export's verification.
    import ctypes
    from fusion_edge.runtime.backends import llamacpp_llm

    def prefill(self, *args, **kwargs):
        ctypes.string_at(0)

    llamacpp_llm.LlamaCppLLM.prefill = prefill
''')


@pytest.mark.slow
def test_a_llama_cpp_crash_during_gguf_verification_fails_the_export_cleanly(
        tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Issue 11: the F16/Q4_K_M exports died with SIGSEGV in verification on CUDA builds. Now the
    export ends with one error:/fix: pair and exit code 2, leaves no bundle, and this process lives."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(CRASH_PREFILL)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "crashed"
    rc = main(["export", str(tiny_checkpoint("phi3", "so400m")), "--target", "gguf", "--precision", "fp32",
               "-o", str(out), "--quiet", "--verify-steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    error = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and sum(ln.strip().startswith("fix:") for ln in err.splitlines()) == 1
    assert "with llama.cpp crashed: the process died with SIGSEGV, in string_at (__init__.py:" in error[0]
    assert "← prefill (sitecustomize.py:8) ← _prefill_run (pipeline.py:" in error[0]
    assert "--no-verify" in err
    assert not out.exists() and not list(tmp_path.glob(".crashed.partial-*"))


@pytest.mark.slow
def test_verify_runs_llama_cpp_in_a_child_a_crash_changes_nothing(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """`fusion-edge verify` on a gguf bundle (what a Jetson user runs after copying it): a crash in
    llama.cpp is one error:/fix: pair and exit code 2, the manifest stays as it was; without the
    crash the same command verifies the bundle through the child and records it."""
    from fusion_edge.runtime.bundle import Bundle
    ckpt = str(tiny_checkpoint("phi3", "so400m"))
    out = tmp_path / "b"
    assert main(["export", ckpt, "--target", "gguf", "-o", str(out), "--quiet", "--no-verify"]) == 0
    before = (out / "fusion_bundle.json").read_bytes()
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(CRASH_PREFILL)
    old = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(inject), old]))
    capsys.readouterr()
    rc = main(["verify", str(out), "--model", ckpt, "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("error: verifying the bundle with llama.cpp crashed: the process died with SIGSEGV")
    assert "--llm-device cpu" in err and (out / "fusion_bundle.json").read_bytes() == before
    monkeypatch.setenv("PYTHONPATH", old)
    assert main(["verify", str(out), "--model", ckpt, "--steps", "2"]) == 0
    b = Bundle.open(out)
    assert b.verification_status == "passed" and b.manifest["verification"]["max_dlogit"] < 1e-4
    assert b.manifest["verification"]["placement"]["devices"]["llm"] == "cpu"
