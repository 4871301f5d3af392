#!/usr/bin/env bash
# edgegen's GPU check on a lent H100/H200, run from the repository root in ONE device call.
# See bench/gpu/README.md for the calls that carry the onnxruntime-gpu wheel in pieces first.
#
#   bash bench/gpu/check.sh --pieces      append the carried wheel pieces under /tmp/edgegen-gpu, then stop
#   bash bench/gpu/check.sh               append what is carried, install, run every check, write $OUT
#   bash bench/gpu/check.sh --dry-run     print the steps (and write an empty report) without running any
#
# Options: --only LIST / --skip LIST (comma-separated step names or groups: tiny, sd15, sdxl, rtx, bench;
#          env, install-* and providers always run under --only),
#          --budget SOFT[:HARD] (seconds: no step starts after SOFT, every step ends by HARD; 480:560),
#          --serial (run the real-size exports in the foreground instead of beside the tiny checks).
# Results: $OUT/gpu_check.json, $OUT/gpu_check.md, $OUT/gpu_check.log, $OUT/gpu_check_steps.log.
# Every step is time-boxed with `timeout`; a failing step is recorded and the script goes on.
set -u

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/../.." && pwd)
CHECKPY=$REPO/bench/gpu/check.py
PY=${PYTHON:-python3}
WHEELS=${EDGEGEN_GPU_WHEELS:-$REPO/build/gpu-wheels}   # ignored: comes only through the run tool's `carry`
MANIFEST=$WHEELS/manifest.tsv          # written by bench/gpu/prepare.sh
EG=("$PY" -m edgegen.export.cli)       # the `edgegen` command, whatever put it on the path

ORIG_ARGS="$*"
MODE=check DRY=0 ONLY="" SKIP="" SERIAL=0 SOFT=480 HARD=560 DO=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --pieces) MODE=pieces ;;
    --only) ONLY=$2; shift ;;
    --skip) SKIP=$2; shift ;;
    --serial) SERIAL=1 ;;
    --budget) SOFT=${2%%:*}; [ "${2#*:}" != "$2" ] && HARD=${2#*:}; shift ;;
    --do) DO=$2; shift ;;                      # internal: one install action, run under `timeout`
    -h|--help) sed -n '2,15p' "$SELF"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$DRY" = 1 ]; then
  WORK=${EDGEGEN_GPU_WORK:-$REPO/build/gpu-check-dryrun/work}
  OUT=${OUT:-$REPO/build/gpu-check-dryrun/out}
else
  WORK=${EDGEGEN_GPU_WORK:-/tmp/edgegen-gpu}
  OUT=${OUT:-$REPO/build/gpu-check-out}
fi
RES=$WORK/results LOGS=$WORK/logs STATE=$WORK/state ART=$WORK/art
mkdir -p "$WORK" "$OUT"
START=$(date +%s)

log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/gpu_check.log"; }
elapsed() { echo $(( $(date +%s) - START )); }

# -- wheel pieces: appended under /tmp/edgegen-gpu/wheels, one call after another --------------

marker() {
  local n=0 prev=""
  if [ -f "$WORK/marker" ]; then
    prev=$(cat "$WORK/marker")
    n=$(sed -n 's/^calls=\([0-9]*\).*/\1/p' "$WORK/marker")
    log "marker: found ($prev): files under $WORK survived since the last call"
  else
    log "marker: none: a fresh machine (or the first call)"
  fi
  echo "calls=$(( ${n:-0} + 1 )) last=$(date -u +%FT%TZ) boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" \
    > "$WORK/marker"
  if [ -d "$RES" ]; then   # for the report (check mode)
    printf '{"survived": %s, "previous": "%s", "note": "files under %s between calls on a warm machine"}\n' \
      "$( [ -n "$prev" ] && echo true || echo false )" "$prev" "$WORK" > "$RES/marker.json"
  fi
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# Append every carried piece (build/gpu-wheels/parts/...) that is the next one of its wheel.
# Pieces come in order; a piece whose predecessors are neither appended nor here means the
# machine started fresh since they were carried: start again from the first piece.
append_pieces() {
  GAP=0
  [ -f "$MANIFEST" ] || { log "pieces: no build/gpu-wheels/manifest.tsv carried: nothing to append"; return 0; }
  mkdir -p "$WORK/wheels"
  local kind whl idx piece sha done_list have src
  while IFS=$'\t' read -r kind whl idx piece _ sha; do
    [ "$kind" = piece ] || continue
    done_list=$WORK/wheels/$whl.appended
    grep -qxF "$piece" "$done_list" 2>/dev/null && continue
    src=$WHEELS/parts/$piece
    [ -f "$src" ] || continue
    have=$(cat "$done_list" 2>/dev/null | wc -l)
    if [ "$idx" -ne "$have" ]; then
      log "pieces: $piece is piece $idx of $whl but only $have earlier piece(s) are under $WORK:" \
          "the machine started fresh; carry the pieces again from the first"
      GAP=1; continue
    fi
    if [ "$(sha_of "$src")" != "$sha" ]; then
      log "pieces: $piece: sha256 differs from the manifest (a broken transfer?): not appended"; GAP=1; continue
    fi
    [ "$idx" -eq 0 ] && rm -f "$WORK/wheels/$whl"
    cat "$src" >> "$WORK/wheels/$whl" && echo "$piece" >> "$done_list" && log "pieces: appended $piece"
  done < "$MANIFEST"
  pieces_status
}

pieces_status() {
  local kind whl sha n have
  while IFS=$'\t' read -r kind whl _ sha n; do
    [ "$kind" = wheel ] || continue
    have=$(cat "$WORK/wheels/$whl.appended" 2>/dev/null | wc -l)
    if [ "$have" -eq "$n" ] && [ "$(sha_of "$WORK/wheels/$whl")" = "$sha" ]; then
      log "pieces: $whl complete ($n/$n pieces, sha256 ok)"
    else
      log "pieces: $whl has $have/$n pieces under $WORK/wheels"
    fi
  done < "$MANIFEST"
}

# The complete, checked wheel whose name starts with $1, or nothing.
wheel_path() {
  local kind whl sha n
  [ -f "$MANIFEST" ] || return 1
  while IFS=$'\t' read -r kind whl _ sha n; do
    [ "$kind" = wheel ] && [[ "$whl" == "$1"* ]] || continue
    [ -f "$WORK/wheels/$whl" ] && [ "$(sha_of "$WORK/wheels/$whl")" = "$sha" ] && { echo "$WORK/wheels/$whl"; return 0; }
  done < "$MANIFEST"
  return 1
}

# -- install actions (each run as `check.sh --do NAME` under timeout) ----------------------------

PIP_OFFLINE=(--no-deps --no-index --no-compile --no-cache-dir --disable-pip-version-check)

do_action() {
  case "$1" in
    ort|rtx)
      local prefix=onnxruntime_gpu- dest=$WORK/ortgpu whl
      [ "$1" = rtx ] && prefix=onnxruntime_ep_nv_tensorrt_rtx dest=$WORK/rtx
      whl=$(wheel_path "$prefix") || { echo "no complete $prefix*.whl under $WORK/wheels (see --pieces)"; return 3; }
      if [ -f "$dest/.installed" ] && [ "$(cat "$dest/.installed")" = "$(basename "$whl")" ]; then
        echo "$(basename "$whl") already installed in $dest"; return 0
      fi
      rm -rf "$dest"
      "$PY" -m pip install "${PIP_OFFLINE[@]}" --target "$dest" "$whl" && basename "$whl" > "$dest/.installed" ;;
    py)
      local wheels=("$WHEELS"/py/*.whl)
      [ -f "${wheels[0]}" ] || { echo "no build/gpu-wheels/py/*.whl carried (diffusers is needed to export)"; return 3; }
      "$PY" -m pip install "${PIP_OFFLINE[@]}" --upgrade --target "$WORK/py" "${wheels[@]}" ;;
    edgegen)
      if "$PY" -m pip install "${PIP_OFFLINE[@]}" --no-build-isolation -e "$REPO" \
          && "$PY" -c "import edgegen.runtimes, edgegen.export.cli"; then
        echo editable > "$WORK/edgegen.mode"; return 0
      fi
      echo "editable install failed or does not import: falling back to a symlink tree on PYTHONPATH"
      mkdir -p "$WORK/src/edgegen"
      for d in export runtimes optimize profiles bench; do ln -sfn "$REPO/$d" "$WORK/src/edgegen/$d"; done
      PYTHONPATH=$WORK/src:${PYTHONPATH:-} "$PY" -c "import edgegen.runtimes, edgegen.export.cli" \
        && echo symlink > "$WORK/edgegen.mode" ;;
    *) echo "unknown action $1"; return 2 ;;
  esac
}

# PYTHONPATH: onnxruntime-gpu first (it shadows the image's CPU onnxruntime), the carried pure-Python
# wheels, edgegen's symlink tree if the editable install failed. LD_LIBRARY_PATH: torch's CUDA 13 and
# cuDNN 9 libraries (site-packages/nvidia/*/lib), which the CUDA EP loads.
setup_env() {
  local pp="$WORK/ortgpu:$WORK/py"
  [ "$(cat "$WORK/edgegen.mode" 2>/dev/null)" = symlink ] && pp="$pp:$WORK/src"
  export PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}"
  local libs
  libs=$("$PY" - <<'EOF' 2>/dev/null
import glob, os, site, sysconfig
roots = list(dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
dirs = []
for r in roots:
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib")) + glob.glob(os.path.join(r, "nvidia", "*", "*", "lib"))):
        if d not in dirs and glob.glob(os.path.join(d, "lib*.so*")):
            dirs.append(d)
print(":".join(dirs))
EOF
)
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PYTHONUNBUFFERED=1
  printf 'export PYTHONPATH=%q\nexport LD_LIBRARY_PATH=%q\n' "$PYTHONPATH" "$LD_LIBRARY_PATH" > "$WORK/env.sh"
  log "env: PYTHONPATH=$PYTHONPATH"
  log "env: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

# -- steps -------------------------------------------------------------------------------------

selected() {   # a step runs when --only names it or its group (the part before the first '-')
  local name=$1 group=${1%%-*} item
  for item in ${SKIP//,/ }; do [ "$item" = "$name" ] || [ "$item" = "$group" ] && return 1; done
  [ -z "$ONLY" ] && return 0
  case "$name" in env|install-*|providers) return 0 ;; esac
  for item in ${ONLY//,/ }; do [ "$item" = "$name" ] || [ "$item" = "$group" ] && return 0; done
  return 1
}

record() {   # record NAME STATUS RC SECONDS STARTED LOG REASON CMD...: a line of steps.jsonl, report rewritten
  local name=$1 status=$2 rc=$3 secs=$4 started=$5 logf=$6 reason=$7; shift 7
  local extra=()
  [ -n "$rc" ] && extra+=(--rc "$rc")
  [ -n "$logf" ] && extra+=(--log "$logf")
  [ -n "$reason" ] && extra+=(--reason "$reason")
  "$PY" "$CHECKPY" record --work "$WORK" --out-dir "$OUT" --name "$name" --status "$status" --seconds "$secs" \
    --started "$started" "${extra[@]}" --cmd "${*//$REPO\//}" >/dev/null 2>>"$OUT/gpu_check.log" || log "could not record step $name"
  echo "$status" > "$STATE/$name"
}

# step NAME LIMIT_S NEED_S CMD...: run CMD under `timeout` (at most LIMIT_S, and never past HARD),
# unless it is not selected, or fewer than NEED_S seconds are left, or SOFT has passed.
step() {
  local name=$1 limit=$2 need=$3; shift 3
  local now; now=$(elapsed)
  local left=$(( HARD - now ))
  if ! selected "$name"; then
    record "$name" skipped "" 0 "$now" "" "not selected" "$@"; return 2
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$now" -ge "$SOFT" ] || [ "$limit" -lt "$need" ]; then
    log "-- $name: skipped, budget (${now}s elapsed, ${limit}s allowed, needs ${need}s)"
    record "$name" skipped "" 0 "$now" "" "budget: ${now}s elapsed, ${limit}s allowed, needs ${need}s" "$@"; return 2
  fi
  if [ "$DRY" = 1 ]; then
    log "[dry-run] $name (timeout ${limit}s): $*"
    record "$name" dry-run "" 0 "$now" "" "" "$@"; return 0
  fi
  log "== $name (timeout ${limit}s): $*"
  local t0 rc status; t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1; rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  local secs=$(( $(date +%s) - t0 ))
  tail -n 8 "$LOGS/$name.log" | sed "s/^/    [$name] /" | tee -a "$OUT/gpu_check.log"
  log "-- $name: $status (rc $rc, ${secs}s)"
  record "$name" "$status" "$rc" "$secs" "$now" "$LOGS/$name.log" "" "$@"
  return $rc
}

note() {   # a step that did not run for a reason of its own (not the budget)
  log "-- $1: skipped ($2)"; record "$1" skipped "" 0 "$(elapsed)" "" "$2" "${@:3}"
}

wait_for() {   # wait until the background step NAME has finished (or HARD)
  [ "$DRY" = 1 ] && return 0
  while [ ! -f "$STATE/$1" ] && [ "$(elapsed)" -lt "$HARD" ]; do
    [ -n "$BG_PID" ] && ! kill -0 "$BG_PID" 2>/dev/null && break   # the background ended without it
    sleep 2
  done
  [ -f "$STATE/$1" ]
}

have() { [ "$DRY" = 1 ] || [ -f "$1/manifest.json" ]; }

NICE=()
export_step() {   # export_step NAME DIR LIMIT NEED ARGS...: reuse an artifact an earlier call left
  local name=$1 dir=$2 limit=$3 need=$4; shift 4
  if [ "$DRY" = 0 ] && [ -f "$dir/manifest.json" ] && selected "$name"; then
    note "$name" "reused $dir from an earlier call on this machine"; echo ok > "$STATE/$name"; return 0
  fi
  step "$name" "$limit" "$need" "${NICE[@]}" "${EG[@]}" export "$@" --out "$dir" --force
}

by_soft() {   # LIMIT capped so that the step ends before SOFT (what waits for it must still start)
  local lim=$(( SOFT - 15 - $(elapsed) ))
  [ "$lim" -gt "$1" ] && lim=$1
  echo "$lim"
}

real_exports() {   # CPU-only (torch export + ORT CPU validation, no GPU): runs beside the GPU checks
  local NICE=(nice -n 10)
  export_step sd15-export "$ART/sd15" "$(by_soft 330)" 90 sd15 --random-weights
  export_step sdxl-export "$ART/sdxl-turbo" "$(by_soft 480)" 200 sdxl-turbo --random-weights
}

BG_PID=""

# -- modes -------------------------------------------------------------------------------------

if [ -n "$DO" ]; then do_action "$DO"; exit $?; fi

if [ "$MODE" = pieces ]; then
  [ "$DRY" = 1 ] && { log "[dry-run] would check the marker and append carried pieces"; exit 0; }
  marker; append_pieces
  [ "$GAP" = 1 ] && exit 3
  exit 0
fi

# the full check
if [ -d "$RES" ] || [ -f "$WORK/steps.jsonl" ]; then   # an earlier call's results: keep them aside
  prev=$WORK/previous-$(date +%s); mkdir -p "$prev"
  mv "$RES" "$LOGS" "$STATE" "$WORK/steps.jsonl" "$WORK/run.json" "$prev/" 2>/dev/null
fi
mkdir -p "$RES" "$LOGS" "$STATE" "$ART"
: > "$OUT/gpu_check.log"
GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$REPO" status --porcelain 2>/dev/null | head -1)" ] && GIT="$GIT+dirty"
printf '{"command": "bash bench/gpu/check.sh%s", "soft_s": %s, "hard_s": %s, "dry_run": %s, "git": "%s", "started": "%s", "background_exports": %s, "work": "%s"}\n' \
  "${ORIG_ARGS:+ $ORIG_ARGS}" "$SOFT" "$HARD" "$( [ "$DRY" = 1 ] && echo true || echo false )" "$GIT" \
  "$(date -u +%FT%TZ)" "$( [ "$SERIAL" = 0 ] && [ "$DRY" = 0 ] && echo true || echo false )" "$WORK" > "$WORK/run.json"

log "edgegen GPU check: repo $REPO ($GIT), work $WORK, out $OUT, budget ${SOFT}s/${HARD}s"
if [ "$DRY" = 0 ]; then marker; append_pieces; fi

# 1. environment
step env 90 0 "$PY" "$CHECKPY" env --out "$RES/env.json"
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
[ "$DRY" = 0 ] && nvidia-smi 2>&1 | tee -a "$OUT/gpu_check.log" >/dev/null

# 2. install: onnxruntime-gpu, carried pure-Python wheels (diffusers), edgegen; then is CUDA EP real?
step install-ort 180 30 bash "$SELF" --do ort
step install-py 90 10 bash "$SELF" --do py
step install-edgegen 150 10 bash "$SELF" --do edgegen
[ "$DRY" = 0 ] && setup_env
step providers 90 10 "$PY" "$CHECKPY" providers --out "$RES/providers.json"; CUDA_RC=$?
[ "$DRY" = 1 ] && CUDA_RC=0

if [ "$CUDA_RC" -ne 0 ]; then
  log "the CUDA EP does not run here: the GPU checks are skipped (see results/providers.json)"
  for s in tiny-export tiny-run tiny-compile-dynamic tiny-compile-static tiny-compiled-dynamic-run \
           tiny-compiled-static-run sd15-export sd15-run sd15-compile-static sd15-compiled-static-run bench-tiny sdxl-export sdxl-run; do
    note "$s" "CUDAExecutionProvider is not usable"
  done
  NO_GPU=1
else
  NO_GPU=0
fi

if [ "$NO_GPU" = 0 ]; then
  # 4a. the real-size exports take minutes of CPU: start them now, beside the tiny GPU checks
  if [ "$SERIAL" = 0 ] && [ "$DRY" = 0 ]; then
    ( export OMP_NUM_THREADS=${EXPORT_THREADS:-12}; real_exports ) &
    BG_PID=$!
    NOTE=(--note "real-size exports ran beside this on the CPU (nice 10, ${EXPORT_THREADS:-12} threads)")
  else
    NOTE=()
  fi

  # 3. tiny SD1.5: CPU vs CUDA EP parity, CUDA graphs on/off, compile for cuda dynamic and static
  TINY=$ART/sd15-tiny
  export_step tiny-export "$TINY" 240 30 sd15 --tiny
  if have "$TINY"; then
    step tiny-run 180 30 "$PY" "$CHECKPY" latency --art "$TINY" --config cuda --config cuda+graph \
      --steps 4 --runs 5 --height 64 --width 64 --label tiny-64 "${NOTE[@]}" --out "$RES/tiny.json"
    step tiny-compile-dynamic 240 40 "${EG[@]}" compile "$TINY" --target cuda --out "$ART/sd15-tiny-cuda" \
      --steps 4 --gate-prompts 2 --force
    step tiny-compile-static 240 40 "${EG[@]}" compile "$TINY" --target cuda --out "$ART/sd15-tiny-cuda64" \
      --height 64 --width 64 --batch 1 --steps 4 --gate-prompts 2 --force
    for kind in dynamic static; do
      dir=$ART/sd15-tiny-cuda; [ "$kind" = static ] && dir=$ART/sd15-tiny-cuda64
      if have "$dir"; then
        step "tiny-compiled-$kind-run" 120 20 "$PY" "$CHECKPY" latency --art "$dir" --ref-art "$TINY" \
          --config compiled --steps 4 --runs 5 --height 64 --width 64 --label "tiny-64-compiled-$kind" \
          "${NOTE[@]}" --out "$RES/tiny_compiled_$kind.json"
      else
        note "tiny-compiled-$kind-run" "no compiled artifact $dir"
      fi
    done
  else
    for s in tiny-run tiny-compile-dynamic tiny-compile-static tiny-compiled-dynamic-run tiny-compiled-static-run; do
      note "$s" "no tiny artifact"
    done
  fi
fi

# 5. TensorRT-RTX plugin: registers where a driver is present; its EP refuses Hopper (cc 9.0)
if [ "$DRY" = 1 ] || wheel_path onnxruntime_ep_nv_tensorrt_rtx >/dev/null; then
  step rtx-install 120 20 bash "$SELF" --do rtx
  step rtx 120 15 env PYTHONPATH="$WORK/rtx:${PYTHONPATH:-}" "$PY" "$CHECKPY" rtx --art "$ART/sd15-tiny" \
    --out "$RES/rtx.json"
else
  note rtx "the onnxruntime-ep-nv-tensorrt-rtx-cu13 wheel was not carried (prepare.sh --with-rtx)"
fi

if [ "$NO_GPU" = 0 ]; then
  # 4b. real size, fp32, seeded random weights: per-step latency and VRAM on the CUDA EP
  [ -z "$BG_PID" ] && real_exports_fg=1 || real_exports_fg=0
  [ "$real_exports_fg" = 1 ] && export_step sd15-export "$ART/sd15" "$(by_soft 330)" 90 sd15 --random-weights
  if wait_for sd15-export && have "$ART/sd15"; then
    step sd15-run 200 60 "$PY" "$CHECKPY" latency --art "$ART/sd15" --config cuda \
      --steps 10 --runs 2 --height 512 --width 512 --ref-steps 2 --no-verify --label sd15-512 \
      --deadline $(( START + HARD - 40 )) ${NOTE[0]+--note "the sdxl-turbo export may still run beside this"} \
      --out "$RES/sd15.json"
  else
    note sd15-run "no sd15 artifact (see sd15-export)"
  fi
  # the product's CUDA-graph path: a static compile pins every dim, so ORT folds the shape chains
  # that would otherwise keep nodes on the CPU (which makes ORT refuse graph capture)
  if have "$ART/sd15"; then
    step sd15-compile-static 200 60 "${EG[@]}" compile "$ART/sd15" --target cuda --out "$ART/sd15-cuda512" \
      --height 512 --width 512 --batch 1 --steps 2 --gate-prompts 1 --force
  fi
  if have "$ART/sd15-cuda512"; then
    step sd15-compiled-static-run 150 40 "$PY" "$CHECKPY" latency --art "$ART/sd15-cuda512" --ref-art "$ART/sd15" \
      --config compiled --steps 10 --runs 2 --height 512 --width 512 --ref-steps 2 --no-verify \
      --label sd15-512-compiled-static --deadline $(( START + HARD - 20 )) --out "$RES/sd15_compiled_static.json"
  else
    note sd15-compiled-static-run "no static sd15 compile (see sd15-compile-static)"
  fi

  # `edgegen bench` itself on the GPU (the profile must match this host: h100-80gb for an H100 SXM)
  case "$GPU_NAME" in
    *H100*PCIe*|*H100*NVL*|"") BENCH_DEV="" ;;
    *H100*) BENCH_DEV=h100-80gb ;;
    *) BENCH_DEV="" ;;
  esac
  [ "$DRY" = 1 ] && BENCH_DEV=h100-80gb
  if [ -n "$BENCH_DEV" ] && have "$ART/sd15-tiny"; then
    step bench-tiny 120 45 bash -c "${EG[*]} bench '$ART/sd15-tiny' --device $BENCH_DEV --runs 3 --warmup 1 \
      --height 64 --width 64 --steps 4 --json > '$RES/bench_tiny.json'"
  else
    note bench-tiny "no device profile matches '${GPU_NAME:-no GPU}' (profiles/h100-80gb.toml is the H100 SXM)"
  fi

  [ "$real_exports_fg" = 1 ] && export_step sdxl-export "$ART/sdxl-turbo" "$(by_soft 480)" 200 sdxl-turbo --random-weights
  if wait_for sdxl-export && have "$ART/sdxl-turbo"; then
    step sdxl-run 150 90 "$PY" "$CHECKPY" latency --art "$ART/sdxl-turbo" --config cuda --config cuda+graph \
      --steps 4 --runs 3 --height 512 --width 512 --ref-steps 0 --no-verify --label sdxl-turbo-512 \
      --deadline $(( START + HARD - 30 )) --out "$RES/sdxl_turbo.json"
  else
    note sdxl-run "no sdxl-turbo artifact (see sdxl-export)"
  fi
fi

# 6. report ($OUT comes back from the device; README: copy into bench/results/gpu_check_<date>.*)
[ -n "$BG_PID" ] && wait "$BG_PID" 2>/dev/null   # its steps end by HARD: their timeouts are capped so
for f in "$LOGS"/*.log; do
  [ -f "$f" ] || continue
  echo "===== $(basename "$f" .log)"; tail -n 300 "$f"
done > "$OUT/gpu_check_steps.log" 2>/dev/null
"$PY" "$CHECKPY" report --work "$WORK" --out-dir "$OUT" || log "report failed"
log "done in $(elapsed)s: $OUT/gpu_check.md"
[ -f "$OUT/gpu_check.md" ] && sed -n '1,80p' "$OUT/gpu_check.md"
exit 0
