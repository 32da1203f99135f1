#!/usr/bin/env bash
# The benchmark's peer servers, each in its own virtual environment (tests/load/README.md):
#
#     bash tests/load/peers/setup.sh              # both: .peers/litserve and .peers/torchserve
#     bash tests/load/peers/setup.sh litserve     # or just one
#
# Made at the repository root, beside the project's .venv (and ignored by git). bench.py never
# installs anything: when a peer's venv is missing it names this command and skips that peer.
# Each venv holds torch (the CPU build, pinned: pip takes 2.13.0 from this machine's wheel
# directory; any other torch spec would fetch a multi-GB CUDA build), numpy, safetensors and the
# peer, all pinned. The peer servers import `models.families` from the repository (torch only),
# never the `app` package. TorchServe also needs Java 17 or newer (`java` on PATH).
# Environment: PYTHON (default python3.11, else python3) makes the venvs. Where pip has no
# local CPU wheel, PyPI's torch is a CUDA build (several GB): set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU build.
set -euo pipefail
cd "$(dirname "$0")/../../.."

TORCH="torch==2.13.0"
TORCH_INDEX=(${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"})
COMMON=("$TORCH" "numpy==2.4.6" "safetensors==0.8.0")
LITSERVE=("litserve==0.2.19")
# PyYAML: the worker imports yaml, which torchserve does not declare.
TORCHSERVE=("torchserve==0.12.0" "torch-model-archiver==0.12.0" "pyyaml==6.0.4")

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(litserve torchserve)

make_venv() { # name, packages...
    local name=$1 dir=.peers/$1
    shift
    echo "setup: $dir ($*)"
    "$PYTHON" -m venv --clear "$dir"
    # torch first and alone, so no other package's requirement can pick another build.
    "$dir/bin/python" -m pip install -q "${TORCH_INDEX[@]}" "$TORCH"
    "$dir/bin/python" -m pip install -q "${COMMON[@]}" "$@"
    "$dir/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    echo "setup: $dir ready: $("$dir/bin/python" -m pip freeze | grep -iE "^(litserve|torchserve|torch-model-archiver|torch|numpy|safetensors|pyyaml)==" | tr '\n' ' ')"
}

for peer in "${peers[@]}"; do
    case "$peer" in
    litserve) make_venv litserve "${LITSERVE[@]}" ;;
    torchserve)
        command -v java >/dev/null || echo "setup: warning: TorchServe needs Java 17+ (java is not on PATH)"
        make_venv torchserve "${TORCHSERVE[@]}"
        ;;
    *)
        echo "setup: unknown peer $peer (litserve, torchserve)" >&2
        exit 2
        ;;
    esac
done
