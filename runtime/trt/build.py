"""Build a bundle's TensorRT engines on the target (onnxruntime's TensorRT EP builds them).

One graph at a time: a session with the graph's profile, engine cache and EP-context dump
under engines/<graph>/ makes onnxruntime build and serialize the engine; then the files there
are hashed into the manifest's `engines` section, so an interrupted build resumes with the
next graph. `rebuild` deletes and builds again every graph.
"""
from __future__ import annotations

import logging
import shutil
import time

from ..bundle import Bundle, sha256_file
from ..errors import TensorRTError
from . import stamp
from .ep import TIMING_CACHE, engine_dir, graph_chain
from .stamp import ENGINES_DIR, Platform

log = logging.getLogger(__name__)

GRAPH_ORDER = ("vision", "embed", "align_", "segment_")


def ordered_graphs(bundle: Bundle) -> list[str]:
    return [n for prefix in GRAPH_ORDER for n in sorted(bundle.components) if n.startswith(prefix)]


def require_trt_bundle(bundle: Bundle) -> None:
    if bundle.target != "trt":
        raise TensorRTError(f"bundle {bundle.path} is a {bundle.target} bundle; engines are built for trt bundles.",
                            "export one: fusion-export MODEL --target trt --precision int8 -o BUNDLE")


def build_engines(path, platform: Platform, chain: list, *, rebuild: bool = False, progress: bool = True,
                  session=None) -> dict:
    """Build every graph not yet recorded on this platform (all with `rebuild`) → engines section.
    chain: the provider chain of the TensorRT device (ort_session.provider_chain);
    session(path, providers, config) → an onnxruntime session (ort_session.make_session)."""
    from ..backends.ort_session import make_session
    session = session or (lambda p, providers, config: make_session(p, providers, config=config))
    bundle = Bundle.open(path)
    require_trt_bundle(bundle)
    engines = bundle.manifest.get(stamp.ENGINES_KEY) or stamp.pending()
    if rebuild:
        shutil.rmtree(bundle.path / ENGINES_DIR, ignore_errors=True)
        engines = stamp.pending()
    elif stamp.built_graphs(engines):
        stamp.check_stamp(engines, platform, bundle.path, sha256_file)   # resume only on the same platform
    (bundle.path / ENGINES_DIR / TIMING_CACHE).mkdir(parents=True, exist_ok=True)
    graphs = ordered_graphs(bundle)
    todo = [g for g in graphs if g not in stamp.built_graphs(engines)]
    from tqdm import tqdm
    for graph in tqdm(todo, desc=f"TensorRT engines ({platform.provider})", unit="graph", disable=not progress,
                      leave=False):
        engines = _build_one(bundle, graph, platform, chain, engines, graph == todo[-1], session)
    if not todo:
        log.info(f"engines of {bundle.path.name} are already built for TensorRT {platform.tensorrt_version} on "
                 f"{platform.gpu_name} (--rebuild builds them again)")
    return engines


def _build_one(bundle: Bundle, graph: str, platform: Platform, chain: list, engines: dict, last: bool,
               session) -> dict:
    comp = bundle.component(graph)
    folder = engine_dir(bundle.path, graph)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    providers, config = graph_chain(bundle, comp, chain, dump_context=True)
    t0 = time.perf_counter()
    sess = session(bundle.file(comp.file), providers, config)
    del sess
    files = {p.relative_to(bundle.path).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    if not files:
        raise TensorRTError(f"onnxruntime built no engine file for {graph} under {folder}.",
                            "check that the TensorRT EP runs the whole graph (onnxruntime verbose log)")
    engines = stamp.record_graph(engines, platform, graph, files, last,
                                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    bundle.update_manifest(**{stamp.ENGINES_KEY: engines})
    log.info(f"  {graph}: engine built in {time.perf_counter() - t0:.1f} s ({len(files)} files)")
    return engines

