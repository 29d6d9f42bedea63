"""Progress and notices are `logging` records (fusion_edge/logs.py): the library prints nothing
until the application configures logging; the command line prints them as the `log=print`
callbacks did (bare messages, stdout; the runtime's on stderr beside a command's answer), and
--quiet hides the progress bars only, as before."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from fusion_edge.cli import main
from fusion_edge.logs import RUNTIME, printed

LIBRARY_CALLS = textwrap.dedent('''
    import logging, sys
    from pathlib import Path
    from fusion_edge.calibration.calibrate import calibrate_bundle
    from fusion_edge.quantize.onnx_quant import export_quantized_bundle
    from fusion_edge.runtime.bundle import Bundle
    from fusion_edge.runtime.graph_gates import gate_decode_twin
    fp32, tmp = sys.argv[1], Path(sys.argv[2])
    if sys.argv[3] == "configured":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # a notice (WARNING), the data set's summary and the recording's size (INFO)
    rec = calibrate_bundle(fp32, tmp / "calib", samples=1, holdout=0, progress=False)
    # the plan, "calibration: recording ...", the weight sizes (INFO)
    export_quantized_bundle(fp32, tmp / "q8", precision="int8", verify=False, progress=False, calib=str(rec.path))
    gate_decode_twin(Bundle.open(fp32))         # the twin's figures (INFO)
    print("done")
''')


@pytest.mark.slow
def test_library_calls_print_nothing_until_logging_is_configured(onnx_bundle, tmp_path):
    """In its own interpreter (pytest's capture handlers on the root logger would hide a line
    that logging's last-resort handler prints): a calibration, a quantized export and a graph
    gate print nothing; with logging.basicConfig the same calls show their lines."""
    fp32 = str(onnx_bundle("phi3", "so400m"))

    def run(mode: str) -> subprocess.CompletedProcess:
        out = tmp_path / mode
        out.mkdir()
        return subprocess.run([sys.executable, "-c", LIBRARY_CALLS, fp32, str(out), mode], capture_output=True,
                              text=True, timeout=900)
    quiet = run("unconfigured")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stdout == "done\n"
    assert "fusion_edge" not in quiet.stderr and "notice:" not in quiet.stderr and "calibration" not in quiet.stderr
    shown = run("configured")
    assert shown.returncode == 0, shown.stderr[-3000:]
    err = shown.stderr
    assert "WARNING fusion_edge.calibration.calibrate: notice: no calibration data given" in err
    assert "INFO fusion_edge.calibration.calibrate: recorded 1 samples" in err
    assert "INFO fusion_edge.quantize.onnx_quant: calibration: recording" in err
    assert "INFO fusion_edge.runtime.graph_gates: decode_concat vs decode" in err


def test_the_cli_prints_the_lines_and_quiet_keeps_them(bundle, tmp_path, capsys):
    """`fusion-edge calibrate` prints its notice and progress lines on stdout; --quiet hides the
    progress bars only (its lines stay, as they did with log=print; tests/test_faults.py reads
    them from --quiet runs)."""
    for n, quiet in enumerate(([], ["--quiet"])):
        assert main(["calibrate", str(bundle), "-o", str(tmp_path / f"c{n}"), "--samples", "1", "--holdout", "0",
                     *quiet]) == 0
        out, err = capsys.readouterr()
        assert "notice: no calibration data given; using the built-in generated scenes" in out
        assert "calibration set (builtin" in out and "recorded 1 samples over 1 images" in out
        assert "notice:" not in err and "recorded" not in err
    # after main, the library is quiet again (the handler is gone, the loggers as they were)
    from fusion_edge.calibration.calibrate import calibrate_bundle
    calibrate_bundle(bundle, tmp_path / "c-lib", samples=1, holdout=0, progress=False)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("command,stream", [("export", "out"), ("verify", "err")])
def test_the_runtime_lines_go_where_they_went(monkeypatch, capsys, tmp_path, command, stream):
    """The runtime's lines (TensorRT engines built while a bundle opens) went to stderr beside a
    command's answer (ask, verify, build-engines, the apps) and to stdout in an export, whose
    output is progress; the other library lines to stdout."""
    import fusion_edge.export.cli_export as cli_export
    import fusion_edge.targets as targets

    def fake(args) -> int:
        logging.getLogger(f"{RUNTIME}.trt.opening").warning("notice: building the TensorRT engines of b")
        logging.getLogger("fusion_edge.export.trt_engines").info("figures of the engines")
        return 0
    monkeypatch.setattr(targets, "run_export", fake)
    monkeypatch.setattr(cli_export, "run_verify", fake)
    b = str(tmp_path / "b")
    argv = {"export": ["export", "ckpt", "-o", b], "verify": ["verify", b, "--model", "ckpt"]}[command]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert ("notice: building the TensorRT engines of b\n" in getattr(captured, stream))
    assert "notice:" not in getattr(captured, {"out": "err", "err": "out"}[stream])
    assert captured.out.endswith("figures of the engines\n")


def test_printed_shows_library_records_once_and_leaves_the_apps_loggers_alone(capsys):
    """An app configures the root logger (logging.basicConfig in camera/serve): while printed()
    holds, the library's records are printed once, bare (not again by the root handler); the
    apps' own loggers reach the root handler and are not printed by printed()."""
    seen: list[str] = []

    class Root(logging.Handler):
        def emit(self, record):
            seen.append(f"{record.name}: {record.getMessage()}")
    root = Root()
    logging.getLogger().addHandler(root)
    try:
        with printed():
            logging.getLogger("fusion_edge.export.bundle_export").info("figures")
            logging.getLogger("fusion_edge.calibration.record").warning("notice: kept")
            logging.getLogger("fusion_edge.runtime.trt.build").info("  vision: engine built")
            logging.getLogger("fusion_edge.serve").warning("request failed")
            logging.getLogger("fusion_edge.export.bundle_export").debug("not shown")
        logging.getLogger("fusion_edge.export.bundle_export").warning("after")
    finally:
        logging.getLogger().removeHandler(root)
    out, err = capsys.readouterr()
    assert out == "figures\nnotice: kept\n" and err == "  vision: engine built\n"
    assert seen == ["fusion_edge.serve: request failed", "fusion_edge.export.bundle_export: after"]
    assert all(not lg.handlers or all(type(h).__name__ != "LinePrinter" for h in lg.handlers)
               for lg in [logging.getLogger(f"fusion_edge.{n}") for n in ("runtime", "export", "quantize")])
