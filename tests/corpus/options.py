"""Option cases (issue 28 item 1): every numeric and path option of every command at its
extremes — 0, negative, huge, non-finite, not a number, the wrong kind of path.

CLI: (case id, argv, words the error must contain). Placeholders: {bundle} and {ckpt} (the tiny
phi3 bundle and checkpoint: only the cases whose limit comes from the model need them), {tmp}
(the case's empty folder), {file} (an existing regular file in it), {dir} (an existing folder in
it). Every case is refused with exit code 2, one `error:` and one `fix:` line, no traceback,
before any model work, writing nothing. What each option accepts is in its --help; the values
that are clamped rather than refused are listed in CLAMPS (tested to be accepted).
"""
from __future__ import annotations

HUGE = "99999999999999999999"           # beyond every C integer
NOT_A_NUMBER = "abc"


def _cases(command: list[str], table: list[tuple[str, list[str], str]]) -> list[tuple[str, list[str], str]]:
    return [(f"{command[0]} {name}", [*command, *argv], words) for name, argv, words in table]


MAKE_TINY = _cases(["make-tiny", "{tmp}/ckpt"], [
    ("--seed -1", ["--seed", "-1"], "--seed -1 is out of range"),
    ("--seed abc", ["--seed", NOT_A_NUMBER], "--seed 'abc' is not a whole number"),
    ("--shards 0", ["--shards", "0"], "--shards 0 is out of range"),
    ("--shards -1", ["--shards", "-1"], "--shards -1 is out of range"),
    ("--shards huge", ["--shards", HUGE], f"--shards {HUGE} is out of range"),
    ("--shards beyond the tensors", ["--shards", "5000"], "is more than the checkpoint's"),
    ("--query-len 0", ["--query-len", "0"], "--query-len 0 is out of range"),
    ("--query-len -4", ["--query-len", "-4"], "--query-len -4 is out of range"),
    ("--query-len abc", ["--query-len", "4,abc"], "--query-len entry 'abc' is not a whole number"),
    ("--query-len empty", ["--query-len", ","], "names no latent count"),
    ("--query-len not square", ["--query-len", "5"], "not a perfect square"),
    ("--query-len beyond the tower", ["--query-len", "100000000"], "--query-len 100000000 is out of range"),
]) + [
    ("make-tiny OUT is a file", ["make-tiny", "{file}"], "exists and is not a folder"),
    ("make-tiny OUT under a file", ["make-tiny", "{file}/sub"], "is a file, so no folder can be created under it"),
]

EXPORT = _cases(["export", "{ckpt}", "-o", "{tmp}/out"], [
    ("--verify-steps 0", ["--verify-steps", "0"], "--verify-steps 0 is out of range"),
    ("--verify-steps -1", ["--verify-steps", "-1"], "--verify-steps -1 is out of range"),
    ("--verify-steps abc", ["--verify-steps", NOT_A_NUMBER], "is not a whole number"),
    ("--verify-steps beyond the context", ["--verify-steps", "100000000"], "it must be from 1 to 131072"),
    ("--query-len 0", ["--query-len", "0"], "query_len 0 is not one the checkpoint was trained with"),
    ("--query-len -1", ["--query-len", "-1"], "query_len -1 is not one the checkpoint was trained with"),
    ("--query-len abc", ["--query-len", NOT_A_NUMBER], "invalid int value"),
    ("--calib-samples 0", ["--precision", "int8", "--calib-samples", "0"], "--calib-samples 0 is out of range"),
    ("--calib-samples -5", ["--precision", "int8", "--calib-samples", "-5"], "--calib-samples -5 is out of range"),
    ("--calib missing", ["--precision", "int8", "--calib", "{tmp}/none"], "--calib {tmp}/none does not exist"),
    ("--calib-questions folder", ["--precision", "int8", "--calib-questions", "{dir}"], "is a folder, not a file"),
    ("--block-size 0", ["--precision", "int4", "--block-size", "0"], "--block-size 0 is not one of 16, 32"),
    ("--block-size -32", ["--precision", "int4", "--block-size", "-32"], "--block-size -32 is not one of"),
    ("--block-size 7", ["--precision", "int4", "--block-size", "7"], "--block-size 7 is not one of"),
    ("--block-size huge", ["--precision", "int4", "--block-size", HUGE], "is not one of"),
    ("--eval-cases 0", ["--precision", "int8", "--eval-cases", "0"], "--eval-cases 0 is out of range"),
    ("--eval-cases -1", ["--precision", "int8", "--eval-cases", "-1"], "--eval-cases -1 is out of range"),
    ("--keep-float bad regex", ["--precision", "int8", "--keep-float", "("], "is not a regular expression"),
    ("--accuracy-level 9", ["--precision", "int4", "--accuracy-level", "9"], "invalid choice"),
    ("--sm -1", ["--target", "trt", "--precision", "fp16", "--sm", "-1"], "compute capability '-1' is out of range"),
    ("--sm 0", ["--target", "trt", "--precision", "fp16", "--sm", "0"], "compute capability '0' is out of range"),
    ("--sm huge", ["--target", "trt", "--precision", "fp16", "--sm", "99999"], "is out of range"),
    ("--sm nan", ["--target", "trt", "--precision", "fp16", "--sm", "nan"], "is not a version like 8.7"),
]) + [
    ("export -o is a file", ["export", "{ckpt}", "-o", "{file}"], "-o {file} exists and is not a folder"),
    ("export -o is a file, --overwrite", ["export", "{ckpt}", "-o", "{file}", "--overwrite"], "is not a folder"),
    ("export -o under a file", ["export", "{ckpt}", "-o", "{file}/b"], "is a file, so no folder can be created"),
]

VERIFY = _cases(["verify", "{bundle}", "--model", "{ckpt}"], [
    ("--steps 0", ["--steps", "0"], "--steps 0 is out of range"),
    ("--steps -1", ["--steps", "-1"], "--steps -1 is out of range"),
    ("--steps abc", ["--steps", NOT_A_NUMBER], "--steps 'abc' is not a whole number"),
    ("--steps beyond the context", ["--steps", "100000000"], "--steps 100000000 exceeds the model's context"),
    ("--eval-cases 0", ["--eval-cases", "0"], "--eval-cases 0 is out of range"),
    ("--fp32-bundle a file", ["--fp32-bundle", "{file}"], "--fp32-bundle {file} is not a folder"),
    ("--fp32-bundle missing", ["--fp32-bundle", "{tmp}/none"], "--fp32-bundle {tmp}/none does not exist"),
]) + [
    ("verify BUNDLE is a file", ["verify", "{file}", "--model", "{ckpt}"], "{file} is a file, not a bundle folder"),
]

ASK = _cases(["ask", "--bundle", "{bundle}", "--image", "{file}", "--question", "Hi?"], [
    ("--image a folder", ["--image", "{dir}"], "--image {dir} is a folder, not a file"),
    ("--image missing", ["--image", "{tmp}/none.jpg"], "--image {tmp}/none.jpg does not exist"),
    ("--max-new-tokens abc", ["--max-new-tokens", NOT_A_NUMBER], "invalid int value: 'abc'"),
    ("--temperature abc", ["--temperature", NOT_A_NUMBER], "invalid float value: 'abc'"),
    ("--seed 1.5", ["--seed", "1.5"], "invalid int value: '1.5'"),
]) + [
    ("ask --bundle is a file", ["ask", "--bundle", "{file}", "--image", "{file}", "--question", "Hi?"],
     "{file} is a file, not a bundle folder"),
]

BENCH = _cases(["bench", "--model", "{ckpt}", "--bundles", "{bundle}"], [
    ("--cases 0", ["--cases", "0"], "--cases 0 is out of range"),
    ("--cases huge", ["--cases", "1000000"], "--cases 1000000 is out of range: it must be from 1 to 1000"),
    ("--questions-per-image 0", ["--questions-per-image", "0"], "--questions-per-image 0 is out of range"),
    ("--max-new-tokens 1", ["--max-new-tokens", "1"], "--max-new-tokens 1 is out of range"),
    ("--max-new-tokens beyond the context", ["--max-new-tokens", "100000000"], "exceeds the model's context"),
    ("--repeats 0", ["--repeats", "0"], "--repeats 0 is out of range"),
    ("--warmup -1", ["--warmup", "-1"], "--warmup -1 is out of range"),
    ("--threads 0", ["--threads", "0"], "--threads 0 is out of range"),
    ("--threads huge", ["--threads", "100000"], "--threads 100000 is out of range"),
    ("--query-len 0", ["--query-len", "0"], "query_len 0 is not one the checkpoint was trained with"),
    ("--bandwidth-mib 0", ["--bandwidth-mib", "0"], "--bandwidth-mib 0 is out of range"),
    ("--bandwidth-mib -1", ["--bandwidth-mib", "-1"], "--bandwidth-mib -1 is out of range"),
    ("--bandwidth-mib beyond memory", ["--bandwidth-mib", "240000000"], "available"),
    ("--timeout 0", ["--timeout", "0"], "--timeout 0 is out of range"),
    ("--timeout -1", ["--timeout", "-1"], "--timeout -1 is out of range"),
    ("--timeout nan", ["--timeout", "nan"], "--timeout nan is not a finite number"),
    ("--timeout inf", ["--timeout", "inf"], "--timeout inf is not a finite number"),
    ("--json folder", ["--json", "{dir}"], "--json {dir} exists and is not a regular file"),
    ("--json missing folder", ["--json", "{tmp}/none/r.json"], "the folder {tmp}/none does not exist"),
    ("--plot not .png", ["--plot", "{tmp}/p.txt"], "--plot {tmp}/p.txt does not end in .png"),
    ("--plot folder", ["--plot", "{dir}"], "does not end in .png"),
])

CALIBRATE = _cases(["calibrate", "{bundle}", "-o", "{tmp}/rec"], [
    ("--samples 0", ["--samples", "0"], "--samples 0 is out of range"),
    ("--samples -1", ["--samples", "-1"], "--samples -1 is out of range"),
    ("--holdout -1", ["--holdout", "-1"], "--holdout -1 is out of range"),
    ("--max-mb 0", ["--max-mb", "0"], "--max-mb 0 is out of range"),
    ("--max-mb -1", ["--max-mb", "-1"], "--max-mb -1 is out of range"),
    ("--max-mb nan", ["--max-mb", "nan"], "--max-mb nan is not a finite number"),
    ("--max-mb inf", ["--max-mb", "inf"], "--max-mb inf is not a finite number"),
    ("--threads 0", ["--threads", "0"], "--threads 0 is out of range"),
    ("--threads huge", ["--threads", HUGE], "is out of range"),
    ("--query-len 0", ["--query-len", "0"], "0 was asked for"),
    ("--data missing", ["--data", "{tmp}/none"], "--data {tmp}/none does not exist"),
    ("--questions folder", ["--questions", "{dir}"], "--questions {dir} is a folder, not a file"),
]) + [
    ("calibrate -o is a file", ["calibrate", "{bundle}", "-o", "{file}"], "-o {file} exists and is not a folder"),
]

CAMERA = _cases(["camera", "{bundle}", "--source", "{dir}", "--port", "0"], [
    ("--port -1", ["--port", "-1"], "--port -1 is out of range"),
    ("--port 65536", ["--port", "65536"], "--port 65536 is out of range"),
    ("--port huge", ["--port", HUGE], f"--port {HUGE} is out of range"),
    ("--threads 0", ["--threads", "0"], "--threads 0 is out of range"),
    ("--threads -2", ["--threads", "-2"], "--threads -2 is out of range"),
    ("--max-new-tokens 0", ["--max-new-tokens", "0"], "--max-new-tokens 0 is out of range"),
    ("--max-new-tokens beyond the context", ["--max-new-tokens", "200000"], "exceeds the model's context"),
    ("--temperature -1", ["--temperature", "-1"], "--temperature -1 is out of range"),
    ("--temperature inf", ["--temperature", "inf"], "--temperature inf is not a finite number"),
    ("--temperature nan", ["--temperature", "nan"], "--temperature nan is not a finite number"),
    ("--max-question-chars 0", ["--max-question-chars", "0"], "--max-question-chars 0 is out of range"),
    ("--max-upload-mb 0", ["--max-upload-mb", "0"], "--max-upload-mb 0 is out of range"),
    ("--max-upload-mb nan", ["--max-upload-mb", "nan"], "--max-upload-mb nan is not a finite number"),
    ("--max-upload-mb inf", ["--max-upload-mb", "inf"], "--max-upload-mb inf is not a finite number"),
    ("--max-fps 0", ["--max-fps", "0"], "--max-fps 0 is out of range"),
    ("--max-fps nan", ["--max-fps", "nan"], "--max-fps nan is not a finite number"),
    ("--max-fps inf", ["--max-fps", "inf"], "--max-fps inf is not a finite number"),
    ("--slide-seconds -1", ["--slide-seconds", "-1"], "--slide-seconds -1 is out of range"),
    ("--slide-seconds nan", ["--slide-seconds", "nan"], "--slide-seconds nan is not a finite number"),
    ("--slide-seconds inf", ["--slide-seconds", "inf"], "--slide-seconds inf is not a finite number"),
    ("--interval 0", ["--interval", "0"], "watch interval 0 s is outside"),
    ("--interval huge", ["--interval", "1e9"], "watch interval 1e+09 s is outside"),
    ("--interval nan", ["--interval", "nan"], "--interval nan is not a finite number"),
    ("--interval inf", ["--interval", "inf"], "--interval inf is not a finite number"),
    ("--interval abc", ["--interval", NOT_A_NUMBER], "--interval 'abc' is not a number"),
    ("--max-answers 0", ["--no-browser", "--watch", "Hi?", "--max-answers", "0"], "--max-answers 0 is out of range"),
    ("--max-answers -1", ["--no-browser", "--watch", "Hi?", "--max-answers", "-1"], "--max-answers -1 is out of"),
    ("--log folder", ["--log", "{dir}"], "--log {dir} exists and is not a regular file"),
    ("--log missing folder", ["--log", "{tmp}/none/a.jsonl"], "the folder {tmp}/none does not exist"),
    ("--source camera index huge", ["--source", HUGE], "camera index"),
    ("--source camera index 256", ["--source", "256"], "camera index 256 is out of range"),
    ("--source csi fps 0", ["--source", "csi://0?fps=0"], "CSI fps 0 is out of range"),
    ("--source csi width -1", ["--source", "csi://0?width=-1"], "CSI width -1 is out of range"),
    ("--source csi sensor huge", ["--source", "csi://999"], "CSI sensor id 999 is out of range"),
])

SERVE = _cases(["serve", "{bundle}", "--port", "0"], [
    ("--port -1", ["--port", "-1"], "--port -1 is out of range"),
    ("--port 70001", ["--port", "70001"], "--port 70001 is out of range"),
    ("--port huge", ["--port", HUGE], "is out of range"),
    ("--max-queue -1", ["--max-queue", "-1"], "--max-queue -1 is out of range"),
    ("--threads 0", ["--threads", "0"], "--threads 0 is out of range"),
    ("--remote-timeout 0", ["--remote-timeout", "0"], "--remote-timeout 0 is out of range"),
    ("--remote-timeout nan", ["--remote-timeout", "nan"], "--remote-timeout nan is not a finite number"),
    ("--remote-timeout inf", ["--remote-timeout", "inf"], "--remote-timeout inf is not a finite number"),
    ("--max-image-mb 0", ["--max-image-mb", "0"], "--max-image-mb 0 is out of range"),
    ("--max-image-mb nan", ["--max-image-mb", "nan"], "--max-image-mb nan is not a finite number"),
    ("--max-image-mb inf", ["--max-image-mb", "inf"], "--max-image-mb inf is not a finite number"),
    ("--max-body-mb -1", ["--max-body-mb", "-1"], "--max-body-mb -1 is out of range"),
    ("--max-body-mb nan", ["--max-body-mb", "nan"], "--max-body-mb nan is not a finite number"),
    ("--max-body-mb inf", ["--max-body-mb", "inf"], "--max-body-mb inf is not a finite number"),
    ("--max-tokens 0", ["--max-tokens", "0"], "--max-tokens 0 is out of range"),
    ("--max-tokens abc", ["--max-tokens", NOT_A_NUMBER], "--max-tokens 'abc' is not a whole number"),
    ("--max-tokens beyond the context", ["--max-tokens", "1000000000"], "--max-tokens 1000000000 exceeds"),
    ("--default-max-tokens 0", ["--default-max-tokens", "0"], "--default-max-tokens 0 is out of range"),
    ("--default-max-tokens over --max-tokens", ["--default-max-tokens", "2000"], "is more than --max-tokens 1024"),
    ("--max-prompt-chars 0", ["--max-prompt-chars", "0"], "--max-prompt-chars 0 is out of range"),
    ("--scene-cache 0", ["--scene-cache", "0"], "--scene-cache 0 is out of range"),
    ("--scene-cache beyond memory", ["--scene-cache", "1000000000"], "GiB of scenes"),
    ("--drain-timeout -1", ["--drain-timeout", "-1"], "--drain-timeout -1 is out of range"),
    ("--drain-timeout nan", ["--drain-timeout", "nan"], "--drain-timeout nan is not a finite number"),
    ("--drain-timeout inf", ["--drain-timeout", "inf"], "--drain-timeout inf is not a finite number"),
    ("--allow-local-files a file", ["--allow-local-files", "{file}"], "--allow-local-files {file} is not a folder"),
    ("--allow-local-files missing", ["--allow-local-files", "{tmp}/none"], "does not exist"),
    ("--replicas 0", ["--ray", "--replicas", "0"], "--replicas 0 is out of range"),
    ("--gpus-per-replica -1", ["--ray", "--gpus-per-replica", "-1"], "--gpus-per-replica -1 is out of range"),
    ("--gpus-per-replica nan", ["--ray", "--gpus-per-replica", "nan"], "is not a finite number"),
    ("--cpus-per-replica 0", ["--ray", "--cpus-per-replica", "0"], "--cpus-per-replica 0 is out of range"),
    ("--cpus-per-replica nan", ["--ray", "--cpus-per-replica", "nan"], "is not a finite number"),
    ("--ray-object-store-mb 10", ["--ray", "--ray-object-store-mb", "10"], "it must be at least 75"),
    ("--ray-max-queued 0", ["--ray", "--ray-max-queued", "0"], "--ray-max-queued 0: Ray Serve takes -1 (no bound)"),
    ("--ray-max-queued -2", ["--ray", "--ray-max-queued", "-2"], "--ray-max-queued -2 is out of range"),
    ("--ray-max-queued abc", ["--ray", "--ray-max-queued", NOT_A_NUMBER], "--ray-max-queued 'abc' is not a whole"),
    ("--ray-max-queued without --ray", ["--ray-max-queued", "4"], "add --ray"),
    ("--ray-retry-after -1", ["--ray", "--ray-retry-after", "-1"], "--ray-retry-after -1 is out of range"),
    ("--ray-retry-after nan", ["--ray", "--ray-retry-after", "nan"], "--ray-retry-after nan is not a finite number"),
    ("--ray-retry-after inf", ["--ray", "--ray-retry-after", "inf"], "--ray-retry-after inf is not a finite number"),
    ("--autoscaling negative", ["--ray", "--autoscaling", '{"min_replicas": -1}'], "min_replicas -1 is out of"),
    ("--autoscaling inf", ["--ray", "--autoscaling", '{"target_ongoing_requests": 1e999}'], "not a finite"),
    ("--autoscaling min > max", ["--ray", "--autoscaling", '{"min_replicas": 3, "max_replicas": 1}'],
     "min_replicas 3 is more than max_replicas 1"),
])

CLI = MAKE_TINY + EXPORT + VERIFY + ASK + BENCH + CALIBRATE + CAMERA + SERVE

# values at an edge that are accepted as documented (each option's --help says so), not refused:
# checked by parsing alone, with what they become
CLAMPS = [
    ("make-tiny --seed beyond 64 bits (numpy takes any size)", ["make-tiny", "{tmp}/c", "--seed", HUGE], "seed",
     int(HUGE)),
    ("serve --port 0: any free port", ["serve", "{bundle}", "--port", "0"], "port", 0),
    ("serve --drain-timeout 0: no waiting", ["serve", "{bundle}", "--drain-timeout", "0"], "drain_timeout", 0.0),
    ("serve --max-queue 0: only the running request", ["serve", "{bundle}", "--max-queue", "0"], "max_queue", 0),
    ("calibrate --holdout 0: nothing held out", ["calibrate", "{bundle}", "-o", "{tmp}/r", "--holdout", "0"],
     "holdout", 0),
    ("calibrate --samples huge: all of the data", ["calibrate", "{bundle}", "-o", "{tmp}/r", "--samples", HUGE],
     "samples", int(HUGE)),
    ("camera --max-upload-mb huge: no practical limit", ["camera", "{bundle}", "--source", "{dir}",
                                                          "--max-upload-mb", "1e30"], "max_upload_mb", 1e30),
]
