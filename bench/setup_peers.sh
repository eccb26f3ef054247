#!/usr/bin/env bash
# The peer servers that bench/frontend_compare.py measures Kairos against, each in its own
# virtual environment under .bench-venvs/ (git-ignored), never in .venv: their protobuf,
# grpcio and numpy pins clash with Kairos's.
#
#   bash bench/setup_peers.sh            # both peers
#   bash bench/setup_peers.sh mlserver   # or one: mlserver | triton
#
# Idempotent: a venv whose marker file names the same pins is left as it is.
# - MLServer 1.7.1 (adaptive batching), with uvloop pinned to 0.21.0: MLServer 1.7.1's
#   worker fails with newer uvloop. There is no mlserver-onnx runtime package; the model
#   runs through bench/peers/mlserver_onnx.py (onnxruntime, a custom MLModel).
# - NVIDIA Triton 2.51: the nvidia-pytriton 0.7.0 wheel ships a complete `tritonserver`
#   binary with the python backend; the model is a python-backend model running
#   onnxruntime (bench/peers/triton_model.py). No onnxruntime backend exists for this box.
# Both get the onnxruntime version Kairos's .venv has, so all servers run the same kernels.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="$ROOT/.bench-venvs"
PYTHON="${PYTHON:-python3.11}"
ORT_VERSION="$("$ROOT/.venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)"
ORT_PIN="onnxruntime${ORT_VERSION:+==$ORT_VERSION}"

make_venv() {  # name, then the pip requirements
    local name="$1"; shift
    local venv="$VENVS/$name" marker="$VENVS/$name/.kairos-peer-pins"
    local want="$*"
    if [[ -x "$venv/bin/python" && -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
        echo "setup_peers: $name ready ($venv)"
        return 0
    fi
    echo "setup_peers: creating $venv with: $want"
    rm -rf "$venv"
    mkdir -p "$VENVS"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "$@"
    echo "$want" > "$marker"
    echo "setup_peers: $name installed"
}

want=("${@:-mlserver triton}")
for peer in ${want[*]}; do
    case "$peer" in
        mlserver) make_venv mlserver "mlserver==1.7.1" "uvloop==0.21.0" "$ORT_PIN" ;;
        triton) make_venv triton "nvidia-pytriton==0.7.0" "$ORT_PIN" ;;
        *) echo "setup_peers: unknown peer '$peer' (mlserver | triton)" >&2; exit 2 ;;
    esac
done
