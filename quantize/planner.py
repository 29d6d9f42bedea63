"""Precision planner: what each component should run at on the target hardware.

`plan(target, precision, sm=None)` → a `Plan` with one `Choice` per component (vision,
align, embed, llm) saying the precision, the quantization scheme and why, or a typed
`PrecisionNotSupportedError` (problem + fix) when the hardware cannot run the request.

Hardware facts used (vendor documentation):
* TensorRT 10.x is built for SM 7.0 and newer. INT8 runs on all of those, with INT8 tensor
  cores from SM 7.2 (Xavier) / 7.5 (Turing) on. The SM floor of each precision is its
  `min_sm` in runtime/precisions.py PRECISIONS.
* INT4 weight-only GEMM (W4A16): Ampere (SM 8.0) and newer — TensorRT-RTX support
  matrix (INT4 WoQ GEMM: 8.6/8.9/12.0 yes, 7.5 no) and NVIDIA ModelOpt (W4A16: Ampere
  and later). TensorRT's dequantize layer accepts symmetric INT4 only (zero-points 0).
* FP8 (Ada, SM 8.9) and FP4 (Blackwell, SM 10.0) are not built (Orin, SM 8.7, and Ampere
  laptops, SM 8.6, have neither), nor BF16: the precisions are PRECISIONS' four.
* onnxruntime CPU: Q/DQ int8 with uint8 asymmetric activations and int8 symmetric
  per-channel weights (U8S8): the VNNI/AMX kernels on x86 and the sdot/i8mm ones on ARM.
  x86 without VNNI saturates pairs of U8S8 products (vpmaddubsw; onnxruntime's quantization
  docs, "saturation"): there the runtime sets session.x64quantprecision (exact U8U8), see
  runtime/cpu_features.py;
  int4 weight-only is the `MatMulNBits` contrib op (`accuracy_level` 4 = int8 compute).
  The vision tower is int8 *dynamic* there (DynamicQuantizeMatMul, the same U8S8 kernels,
  activation ranges per call, no calibration: quantize/dynamic_int8.py).
* onnxruntime CUDA: `MatMulNBits` has a CUDA kernel (int4 weight-only); Q/DQ int8 runs,
  but this provider is not an int8 GEMM engine — int8 there saves memory, not time;
  TensorRT is the int8 speed path on NVIDIA GPUs.

Components: vision (SigLIP tower + projectors), align (the recursive-alignment layers),
embed (the token-embedding table, a Gather), llm (the decoder segments + lm_head).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fusion_edge.runtime.precisions import PRECISIONS, VISION_PRECISIONS
from fusion_edge.runtime.errors import DeviceError

TARGETS = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
COMPONENTS = ("vision", "align", "embed", "llm")
GPU_TARGETS = ("onnxruntime-cuda", "tensorrt")
DEFAULT_SM = (8, 7)          # Jetson Orin: the primary deployment target
MIN_SM = (7, 0)               # what TensorRT 10 / current CUDA builds support
ARCH = [((10, 0), "Blackwell"), ((9, 0), "Hopper"), ((8, 9), "Ada"), ((8, 7), "Orin (Ampere)"),
        ((8, 0), "Ampere"), ((7, 5), "Turing"), ((7, 2), "Xavier (Volta)"), ((7, 0), "Volta"), ((0, 0), "pre-Volta")]


class PrecisionNotSupportedError(DeviceError):
    """The asked precision cannot run on the target hardware (or is unknown)."""


@dataclass(frozen=True)
class Choice:
    precision: str     # fp32 | fp16 | int8 (W8A8) | int8-weight (weight-only) | int4 (weight-only)
    scheme: str        # how it is stored and run, in words
    reason: str
    method: str | None = None    # int8 (W8A8) only: "static" (calibrated Q/DQ) or "dynamic" (per-call ranges)




@dataclass
class Plan:
    target: str
    precision: str
    sm: tuple[int, int] | None
    components: dict[str, Choice]
    notes: list[str] = field(default_factory=list)

    @property
    def flavour(self) -> str:
        """Q/DQ flavour of the ONNX quantizers: cpu (asymmetric activations), cuda or trt."""
        return {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda", "tensorrt": "trt"}[self.target]

    def keep_fp32(self, component: str, reason: str) -> "Plan":
        """The same plan with `component` left as the fp32 graph (copied unchanged)."""
        assert component in self.components, component
        comps = {**self.components, component: Choice("fp32", "unchanged fp32 graph", reason)}
        return Plan(self.target, self.precision, self.sm, comps, list(self.notes))

    def with_vision(self, name: str | None) -> "Plan":
        """The plan with the vision tower stored as VISION_PRECISIONS[name] (None or "int8": as
        planned) → a new Plan; a PrecisionNotSupportedError names the supported ones."""
        if name is not None and name not in VISION_PRECISIONS:
            raise PrecisionNotSupportedError(f"unknown vision precision {name!r}.",
                                             "choose one of: " + ", ".join(VISION_PRECISIONS))
        if name in (None, "int8"):
            return self
        if name == "fp32":
            return self.keep_fp32("vision", "asked for (--vision-precision fp32)")
        if name == "int8-dynamic" and self.flavour != "cpu":
            raise PrecisionNotSupportedError(
                f"int8-dynamic vision is for onnxruntime's CPU EP, not {self.target}: TensorRT takes int8 only as "
                "static Q/DQ.", "use --vision-precision int8-static (or int8) with --for cuda|trt")
        choice = vision_choice(self.flavour, name.removeprefix("int8-"))
        comps = {**self.components, "vision": Choice(choice.precision, choice.scheme,
                                                     f"asked for (--vision-precision {name})", choice.method)}
        return Plan(self.target, self.precision, self.sm, comps, list(self.notes))

    def to_dict(self) -> dict:
        return {"target": self.target, "precision": self.precision,
                "sm": f"{self.sm[0]}.{self.sm[1]}" if self.sm else None,
                "components": {k: {f: v for f, v in vars(c).items() if v is not None}
                               for k, c in self.components.items()}, "notes": list(self.notes)}

    def explain(self) -> str:
        head = f"precision plan for {self.target}" + (f" (SM {self.sm[0]}.{self.sm[1]}, {arch_name(self.sm)})"
                                                      if self.sm else "") + f", {self.precision}:"
        rows = [f"  {name:<7} {c.precision:<12} {c.scheme} — {c.reason}" for name, c in self.components.items()]
        return "\n".join([head, *rows, *("  note: " + n for n in self.notes)])


def parse_sm(sm) -> tuple[int, int] | None:
    """'8.7', '87', 8.7, (8, 7) → (8, 7); None stays None."""
    if sm is None or isinstance(sm, tuple):
        return sm
    text = str(sm).strip().lower().removeprefix("sm").removeprefix("_")
    fix = "pass --sm MAJOR.MINOR, e.g. 8.7 for Jetson Orin, 8.6 for RTX 30xx"
    try:
        if "." in text:
            major, minor = text.split(".", 1)
            version = int(major), int(minor)
        else:
            value = int(text)
            version = (value // 10, value % 10) if value >= 10 else (value, 0)
    except ValueError:
        raise PrecisionNotSupportedError(f"compute capability {sm!r} is not a version like 8.7.", fix) from None
    if not (1 <= version[0] <= 99 and 0 <= version[1] <= 9):      # no GPU has a major 0, a negative or a 3-digit one
        raise PrecisionNotSupportedError(f"compute capability {sm!r} is out of range (major 1 to 99, minor 0 to 9).",
                                         fix)
    return version


def arch_name(sm: tuple[int, int]) -> str:
    return next(name for floor, name in ARCH if sm >= floor)


def plan(target: str, precision: str, sm=None) -> Plan:
    if target not in TARGETS:
        raise PrecisionNotSupportedError(f"unknown target '{target}'.", f"choose one of: {', '.join(TARGETS)}")
    if precision not in PRECISIONS:
        raise PrecisionNotSupportedError(f"precision '{precision}' is not one fusion-edge builds.",
                                         f"choose one of: {', '.join(PRECISIONS)}")
    sm = parse_sm(sm)
    notes = []
    if target in GPU_TARGETS:
        if sm is None:
            sm = DEFAULT_SM
            notes.append(f"no compute capability given: planned for SM {sm[0]}.{sm[1]} ({arch_name(sm)}); "
                         "pass --sm for another GPU")
        _check_gpu(target, precision, sm)
    elif sm is not None:
        raise PrecisionNotSupportedError(f"a compute capability (SM {sm[0]}.{sm[1]}) was given for the CPU target.",
                                         "drop --sm, or choose a GPU target (--for cuda|trt)")
    components = _choose(target, precision, sm, notes)
    return Plan(target, precision, sm, components, notes)


def _check_gpu(target: str, precision: str, sm: tuple[int, int]) -> None:
    need = PRECISIONS[precision].min_sm
    if sm < MIN_SM:
        raise PrecisionNotSupportedError(
            f"SM {sm[0]}.{sm[1]} ({arch_name(sm)}) is below what TensorRT 10 / current CUDA builds support (SM 7.0).",
            "run on the CPU target (--for cpu)")
    if sm < need:
        ok = [n for n, p in PRECISIONS.items() if sm >= p.min_sm]
        raise PrecisionNotSupportedError(
            f"{precision.upper()} does not run on SM {sm[0]}.{sm[1]} ({arch_name(sm)}): its kernels need SM "
            f"{need[0]}.{need[1]} ({arch_name(need)}) or newer.", f"use {' or '.join(ok)} on this GPU")


def _choose(target: str, precision: str, sm, notes: list[str]) -> dict[str, Choice]:
    if not PRECISIONS[precision].quantized:
        c = Choice(precision, "every graph at that precision", "asked for")
        if precision == "fp16" and target == "onnxruntime-cpu":
            notes.append("fp16 on CPU: onnxruntime computes most fp16 ops through casts; expect fp32 speed or "
                         "slower, half the size")
        return {name: c for name in COMPONENTS}
    trt = target == "tensorrt"
    w8a8 = _static_scheme(target == "onnxruntime-cpu")
    if sm is not None and sm < (7, 2):
        notes.append(f"SM {sm[0]}.{sm[1]} has no INT8 tensor cores: int8 runs but fp16 is likely as fast")
    if target == "onnxruntime-cuda":
        notes.append("onnxruntime's CUDA EP runs Q/DQ int8 by dequantizing (memory saving only); "
                     "use --target trt for int8 speed")
    dense = Choice("int8", w8a8, DENSE_REASON, "static")
    embed = (Choice("fp32", "fp32 table (Gather)",
                    "a row-gathered per-row scale is not a Q/DQ pattern TensorRT maps; the lookup is memory, "
                    "not compute") if trt else
             Choice("int8-weight", "int8 table + per-row fp32 scale (Gather, Cast, Mul)",
                    "a quarter of the table's bytes; each looked-up row is exact to 1/254 of its largest value"))
    head = "; lm_head int8 weight-only"
    if precision == "int8":
        llm = Choice("int8", w8a8 + head, "decode is memory-bound: int8 weights quarter the bytes read per token",
                     "static")
    else:
        blocks = ("int4 DequantizeLinear blocks (opset 21) → MatMul" if trt else "MatMulNBits 4-bit blocks")
        llm = Choice("int4", f"weight-only, symmetric {blocks}, fp activations{head}",
                     "decode is memory-bound: 4-bit weights read an eighth of fp32's bytes per token")
    vision = vision_choice({"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda", "tensorrt": "trt"}[target])
    return {"vision": vision, "align": dense, "embed": embed, "llm": llm}


DENSE_REASON = "compute-bound (729-token tiles, many latents): int8 GEMMs pay and weights shrink 4×"


def _static_scheme(cpu: bool) -> str:
    act = "uint8 asymmetric activations" if cpu else "int8 symmetric activations (zero-point 0)"
    return f"Q/DQ W8A8: per-channel int8 symmetric weights, per-tensor {act}"


def vision_choice(flavour: str, method: str | None = None) -> Choice:
    """The int8 vision tower for a Q/DQ flavour: dynamic on the CPU (default there), static Q/DQ
    calibrated on the recording otherwise (TensorRT's explicit quantization is static Q/DQ)."""
    method = method or ("dynamic" if flavour == "cpu" else "static")
    if method == "static":
        return Choice("int8", _static_scheme(flavour == "cpu"), DENSE_REASON, "static")
    from .dynamic_int8 import SCHEME
    return Choice("int8", SCHEME, DENSE_REASON + "; dynamic: no calibration session, so the real-size tower "
                  "quantizes within 24 GiB (onnxruntime's static quantizer was killed at 23.7 GB), and each "
                  "image's activations get their own range", "dynamic")
