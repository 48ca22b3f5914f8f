#!/usr/bin/env bash
# Every command of the README's "Command line" section, in an environment holding only the runtime
# dependencies (no test extras), on tiny generated inputs: a runtime import that pyproject.toml does not
# declare fails here. Usage: .ci/runtime_smoke.sh PYTHON (the runtime venv's python, with the package installed).
# It runs in a temporary folder, so `python -m dynast_core` is the installed package, not the checkout.
set -euo pipefail
PY=${1:?usage: runtime_smoke.sh PYTHON}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
export DYNAST_NO_TQDM=1
run() { echo "+ dynast $*"; "$PY" -m dynast_core "$@"; }

"$PY" "$HERE/make_smoke_inputs.py" "$W/in"
I=$W/in
O=$W/out
# the README's main job
run demo -o "$O/demo" --size 128
# stylize: weight-free, then with the four official files, then packed (convert --stya2k)
run stylize "$I/content/c0.png" "$I/style/s0.png" -o "$O/wf.png"
run stylize "$I/content/c0.png" "$I/style/s0.png" -o "$O/a2k.png" --weights "$I/stya2k" --size 96 \
    --strength 0.7 --preserve-color --mask "$I/mask.png"
run convert --stya2k "$I/stya2k" "$O/stya2k.safetensors"
run stylize "$I/content/c0.png" "$I/style/s0.png" -o "$O/a2k_packed.png" --weights "$O/stya2k.safetensors"
# match: weight-free on images
run match "$I/target.png" "$I/exemplar.png" -o "$O/warped.png" --flow "$O/flow.png" \
    --confidence "$O/conf.png" --save "$O/corr.safetensors"
# DynaST: convert an official-layout generator, then generate and match with it on pose layouts
run convert "$I/latest_net_G.pth" "$O/dynast.safetensors"
run generate --model "$O/dynast.safetensors" --exemplar "$I/exemplar.png" --exemplar-pose "$I/pose.json" \
    --pose "$I/pose.json" -o "$O/generated.png"
run match "$I/exemplar.png" --model "$O/dynast.safetensors" --exemplar-pose "$I/pose.json" --pose "$I/pose.json" \
    -o "$O/warped_model.png"
# training, one step each (the README's commands with small sizes)
run train dynast --data "$I/people" --vgg "$I/vgg19_conv.pth" --size 48 --steps 1 --workers 0 --out "$O/runs/dynast"
run train stya2k --content "$I/content" --style "$I/style" --vgg "$I/stya2k/vgg_normalised.pth" --size 64 \
    --steps 1 --workers 0 --out "$O/runs/stya2k"
# what training wrote loads where the README says it does
run generate --model "$O/runs/dynast/checkpoints/$(cat "$O/runs/dynast/checkpoints/latest")/generator.safetensors" --exemplar "$I/exemplar.png" \
    --exemplar-pose "$I/pose.json" --pose "$I/pose.json" --size 48 48 -o "$O/generated_trained.png"
run stylize "$I/content/c0.png" "$I/style/s0.png" -o "$O/a2k_trained.png" \
    --weights "$O/runs/stya2k/checkpoints/$(cat "$O/runs/stya2k/checkpoints/latest")/stya2k.safetensors"
for f in demo/contact_sheet.png wf.png a2k.png a2k_packed.png warped.png flow.png conf.png corr.safetensors \
         generated.png warped_model.png generated_trained.png a2k_trained.png; do
  [ -s "$O/$f" ] || { echo "runtime smoke: $f was not written" >&2; exit 1; }
done
echo "runtime smoke: every README command ran with the runtime dependencies only"
