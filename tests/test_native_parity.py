"""The native runtime (libfusion_edge, fusion_edge_cli; docs/native.md) against the PyTorch
reference per stage, and against the Python runtime end to end (identical greedy token ids).

Needs the native build (scripts/build_native.sh, run by scripts/test.sh). Without it these tests
skip, unless FUSION_NATIVE_BUILD names the build folder: then a missing build fails.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf", reason="the gguf extra (gguf) is not installed")
pytest.importorskip("llama_cpp", reason="the gguf extra (llama-cpp-python) is not installed")

from fusion_edge.runtime.preprocess import static_hd_tiles
from fusion_edge.runtime.tokenizer import Tokenizer

# one xdist worker: its session fixture runs the native CLI per flavour once
pytestmark = pytest.mark.xdist_group("test_native_parity")


ROOT = Path(__file__).resolve().parents[1]
FLAVORS = [("phi3", "so400m"), ("llama3", "siglip2")]
QUESTION = "What is on the table?"
STEPS = 12


def _build_dir() -> Path:
    env = os.environ.get("FUSION_NATIVE_BUILD")
    d = Path(env) if env else ROOT / "build"
    if not (d / "fusion_edge_cli").is_file():
        if env:
            pytest.fail(f"FUSION_NATIVE_BUILD={env} has no fusion_edge_cli: the native build failed")
        pytest.skip("the native runtime is not built (scripts/build_native.sh)")
    return d


@pytest.fixture(scope="session")
def native_lib():
    from fusion_edge.native import load_library
    return load_library(_build_dir() / "libfusion_edge.so")


@pytest.fixture(scope="session")
def png_image(work_dir) -> Path:
    from conftest import draw_scene
    p = work_dir / "native_wide.png"        # PNG: stb and Pillow decode it to the same pixels
    draw_scene(640, 480, 1).save(p)
    return p


@pytest.fixture(scope="session")
def native_run(gguf_bundle, png_image, work_dir):
    """native_run(llm, tower) → (cli --json result, dump folder), one CLI run per flavour."""
    cache: dict = {}

    def run(llm: str, tower: str):
        if (llm, tower) not in cache:
            dump = work_dir / f"native_dump_{llm}"
            dump.mkdir(exist_ok=True)
            cmd = [str(_build_dir() / "fusion_edge_cli"), "ask", "--bundle", str(gguf_bundle(llm, tower)),
                   "--image", str(png_image), "--question", QUESTION, "--max-new-tokens", str(STEPS),
                   "--json", "--threads", "1", "--dump", str(dump)]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            assert p.returncode == 0, p.stderr
            cache[(llm, tower)] = (json.loads(p.stdout), dump)
        return cache[(llm, tower)]
    return run


def _f32(path: Path, *shape) -> np.ndarray:
    return np.fromfile(path, dtype=np.float32).reshape(*shape)


# ---- end to end: the Python runtime ---------------------------------------------------------
@pytest.mark.parametrize("llm,tower", FLAVORS)
@pytest.mark.slow
def test_native_cli_gives_the_python_runtimes_greedy_tokens(llm, tower, native_run, gguf_bundle, png_image):
    from fusion_edge.runtime.pipeline import Pipeline
    got, _ = native_run(llm, tower)
    pipe = Pipeline.open(gguf_bundle(llm, tower), device="cpu", threads=1)
    pipe.ask(pipe.look(png_image), QUESTION, max_new_tokens=STEPS)
    want = pipe.last_result
    print(f"native {llm}: {got['token_ids']} vs python {want.token_ids}")
    assert got["token_ids"] == [int(t) for t in want.token_ids]
    assert got["text"] == want.text
    assert got["timings"]["prompt_tokens"] == want.layout.seq_len


# ---- per stage: the PyTorch reference -------------------------------------------------------
@pytest.mark.parametrize("llm,tower", FLAVORS)
@pytest.mark.slow
def test_native_stages_match_the_pytorch_reference(llm, tower, native_run, reference, png_image):
    import torch
    from fusion_edge.runtime.vision_post import global_grid
    ref = reference(llm, tower)
    cfg = ref.cfg
    got, dump = native_run(llm, tower)
    S, N, H = cfg.tower.image_size, cfg.tower.num_patches, cfg.llm.hidden_size
    scene = ref.look(png_image)
    assert np.max(np.abs(_f32(dump / "tiles_main.f32", 3, S, S) - scene.tiles.main)) <= 1 / 255
    assert np.max(np.abs(_f32(dump / "tiles_global.f32", 4, 3, S, S) - scene.tiles.global_tiles)) <= 1 / 255
    d_grid = np.max(np.abs(global_grid(_f32(dump / "tokens_global.f32", 4, N, H)) - scene.grid.numpy()))
    q = cfg.default_query_len
    layout = ref.layout(QUESTION, q)
    d_img = np.max(np.abs(_f32(dump / "image_tokens.f32", N, H)
                          - ref.encode_main(scene.tiles.main, layout.instruct_ids).numpy()))
    lat0, ctx = ref.pooled(scene, q)
    d_lat0 = np.max(np.abs(_f32(dump / "latents_init.f32", q, H) - lat0.numpy()))
    K = len(cfg.interaction_layers)
    h_inst = _f32(dump / "align_h.f32", K, H)
    a_in, a_out = _f32(dump / "align_in.f32", K, q, H), _f32(dump / "align_out.f32", K, q, H)
    with torch.no_grad():
        d_align = max(float(np.max(np.abs(a_out[k] - ref.model.align[k](
            torch.from_numpy(h_inst[k]), torch.from_numpy(a_in[k]), ctx).numpy()))) for k in range(K))
    want = ref.answer(png_image, QUESTION, max_new_tokens=STEPS, query_len=q)
    d_logit = np.max(np.abs(_f32(dump / "first_logits.f32", -1) - want.first_logits))
    print(f"native {llm}/{tower} vs reference: grid {d_grid:.2e}, image tokens {d_img:.2e}, latents {d_lat0:.2e}, "
          f"alignment {d_align:.2e}, first logits {d_logit:.2e}")
    assert d_grid <= 1e-4 and d_img <= 1e-4 and d_lat0 <= 1e-4 and d_align <= 1e-4
    assert d_logit <= 1e-3
    assert got["token_ids"] == list(want.token_ids)


# ---- preprocessing and tokenization ---------------------------------------------------------
@pytest.mark.parametrize("w,h", [(640, 480), (300, 500), (1024, 256), (97, 61), (384, 384), (768, 1030), (5, 3)])
def test_native_preprocessing_matches_pillow(w, h, native_lib):
    from conftest import draw_scene
    from PIL import Image
    rng = np.random.default_rng(w * h)
    arr = np.asarray(draw_scene(w, h, w + h)).copy()
    arr[::7] = rng.integers(0, 256, arr[::7].shape, dtype=np.uint8)       # noise rows: edges everywhere
    stride = 3 * w + 5                                                     # padded rows
    buf = np.zeros((h, stride), np.uint8)
    buf[:, :3 * w] = arr.reshape(h, 3 * w)
    S = 384
    main, glob = np.zeros((3, S, S), np.float32), np.zeros((4, 3, S, S), np.float32)
    rc = native_lib.fe_debug_preprocess(buf.ctypes.data, w, h, stride, S, main.ctypes.data, glob.ctypes.data)
    assert rc == 0, native_lib.fe_last_error()
    want = static_hd_tiles(Image.fromarray(arr), S)
    assert np.max(np.abs(main - want.main)) <= 1 / 255
    assert np.max(np.abs(glob - want.global_tiles)) <= 1 / 255
    assert np.array_equal(main, want.main) and np.array_equal(glob, want.global_tiles)   # Pillow's exact numbers


TEXTS = ["What is on the table?", "  How many red objects are there?\n", "Where is the cup, 3.5 m away?",
         "", " ", "\n", "hello", " hello", "hello ", "a  b   c", "\tTabs\tand\nnewlines\n\n", "▁lead", "in▁side",
         "Café at 21.5°C — où est le robot?", "日本語のテキスト", "emoji 🤖🦾 ok", "x" * 300,
         "<|user|>", "<|user|>\nhi", " <|user|> hi", "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n",
         "<vision_start>", "<vision_end>\nWhat?", "a<vision_start>b<vision_end>c", "<|end|>\n<|assistant|>\n",
         "<s>hi</s>", "</s>", "<unk>", "<|endoftext|>x", "<|placeholder1|>  \n y", "ab<|assistant|>cd",
         "<|start_header_id|>user<|end_header_id|>\n\nHi", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
         "<|begin_of_text|>text", "It's a robot's arm, isn't it? They're here; we've 2 of 'em.",
         "1234567890 3.14159 -42", "UPPER lower MiXeD", "C:\\path\\to\\file.txt", "https://example.com/a?b=c&d=e",
         "  leading and trailing  ", "multiple\n\n\nblank\n\nlines", "punctuation!!! ??? ... ,,,",
         "a\u00a0b\u2003c", "\u3000ideographic space", "zero\u200bwidth", "tab\t\tdouble", "\r\nwindows\r\n"]


@pytest.mark.parametrize("llm,tower", FLAVORS)
def test_native_tokenizer_matches_the_runtime_tokenizer(llm, tower, native_lib, gguf_bundle):
    from fusion_edge.runtime.prompt import TEMPLATES, render_prompt
    bundle = gguf_bundle(llm, tower)
    tok = Tokenizer.from_dir(bundle / "tokenizer")
    h = ctypes.c_void_p()
    assert native_lib.fe_open(str(bundle).encode(), None, ctypes.byref(h)) == 0, native_lib.fe_last_error()
    texts = list(TEXTS)
    for tpl in TEMPLATES:                      # the rendered prompts' chunks, as build_prompt cuts them
        for q in TEXTS[:3] + ["Is <image-placeholder> the cup here?"]:
            for part in render_prompt(tpl, q).split("<image>"):
                texts += part.split("<latent_image>")
    try:
        for text in texts:
            buf = (ctypes.c_int32 * 4096)()
            n = ctypes.c_int32(4096)
            assert native_lib.fe_debug_tokenize(h, text.encode(), buf, ctypes.byref(n)) == 0, native_lib.fe_last_error()
            assert list(buf[:n.value]) == tok.encode(text), repr(text)
    finally:
        native_lib.fe_close(h)
    assert len(texts) > 60


def test_native_cli_errors_are_one_error_fix_pair(gguf_bundle, png_image, tmp_path):
    cli = str(_build_dir() / "fusion_edge_cli")
    bundle = str(gguf_bundle("phi3", "so400m"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    cases = [["ask", "--bundle", str(tmp_path / "nope"), "--image", str(png_image), "--question", "Q?"],
             ["ask", "--bundle", bundle, "--image", str(bad), "--question", "Q?"],
             ["ask", "--bundle", bundle, "--image", str(png_image), "--question", "   "],
             ["ask", "--bundle", bundle, "--image", str(png_image), "--question", "Q?", "--max-new-tokens", "0"],
             ["ask", "--bundle", bundle]]
    for args in cases:
        p = subprocess.run([cli, *args], capture_output=True, text=True, timeout=120, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, (args, p.stderr)
        assert lines[0].startswith("error: ") and lines[1].startswith("fix: ") and len(lines) == 2, p.stderr


# ---- the C ABI on a real handle -------------------------------------------------------------
def _abi_check(build: Path, bundle: Path, env: dict | None = None) -> str:
    p = subprocess.run([str(build / "c_abi_bad_inputs"), str(bundle)], capture_output=True, text=True,
                       timeout=600, check=False, env={**os.environ, **(env or {})})
    assert p.returncode == 0 and "0 failure(s)" in p.stdout, p.stdout + p.stderr
    return p.stdout


@pytest.mark.slow
def test_c_abi_bad_inputs_on_an_open_bundle(gguf_bundle):
    """null pointers, wrong stride, bad sizes, over-long questions, cancel: error codes, then a good answer."""
    out = _abi_check(_build_dir(), gguf_bundle("phi3", "so400m"))
    assert out.count("ok  ") >= 25


def test_c_abi_bad_inputs_under_address_sanitizer(gguf_bundle):
    """The same checks on the AddressSanitizer build (FUSION_NATIVE_ASAN_BUILD, made by scripts/test.sh)."""
    env = os.environ.get("FUSION_NATIVE_ASAN_BUILD")
    if not env:
        pytest.skip("no AddressSanitizer build (FUSION_NATIVE_ASAN_BUILD)")
    _abi_check(Path(env), gguf_bundle("phi3", "so400m"), {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0"})


# ---- sampling and streaming through the C ABI -----------------------------------------------
@pytest.mark.slow
def test_native_streaming_and_seeded_sampling(native_lib, gguf_bundle, png_image):
    from PIL import Image
    from fusion_edge.native import AskOptions, OpenOptions, TokenCallback
    lib = native_lib
    h = ctypes.c_void_p()
    one_thread = OpenOptions(1, None)                     # fe_open_options {threads=1, device=NULL}
    assert lib.fe_open(str(gguf_bundle("phi3", "so400m")).encode(), ctypes.byref(one_thread), ctypes.byref(h)) == 0, \
        lib.fe_last_error()
    try:
        rgb = np.ascontiguousarray(np.asarray(Image.open(png_image).convert("RGB")))
        assert lib.fe_look(h, rgb.ctypes.data, rgb.shape[1], rgb.shape[0], rgb.strides[0]) == 0, lib.fe_last_error()

        def ask(opts: AskOptions, stop_after: int = 0):
            pieces: list[tuple[int, bytes]] = []

            def on_token(tok, piece, _user):
                pieces.append((tok, piece))
                return int(bool(stop_after) and len(pieces) >= stop_after)
            cb = TokenCallback(on_token)
            assert lib.fe_ask(h, QUESTION.encode(), ctypes.byref(opts), cb, None, None) == 0, lib.fe_last_error()
            n = ctypes.c_int32()
            ids = lib.fe_answer_token_ids(h, ctypes.byref(n))
            return [ids[i] for i in range(n.value)], lib.fe_answer_text(h), pieces

        greedy, text, pieces = ask(AskOptions(STEPS, 0.0, 1.0, 0, 0, 0))
        assert [t for t, _ in pieces] == greedy and b"".join(p for _, p in pieces) == text   # streamed = final
        assert ask(AskOptions(STEPS, 0.0, 1.0, 0, 0, 0), stop_after=3)[0] == greedy[:3]     # callback stops it
        assert ask(AskOptions(STEPS, 1.0, 1.0, 1, 7, 0))[0] == greedy                      # top_k=1 is greedy
        a = ask(AskOptions(STEPS, 1.5, 0.95, 0, 11, 0))[0]
        assert a == ask(AskOptions(STEPS, 1.5, 0.95, 0, 11, 0))[0]                          # same seed, same ids
        assert ask(AskOptions(STEPS, 1.5, 0.95, 0, 12, 0))[0] != a and a != greedy         # the seed matters
    finally:
        lib.fe_close(h)


# ---- fusion-edge bench ----------------------------------------------------------------------
@pytest.mark.slow
def test_bench_measures_the_native_runtime_next_to_the_python_backends(tiny_checkpoint, gguf_bundle, tmp_path,
                                                                      monkeypatch):
    from fusion_edge.cli import main
    monkeypatch.setenv("FUSION_NATIVE_LIB", str(_build_dir() / "libfusion_edge.so"))
    bundle = str(gguf_bundle("phi3", "so400m"))
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", str(tiny_checkpoint("phi3", "so400m")), "--bundles", bundle, "--native", bundle,
               "--cases", "1", "--questions-per-image", "2", "--max-new-tokens", "3", "--repeats", "1",
               "--warmup", "0", "--threads", "1", "--bandwidth-mib", "16", "--json", str(out)])
    result = json.loads(out.read_text())
    assert rc == 0, [b.get("error") for b in result["backends"]]
    _ref, py, nat = result["backends"]
    assert nat["name"] == "native-gguf-fp32" and nat["llm_backend"].startswith("llama.cpp (native")
    for k in ("ttft_s", "prefill_s", "vision_global_s", "decode_tokens_per_s"):
        assert nat["figures"][k]["median"] > 0, k
    assert [a["token_ids"] for a in nat["answers"]] == [a["token_ids"] for a in py["answers"]]
    assert nat["fidelity"]["max_dlogit"] <= 1e-3 and nat["fidelity"]["greedy_agreement"] == 1.0


@pytest.mark.slow
def test_native_fusion_l_placeholder_and_query_len_match_python(gguf_bundle, png_image):
    """FUSION-L (144 image tokens, bilinear resize), the image block inside the question, q=16."""
    from fusion_edge.runtime.pipeline import Pipeline
    bundle = gguf_bundle("phi3", "so400m", image_tokens=144)
    question = "Is <image-placeholder> the red box left of the cup?"
    p = subprocess.run([str(_build_dir() / "fusion_edge_cli"), "ask", "--bundle", str(bundle), "--image",
                        str(png_image), "--question", question, "--max-new-tokens", str(STEPS), "--query-len", "16",
                        "--json", "--threads", "1"], capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    pipe = Pipeline.open(bundle, device="cpu", threads=1)
    pipe.ask(pipe.look(png_image), question, max_new_tokens=STEPS, query_len=16)
    want = pipe.last_result
    assert want.layout.num_image_tokens == 144 and want.layout.num_latents == 16
    assert got["timings"]["prompt_tokens"] == want.layout.seq_len and got["timings"]["query_len"] == 16
    assert got["token_ids"] == [int(t) for t in want.token_ids]
