#!/usr/bin/env bash
# Prepare, on the dev machine, the wheels bench/gpu/check.sh needs on the device, and print the
# device calls that carry them (see bench/gpu/README.md).
#
#   bash bench/gpu/prepare.sh [--with-rtx] [--piece-mib N] [--no-download]
#
# Downloads (wheels only, no dependencies, for CPython 3.12 on x86-64) into build/gpu-wheels/:
#   onnxruntime-gpu==$ORT_VERSION                    (~256 MB: split into parts/ of N MiB, default 60)
#   diffusers==$DIFFUSERS_VERSION into py/           (pure Python; `edgegen export` needs it)
#   onnxruntime-ep-nv-tensorrt-rtx-cu13==$RTX_VERSION with --with-rtx (~146 MB, split too)
# then writes build/gpu-wheels/manifest.tsv (sha256 of every wheel and piece) and PLAN.txt (the calls).
# build/ is git-ignored: the device sees these files only when a call names them in `carry`,
# and one call carries at most 64 MiB together with the working tree.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1

ORT_VERSION=${ORT_VERSION:-1.31.1}
RTX_VERSION=${RTX_VERSION:-0.5.0}
DIFFUSERS_VERSION=${DIFFUSERS_VERSION:-$(python3 -c 'import importlib.metadata as m; print(m.version("diffusers"))' 2>/dev/null || echo 0.42.1)}
DEST=${EDGEGEN_GPU_WHEELS:-build/gpu-wheels}
PIECE_MIB=60 RTX=0 DOWNLOAD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --with-rtx) RTX=1 ;;
    --piece-mib) PIECE_MIB=$2; shift ;;
    --no-download) DOWNLOAD=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

mkdir -p "$DEST/py" "$DEST/parts"
# The dev machine must be x86-64 for pip to pick the device's wheels by its own platform tags.
PLATFORM=()
[ "$(uname -m)" = x86_64 ] || for n in 17 27 28 31 34 35; do PLATFORM+=(--platform "manylinux_2_${n}_x86_64"); done

fetch() {   # fetch DIR REQUIREMENT
  echo "pip download $2 -> $1"
  python3 -m pip download "$2" --no-deps --python-version 3.12 --only-binary=:all: "${PLATFORM[@]}" -d "$1" \
    || { echo "pip download $2 failed" >&2; exit 1; }
}

if [ "$DOWNLOAD" = 1 ]; then
  fetch "$DEST" "onnxruntime-gpu==$ORT_VERSION"
  fetch "$DEST/py" "diffusers==$DIFFUSERS_VERSION"
  [ "$RTX" = 1 ] && fetch "$DEST" "onnxruntime-ep-nv-tensorrt-rtx-cu13==$RTX_VERSION"
fi

# Pre-flight, free of device time: which CUDA major the CUDA EP was built for. The device has torch's
# CUDA 13 and cuDNN 9 libraries only; a provider that NEEDs *.so.12 cannot load there.
for w in "$DEST"/onnxruntime_gpu-*.whl; do
  [ -f "$w" ] || continue
  tmp=$(mktemp -d)
  if unzip -q -o "$w" 'onnxruntime/capi/libonnxruntime_providers_cuda.so' -d "$tmp" 2>/dev/null; then
    needed=$(readelf -d "$tmp/onnxruntime/capi/libonnxruntime_providers_cuda.so" 2>/dev/null \
      | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | grep -E 'cu|cudnn|nvrtc' | tr '\n' ' ')
    echo "$(basename "$w"): libonnxruntime_providers_cuda.so needs: ${needed:-?}"
    case "$needed" in
      *".so.12"*) echo "WARNING: built against CUDA 12: torch's CUDA 13 libraries on the device will not satisfy it" ;;
    esac
  else
    echo "$(basename "$w"): no onnxruntime/capi/libonnxruntime_providers_cuda.so inside (not a CUDA build?)"
  fi
  rm -rf "$tmp"
done

# Split every big wheel in $DEST (not py/) and write the manifest the device checks pieces against:
#   wheel <TAB> NAME <TAB> BYTES <TAB> SHA256 <TAB> PIECES
#   piece <TAB> WHEEL <TAB> INDEX <TAB> PIECE_NAME <TAB> BYTES <TAB> SHA256
rm -f "$DEST"/parts/*.part-* "$DEST/manifest.tsv"
shopt -s nullglob
wheels=("$DEST"/onnxruntime_gpu-*.whl)
[ "$RTX" = 1 ] && wheels+=("$DEST"/onnxruntime_ep_nv_tensorrt_rtx*.whl)
[ ${#wheels[@]} -gt 0 ] || { echo "no onnxruntime_gpu-*.whl in $DEST (run without --no-download)" >&2; exit 1; }
for w in "${wheels[@]}"; do
  name=$(basename "$w")
  split -b "${PIECE_MIB}M" -a 2 "$w" "$DEST/parts/$name.part-"
  pieces=("$DEST/parts/$name".part-*)
  printf 'wheel\t%s\t%s\t%s\t%s\n' "$name" "$(stat -c %s "$w")" "$(sha256sum "$w" | cut -d' ' -f1)" \
    "${#pieces[@]}" >> "$DEST/manifest.tsv"
  i=0
  for p in "${pieces[@]}"; do
    printf 'piece\t%s\t%s\t%s\t%s\t%s\n' "$name" "$i" "$(basename "$p")" "$(stat -c %s "$p")" \
      "$(sha256sum "$p" | cut -d' ' -f1)" >> "$DEST/manifest.tsv"
    i=$((i + 1))
  done
done

# The plan: what travels in each call is the working tree (tracked + untracked-not-ignored files)
# plus the carried paths, at most 64 MiB. Pieces go in order, one call after another, and the
# last call carries the small remainder, the pure-Python wheels and runs the whole check.
python3 - "$DEST" <<'EOF' | tee "$DEST/PLAN.txt"
import json, os, subprocess, sys
dest = sys.argv[1]
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True).stdout.split(b"\0")
tree = sum(os.path.getsize(f) for f in files if f and os.path.isfile(f))
MiB, limit = 2 ** 20, 64 * 2 ** 20
cap = limit - tree - 256 * 1024            # margin for what changes before the calls
manifest = os.path.join(dest, "manifest.tsv")
py = os.path.join(dest, "py")
py_bytes = sum(os.path.getsize(os.path.join(py, f)) for f in os.listdir(py)) if os.path.isdir(py) else 0
pieces = []
for ln in open(manifest):
    f = ln.rstrip("\n").split("\t")
    if f[0] == "piece":
        pieces.append((os.path.join(dest, "parts", f[3]), int(f[4])))
calls, cur, size = [], [], 0
for path, n in pieces:
    if cur and size + n > cap:
        calls.append(cur)
        cur, size = [], 0
    cur.append(path)
    size += n
if cur:
    calls.append(cur)
last = sum(os.path.getsize(p) for p in calls[-1]) if calls else 0
final_alone = not calls or last + py_bytes > cap
if final_alone:
    calls.append([])
print(f"working tree that travels: {tree / MiB:.1f} MiB; room per call for carried files: {cap / MiB:.1f} MiB")
big = [p for p, n in pieces if n > cap]
if big:
    print(f"WARNING: pieces larger than the room per call: {big}; rerun with a smaller --piece-mib")
print(f"{len(calls)} calls, back to back (a warm machine is kept ~30 s after a call; a fresh one has lost the pieces):")
for i, c in enumerate(calls, 1):
    final = i == len(calls)
    carry = [os.path.relpath(manifest)] + [os.path.relpath(p) for p in c] + ([os.path.relpath(py)] if final else [])
    cmd = "bash bench/gpu/check.sh" if final else "bash bench/gpu/check.sh --pieces"
    mib = (sum(os.path.getsize(p) for p in c) + (py_bytes if final else 0)) / MiB + tree / MiB
    print(f"  {i}. run(command={json.dumps(cmd)}, carry={json.dumps(carry)}, timeout_s={600 if final else 120})"
          f"   # ~{mib:.1f} MiB")
EOF
