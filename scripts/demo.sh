#!/usr/bin/env bash
# End to end on a small built-in model: set up, make a tiny FUSION checkpoint, export it
# to a verified ONNX bundle, ask a question about an image (everything under ./demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p demo
fusion-edge make-tiny demo/tiny-fusion --llm phi3 --tower so400m
python3 -c "from fusion_edge.export.verify import builtin_images; builtin_images()[0].save('demo/scene.jpg')"
fusion-export demo/tiny-fusion --target onnx --precision fp32 -o demo/bundle --overwrite
echo "--- answer (random tiny weights: the words are noise, the pipeline is real):"
fusion-edge ask --bundle demo/bundle --image demo/scene.jpg --question "What is on the table?" --max-new-tokens 24
fusion-edge ask --bundle demo/bundle --image demo/scene.jpg --question "What is on the table?" --max-new-tokens 24 --json
