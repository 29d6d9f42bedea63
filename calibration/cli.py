"""Arguments of `fusion-edge calibrate MODEL_OR_BUNDLE --data DIR_OR_JSONL -o calib/` (it runs
from fusion_edge/targets.py `run_calibrate`, which exports a checkpoint to fp32 first)."""
from __future__ import annotations

from fusion_edge.runtime import option_types as ot

from .calibrate import DEFAULT_HOLDOUT, DEFAULT_MAX_MB, DEFAULT_SAMPLES

EPILOG = """data formats:
  folder   images (jpg/png/webp/bmp/gif/tif) + questions.txt, one question a line;
           images and questions are paired round-robin
  .jsonl   one {"image": "path (relative to the file)", "question": "text"} a line
  none     built-in generated scenes and typical camera questions (a demo default)
bad entries (missing/corrupt image, empty question, bad JSON) are skipped and listed.

examples:
  fusion-edge calibrate tiny-phi3 -o calib
  fusion-edge calibrate starriver030515/FUSION-X-Phi3.5-3B --data shots/ -o calib --samples 64
  fusion-export tiny-phi3 --target onnx --precision int8 --calib calib -o q8"""


def add_args(p) -> None:
    p.epilog = EPILOG
    p.add_argument("model", help="checkpoint folder / hub id, or an fp32 ONNX bundle")
    p.add_argument("--data", default=None, type=ot.existing_path_arg("--data"),
                   help="image folder or .jsonl file (default: built-in set)")
    p.add_argument("--questions", default=None, type=ot.existing_file_arg("--questions"),
                   help="questions file for an image folder (default: DIR/questions.txt)")
    p.add_argument("-o", "--out", required=True, type=ot.output_dir_arg("-o"),
                   help="recording folder to create (with its parents)")
    p.add_argument("--samples", type=ot.int_arg("--samples", 1), default=DEFAULT_SAMPLES,
                   help="most (image, question) pairs to record (at least 1; more than the data has: all of it)")
    p.add_argument("--holdout", type=ot.int_arg("--holdout", 0), default=DEFAULT_HOLDOUT,
                   help="pairs kept out of the recording for the quantized export's quality gate (0 = none; "
                        "none when the data has no pair left to record; the built-in set has 8)")
    p.add_argument("--max-mb", type=ot.float_arg("--max-mb", 0, low_open=True), default=DEFAULT_MAX_MB,
                   help="stop recording before this size (a positive finite number of MB; the first sample is "
                        "always recorded)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage of float inputs")
    p.add_argument("--query-len", type=int, default=None, help="latent count to calibrate with")
    p.add_argument("--image-tokens", type=int, choices=[144], default=None, help="144 = FUSION-L mode")
    p.add_argument("--threads", type=ot.threads_arg(), default=None,
                   help=f"onnxruntime threads (1 to {ot.MAX_THREADS}; default: every core)")
    p.add_argument("--low-memory", action="store_true", default=None,
                   help="keep the fp32 weights memory-mapped instead of prepacked copies (default: when they "
                        "do not fit in free memory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing recording folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

