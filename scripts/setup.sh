#!/usr/bin/env bash
# Set up img2img in ./.venv on a fresh machine: PyTorch (CPU build, pinned), the project with its test tools,
# and the CLIP vocabulary that single-file checkpoints need. Also saves a real demo photo to examples/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet torch==2.13.0            # exactly this version: a range would pull a CUDA build
pip install --quiet -e ".[dev,int8,ray]"
pip install --quiet --no-deps open_clip_torch==3.3.0   # only for its CLIP vocabulary; --no-deps keeps torchvision out
pip install --quiet --no-deps clip-interrogator==0.6.0  # only for its word lists (MIT), which describe ranks with CLIP
mkdir -p examples
python - <<'PY'
from pathlib import Path
from PIL import Image
from skimage import data

target = Path("examples/astronaut.png")
if not target.exists():
    Image.fromarray(data.astronaut()).save(target)
print(f"ready: .venv/bin/img2img (demo photo: {target})")
PY
