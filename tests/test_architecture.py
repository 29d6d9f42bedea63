"""The code's structure (docs/architecture.md): layer directions, the engine protocols, the
backend / architecture registries, the manifest schema, the one prefill."""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fusion_edge.runtime.arch import ARCHITECTURES, arch_spec, by_tiny_name, tiny_names
from fusion_edge.runtime.bundle import MANIFEST, Bundle, Component, Manifest
from fusion_edge.runtime.errors import BundleError, BundleVersionError, UnsupportedArchitectureError
from fusion_edge.runtime.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
# package folder → the fusion_edge subpackages it may import (docs/architecture.md's dependency direction)
ALLOWED = {
    "runtime": {"runtime"},
    "export": {"export", "runtime"},
    "calibration": {"calibration", "runtime"},
    "quantize": {"quantize", "calibration", "runtime", "export"},   # export's decode-graph builder
}


def _imports(path: Path, package: str) -> set[str]:
    """fusion_edge subpackages a module imports (absolute or relative, anywhere in the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = [package, *path.relative_to(ROOT / package).parts[:-1]]
            out.add(package if node.level - 1 < len(parts) else (node.module or "fusion_edge").split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module == "fusion_edge":
            out |= {a.name for a in node.names} - {"__version__"}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in ([node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]):
                parts = name.split(".")
                if parts[0] == "fusion_edge" and len(parts) > 1:
                    out.add(parts[1])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependency_direction(package):
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f, package) - ALLOWED[package])
           for f in (ROOT / package).rglob("*.py")}
    bad = {f: names for f, names in bad.items() if names}
    assert not bad, f"{package} imports outside its layer: {bad}"


def test_architecture_registry():
    assert tiny_names() == ["phi3", "llama3"]
    for spec in ARCHITECTURES.values():
        assert by_tiny_name(spec.tiny_name) is spec and arch_spec(spec.model_type) is spec
    assert arch_spec("fusion_phi").fused_qkv and not arch_spec("fusion_llama").fused_qkv
    with pytest.raises(UnsupportedArchitectureError, match="fusion_llama, fusion_phi"):
        arch_spec("fusion_qwen")


@pytest.mark.parametrize("llm,tower,qkv", [("phi3", "so400m", ["qkv_proj"]),
                                           ("llama3", "siglip2", ["q_proj", "k_proj", "v_proj"])])
def test_weight_table_follows_the_registry(tiny_checkpoint, llm, tower, qkv):
    from fusion_edge.export.checkpoint import open_checkpoint
    ckpt = open_checkpoint(tiny_checkpoint(llm, tower))
    entry = next(e for e in ckpt.entries if e.name == "llm.layers.3.qkv.weight")
    assert [k.split(".")[-2] for k in entry.sources] == qkv
    c = ckpt.config.llm
    assert entry.shape == ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.hidden_size)
    assert ckpt.canonical(entry).shape == entry.shape


@pytest.mark.slow
def test_engines_satisfy_the_protocols(onnx_bundle):
    from fusion_edge.runtime.backends import GraphAccess, LLMEngine, VisionEngine
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    assert isinstance(pipe.vision, VisionEngine) and isinstance(pipe.llm, LLMEngine)
    assert isinstance(pipe.vision, GraphAccess) and isinstance(pipe.llm, GraphAccess)
    assert pipe.has_graph("vision_main") and pipe.has_graph("align_09") and pipe.has_graph("segment_10")
    assert not pipe.has_graph("embed_tokens")


def test_unknown_backend_is_refused(onnx_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(onnx_bundle("phi3", "so400m"), dst)
    m = json.loads((dst / MANIFEST).read_text())
    m["llm_backend"] = "tensorrt-native"
    (dst / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="supported: onnxruntime, llama.cpp"):
        Pipeline.open(dst, device="cpu")


def test_manifest_schema_round_trip_and_refusal(onnx_bundle):
    path = onnx_bundle("phi3", "so400m")
    raw = json.loads((path / MANIFEST).read_text())
    m = Manifest.from_dict(raw)
    assert m.to_dict() == raw                                  # nothing lost or added
    seg = m.components["segment_00"]
    assert isinstance(seg, Component) and seg.layers == (0, 1) and seg.align_after == 0 and not seg.final
    assert seg.file == "segment_00.onnx" and seg["files"] == raw["components"]["segment_00"]["files"]
    assert Bundle(path, raw).component("vision").backend == "onnxruntime"
    for broken in ({k: v for k, v in raw.items() if k != "components"},
                   {**raw, "components": {"vision": {"precision": "fp32", "files": ["vision.onnx"]}}}):
        with pytest.raises(BundleVersionError, match="re-export"):
            Manifest.from_dict(broken)


def test_gate_prefill_is_the_pipeline_prefill(onnx_bundle, images):
    """quantize/agreement runs `Pipeline.prefill`: same logits as `ask`, and it honours
    `interactions_enabled` (its former copy ignored it)."""
    from fusion_edge.quantize import agreement
    pipe = Pipeline.open(onnx_bundle("phi3", "so400m"), device="cpu")
    scene = pipe.look(images["wide"])
    pipe.ask(scene, "What is on the table?", max_new_tokens=1)
    layout = pipe.last_result.layout
    first = agreement._prefill(pipe, scene, layout, 4)
    assert np.array_equal(first, pipe.last_result.first_logits)
    pipe.interactions_enabled = False
    assert not np.allclose(agreement._prefill(pipe, scene, layout, 4), first)


def test_one_precision_table_feeds_the_cli_the_targets_and_the_gguf_writers(capsys, tmp_path):
    """runtime/precisions.py PRECISIONS is the precision axis: the export targets offer exactly
    its (target, precision) pairs, the GGUF writers' types come from it, the CLI offers its names."""
    from fusion_edge.cli import main
    from fusion_edge.export.gguf_writer import PRECISION_QUANT, QUANT_TYPES
    from fusion_edge.export.vision_gguf import PRECISION_VISION_QUANT, VISION_QUANTS
    from fusion_edge.runtime.precisions import PRECISIONS
    from fusion_edge.targets import TARGETS
    assert {(t, p) for t, ps in TARGETS.items() for p in ps} == {(t, n) for n, p in PRECISIONS.items()
                                                                  for t in p.targets}
    for name, p in PRECISIONS.items():
        assert PRECISION_QUANT[name] == p.gguf_llm in QUANT_TYPES
        assert PRECISION_VISION_QUANT[name] == p.gguf_vision in VISION_QUANTS
    assert main(["export", str(tmp_path), "--precision", "fp8", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fp8'" in err and ", ".join(repr(n) for n in PRECISIONS) in err


def test_a_plain_checkout_is_the_package_tree():
    """fusion_edge/<name> links to each top-level package folder of setup.py's ROOTS, so static
    tools resolve fusion_edge.* without an install: Python without site-packages (no editable
    finder) imports a runtime module from the checkout through the link."""
    import subprocess
    import sys
    roots = {name: folder for name, folder in _setup_roots().items() if name != "fusion_edge"}
    for name, folder in roots.items():
        link = ROOT / "fusion_edge" / name.split(".")[-1]
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), name
    r = subprocess.run([sys.executable, "-S", "-c", "import fusion_edge.runtime.layout as m; print(m.__file__)"],
                       cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == (ROOT / "runtime" / "layout.py").resolve()


def _setup_roots() -> dict[str, str]:
    for node in ast.parse((ROOT / "setup.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ROOTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no ROOTS")
