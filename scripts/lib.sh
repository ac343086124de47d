# Shared settings for the attnwatch scripts. Source it; do not run it.
# Everything downloaded lives under $ATTNWATCH_CACHE (outside the clone), so
# repeat runs are fast and a fresh clone reuses it.
set -euo pipefail

ATTNWATCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ATTNWATCH_CACHE="${ATTNWATCH_CACHE:-$HOME/.cache/attnwatch}"
ONNXRUNTIME_VERSION="1.31.1"
HADOLINT_VERSION="2.15.1"
HELM_VERSION="3.22.0"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ATTNWATCH_ROOT/scripts/kafka-pom/pom.xml")"
VENV="$ATTNWATCH_CACHE/venv"
KAFKA_LIBS="$ATTNWATCH_CACHE/kafka-$KAFKA_VERSION/libs"
ORT_DYLIB_PATH="$VENV/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.$ONNXRUNTIME_VERSION"
KAFKA_PORT="${KAFKA_PORT:-19092}"
HELM="$ATTNWATCH_CACHE/helm-v$HELM_VERSION/helm"
KAFKA_STATE="${KAFKA_STATE:-/tmp/attnwatch-kafka-$KAFKA_PORT}"
export ATTNWATCH_ROOT ATTNWATCH_CACHE VENV KAFKA_LIBS ORT_DYLIB_PATH KAFKA_PORT KAFKA_STATE HELM

say() { printf '\033[1m[attnwatch]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[attnwatch] error:\033[0m %s\n' "$*" >&2; exit 1; }

# The venv's python has a version-specific site-packages dir; resolve it once.
resolve_ort_path() {
  local p
  p=$(ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so."$ONNXRUNTIME_VERSION" 2>/dev/null | head -n1 || true)
  [ -n "$p" ] && ORT_DYLIB_PATH="$p" && export ORT_DYLIB_PATH
  return 0
}
resolve_ort_path
