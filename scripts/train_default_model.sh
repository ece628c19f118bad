#!/usr/bin/env bash
# Reproduce the default model (docs/default-model-recipe.md): autoencoder, latent data, FiTv2, package.
# About 50 minutes on a 2-core CPU. Writes runs/shapes/ and, at the end, replaces engines/default_model/,
# models/fitv2-shapes/ (the PyTorch weights, for validation and fit-eval) and models/shapes-vae/. Needs the training install: pip install -e ".[export]".
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/shapes}
CLASSES=circle,square,triangle,diamond,cross,ring,frame,star

fit-train vae --out "$W/vae" --steps 1200
fit-train vae --init "$W/vae" --decoder-only --out "$W/vae_ft" --steps 800 --lr 5e-4 --seed 1
python -m fit.data.procedural_images "$W/images" --count 12000 --max-tokens 25 --unit 16
fit-train prepare "$W/images" "$W/latents" --max-tokens 25 --vae "$W/vae"
fit-train run --config configs/demo_latent.yaml --data "$W/latents" --out "$W/run"
fit-export onnx --config "$W/run/config.yaml" --checkpoint "$W/run/ema.safetensors" --vae "$W/vae_ft" \
    --out engines/default_model --name fitv2-shapes --force \
    --class-names "$CLASSES" --cfg 4 --sampler ab2 --steps 12 --time-shift 6 --tail-compression 1 \
    --sizes 64x64,96x64,64x96,80x80,80x64,64x80,112x48,48x112,96x96,128x64,64x128,128x128 --buckets 25,64
mkdir -p models/fitv2-shapes && cp "$W/run/ema.safetensors" models/fitv2-shapes/weights.safetensors
rm -rf models/shapes-vae && mkdir -p models/shapes-vae
cp "$W/vae_ft/config.json" "$W/vae_ft/diffusion_pytorch_model.safetensors" models/shapes-vae/
fit-eval --checkpoint models/fitv2-shapes/weights.safetensors --vae models/shapes-vae --num 16 --out "$W/eval.md"
