#!/usr/bin/env bash
# Builds, checks and times on the GPU machine in one call; logs go to $OUT.
#   bash scripts/device_check.sh peer-build   # start mamba_ssm's build (from .peer/) in the background
#   bash scripts/device_check.sh check        # build m4v, GPU tests (TESTS, TEST_FILTER), compute-sanitizer (SANITIZE)
#   bash scripts/device_check.sh bench        # wait for the peer build, then the scan benchmark (BENCH_ARGS added)
#   bash scripts/device_check.sh recompose    # the re-composition benchmark
#   bash scripts/device_check.sh conv         # the causal-conv1d benchmark (against cuDNN's depthwise conv)
#   bash scripts/device_check.sh efficiency   # whole model, then mixer vs attention (after the peer build)
#   bash scripts/device_check.sh model        # whole model eager + compiled, its profile, 768p generation
#   bash scripts/device_check.sh ship         # the shipped m4v-shapes model's whole recipe, then its evaluation
#   bash scripts/device_check.sh train-more   # continue training a pipeline (BASE=dir, CONFIG=file), cosine lr
#   bash scripts/device_check.sh train-many   # CONFIGS side by side from BASE (each one CPU share; BASE=scratch: from
#                                             # each config's preset), bf16 tars in $OUT
#   bash scripts/device_check.sh eval         # `m4v eval` of MODELS (pipeline dirs) in one run, EVAL_ARGS added
#   bash scripts/device_check.sh reward       # reward-tune (CONFIGS one after another), pack (bf16 tars), evaluate with the base
#   bash scripts/device_check.sh mixer        # the mixer benchmark with MM-DiM's kernel tables (after peer-build;
#                                             # MIXER_ARGS added, e.g. --cuda-graphs)
#   bash scripts/device_check.sh host         # host time per op call (eager path / registered ops), and the MM-DiM
#                                             # mixer's and block's host time against their GPU time, each call path
#   bash scripts/device_check.sh timeline     # synced MM-DiM steps on the GPU timeline: lead-in, idle gaps and
#                                             # the launches that came late (TIMELINE_ARGS, e.g. --host-detail:
#                                             # what the host ran meanwhile); MM-DiM's kernel tables
#   bash scripts/device_check.sh scan-tests   # the scan GPU tests -k TEST_FILTER (default: triton), SHARDS pytest processes
#                                             # side by side (TEST_FILE: another test file or folder)
#   bash scripts/device_check.sh patches      # scan tests (pytest -k SCAN_TESTS, default "not triton": the Triton
#                                             # tests compile every shape and outlast a call) + benchmark (SCAN_ARGS)
#                                             # + conv benchmark + mixer of the tree, then of each
#                                             # benchmarks/patches/*.patch
#   bash scripts/device_check.sh final        # issue 7's closing run in one call (~8 min): peer build beside the
#                                             # CUDA-graph tests and the mixer (eager and graphed), then the scan
#                                             # benchmark with mamba_ssm, its reverse/varlen variants, the Triton
#                                             # forward, and compute-sanitizer; one tar back
#   bash scripts/device_check.sh profile      # ncu of a scan kernel (KERNEL, default the forward): stalls, and
#                                             # executed counts per SASS line
set -uo pipefail
export OUT=${OUT:-/tmp/m4v-out}  # the modes that call this script again write there too
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
PEER_DIR=/tmp/peer

# The device image has no package registry: install carried wheels (.wheels/) that are missing.
# `bash scripts/fetch_device_carry.sh` makes .wheels/ and .peer/ here (git keeps neither).
install_wheels() {
  python3 -c "import safetensors, einops, tqdm, imageio_ffmpeg" 2>/dev/null && return 0
  python3 -m pip install -q --no-index --find-links .wheels safetensors einops tqdm imageio-ffmpeg
}

build_m4v() {
  local start=$SECONDS
  M4V_FORCE_CUDA_BUILD=1 python3 -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; return 1; }
  echo "m4v build: $((SECONDS - start)) s"
  python3 -c "import m4v.kernels as k; print({n: s.reason for n, s in k.available_backends().items()})"
}

# Pipeline dir, name: a bf16 copy under /tmp/ship/NAME (as it ships) and a tar of it in $OUT.
pack_bf16() {
  python3 -c "import sys, torch; from m4v.pipelines import M4VPipeline; \
    M4VPipeline.from_pretrained(sys.argv[1], dtype=torch.bfloat16).save_pretrained(sys.argv[2])" "$1" "/tmp/ship/$2" \
    && tar cf "$OUT/$2.tar" -C /tmp/ship "$2"
}

# The mamba_ssm lines of the benchmarks: waits (at most 10 minutes) for a peer build started by
# `peer-build`; without one the benchmarks run without mamba_ssm at once.
wait_for_peer() {
  compgen -G "$PEER_DIR/mamba_ssm-*" >/dev/null || { echo "mamba_ssm: no peer build started, timing without it"; return 0; }
  for _ in $(seq 120); do [ -f "$PEER_DIR/build.rc" ] && break; sleep 5; done
  echo "mamba_ssm build rc: $(cat "$PEER_DIR/build.rc" 2>/dev/null || echo 'not finished')"
}

# pytest FILE -k FILTER split round-robin (each shard a mix of shapes) over SHARDS processes side by
# side: the Triton tests' time is mostly their compiles, on the CPU. Logs: PREFIX-<shard>.log.
sharded_tests() {  # file filter prefix shards
  local file=$1 filter=$2 prefix=$3 shards=$4 pids=() ids
  python3 -m pytest "$file" -q --collect-only -k "$filter" 2>/dev/null | grep '::' >"$prefix-ids.txt"
  echo "$(wc -l <"$prefix-ids.txt") tests of $file -k '$filter' in $shards shards"
  for shard in $(seq 0 $((shards - 1))); do
    mapfile -t ids < <(awk -v n="$shards" -v k="$shard" 'NR % n == k' "$prefix-ids.txt")  # ids hold spaces
    [ ${#ids[@]} -gt 0 ] || continue
    # One core's worth of threads per shard: at torch's default (every core) twelve shards of the
    # CPU-heavy eval tests stalled each other past the limit (fortieth session).
    OMP_NUM_THREADS=$(( $(nproc) / shards > 0 ? $(nproc) / shards : 1 )) \
      timeout ${TEST_TIMEOUT:-540} python3 -m pytest -q -p no:cacheprovider "${ids[@]}" >"$prefix-$shard.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  for log in "$prefix"-[0-9]*.log; do echo "$(basename "$log"): $(tail -1 "$log")"; done
  grep -h -E "^(FAILED|ERROR)" "$prefix"-[0-9]*.log | head -20
  # One file back for all shards: a device call returns only a few files.
  local name; name=$(basename "$prefix")
  (cd "$(dirname "$prefix")" && tar cf "$name-logs.tar" "$name"-[0-9]*.log "$name-ids.txt" \
    && rm -f "$name"-[0-9]*.log "$name-ids.txt")
}

case "${1:-check}" in
  peer-build)
    # The sdist is git-ignored: the device call must carry .peer. Without it no build starts and no
    # $PEER_DIR is made, so the benchmarks run without mamba_ssm at once instead of waiting for it.
    compgen -G ".peer/mamba_ssm-*.tar.gz" >/dev/null || { echo "mamba_ssm: no .peer/ sdist here (scripts/fetch_device_carry.sh, then carry .peer)"; exit 1; }
    rm -rf "$PEER_DIR" && mkdir -p "$PEER_DIR" && tar xzf .peer/mamba_ssm-*.tar.gz -C "$PEER_DIR"
    cd "$PEER_DIR"/mamba_ssm-* || exit 1
    sed -i 's/+ cc_flag/+ ["-gencode", "arch=compute_90,code=sm_90"]/' setup.py
    # Niced, on 12 of the 16 cores: benchmarks of the m4v tree may run while it builds.
    setsid nohup nice -n 19 bash -c "MAX_JOBS=${PEER_JOBS:-12} MAMBA_FORCE_BUILD=TRUE python3 -m pip install --no-build-isolation --no-deps --no-index . \
      > $PEER_DIR/build.log 2>&1; echo \$? > $PEER_DIR/build.rc" >/dev/null 2>&1 &
    echo "mamba_ssm build started"
    ;;
  check)
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    install_wheels; build_m4v || exit 1
    # TESTS/TEST_FILTER narrow the run (the whole Triton set outlasts a call); SANITIZE picks scripts.
    timeout ${TEST_TIMEOUT:-540} python3 -m pytest ${TESTS:-tests} -q -k "${TEST_FILTER:-}" --durations=5 2>&1 \
      | tee "$OUT/tests.log" | tail -25
    for script in ${SANITIZE:-sanitize_selective_scan sanitize_causal_conv1d sanitize_recompose}; do
      for tool in memcheck racecheck; do
        compute-sanitizer --tool $tool --error-exitcode 9 python3 scripts/$script.py >"$OUT/$script-$tool.log" 2>&1
        echo "$script $tool rc=$?"; tail -2 "$OUT/$script-$tool.log"
      done
    done
    ;;
  scan-tests)
    python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    sharded_tests "${TEST_FILE:-tests/kernels/test_selective_scan.py}" "${TEST_FILTER:-triton}" "$OUT/scan-tests" ${SHARDS:-6}
    ;;
  bench)
    python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    wait_for_peer
    tail -3 "$PEER_DIR/build.log" 2>/dev/null
    python3 benchmarks/bench_selective_scan.py ${BENCH_ARGS:-} --json "$OUT/h100-selective-scan.json" 2>&1 | tee "$OUT/bench.log"
    ;;
  efficiency)
    # Issue-4 benchmarks; the peer build (started first) supplies the mamba_ssm lines.
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    (cd benchmarks && python3 bench_model.py --no-compile --json "$OUT/bench-model-eager.json") 2>&1 | grep -v '^\[{'
    wait_for_peer
    (cd benchmarks && python3 bench_mixer_vs_attention.py --json "$OUT/h100-mixer-vs-attention.json") 2>&1 \
      | grep -v '^\[{'
    ;;
  model)
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    (cd benchmarks && python3 bench_model.py --json "$OUT/bench-model.json" --profile "$OUT") 2>&1 \
      | grep -v '^\[{' | tail -20
    (cd benchmarks && python3 bench_pipeline.py --json "$OUT/bench-pipeline.json") 2>&1 | grep -v '^\[{' | tail -20
    ;;
  ship)
    # The whole recipe in one go (longer than one 10-minute device call: there, run its steps as
    # train-more / reward calls on a warm machine).
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    python3 -m m4v train --config configs/shapes-train-phase1.json --quiet 2>&1 | tail -3
    python3 -m m4v train --config configs/shapes-train.json --quiet 2>&1 | tail -3   # resumes phase 1
    cp runs/m4v-shapes/metrics.jsonl "$OUT/train-metrics.jsonl"
    CONFIG=configs/shapes-train-continue.json bash "$0" train-more
    BASE=runs/m4v-shapes-long/checkpoint/pipeline CONFIG=configs/shapes-train-continue2.json bash "$0" train-more
    bash "$0" reward
    ;;
  train-more)
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    config=${CONFIG:-configs/shapes-train-continue.json}
    python3 -m m4v train --model "${BASE:-runs/m4v-shapes/checkpoint/pipeline}" --config "$config" --quiet 2>&1 | tail -3
    cp "$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['out_dir'])" "$config")/metrics.jsonl" \
      "$OUT/train-more-metrics.jsonl"
    ;;
  train-many)
    # The tiny model leaves the GPU mostly idle (its steps wait on the CPU), so several runs side by
    # side each get about one run's speed; each gets its share of the CPU threads.
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    configs=(${CONFIGS:?CONFIGS=\"a.json b.json\"}) pids=()
    threads=$(( $(nproc) / ${#configs[@]} ))
    start=(--model "${BASE:?BASE=pipeline dir, or scratch}"); [ "$BASE" = scratch ] && start=()
    for config in "${configs[@]}"; do
      OMP_NUM_THREADS=$threads python3 -m m4v train "${start[@]}" --config "$config" --quiet \
        >"$OUT/train-$(basename "$config" .json).log" 2>&1 & pids+=($!)
    done
    wait "${pids[@]}"
    for config in "${configs[@]}"; do
      name=$(basename "$config" .json)
      out_dir=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['out_dir'])" "$config")
      tail -2 "$OUT/train-$name.log"; tail -1 "$out_dir/metrics.jsonl"; cp "$out_dir/metrics.jsonl" "$OUT/$name-metrics.jsonl"
      pack_bf16 "$out_dir/checkpoint/pipeline" "$name"
    done
    ;;
  eval)
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    models=(); for model in ${MODELS:?MODELS=\"dir dir\"}; do models+=(--model "$model"); done
    python3 -m m4v eval "${models[@]}" ${EVAL_ARGS:-} --device cuda --json "$OUT/eval.json" --quiet
    ;;
  reward)
    # CONFIGS (default: configs/shapes-reward.json) tune one after another from the same base; the base is
    # m4v/assets/m4v-shapes-base (the shipped model before its reward tuning: that training run's EMA in bf16)
    # when the training run is not on this machine.
    # EVAL_EXTRA: more pipelines for the same eval; EVAL_ARGS: more `m4v eval` arguments; EVAL_BASE=0 leaves
    # the base out of the eval (when device time is short and its numbers are already known).
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    configs=${CONFIGS:-configs/shapes-reward.json}
    field() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
    base_dir=$(field "${configs%% *}" model)
    [ -d "$base_dir" ] || { echo "reward: $base_dir is not here, tuning from a copy of the shipped base"
      mkdir -p "$(dirname "$base_dir")" && cp -r m4v/assets/m4v-shapes-base "$base_dir"; }
    for config in $configs; do  # one at a time: side by side, their CPU work starved each other
      echo "$(date +%T) reward-tune $config"
      python3 -m m4v reward-tune --config "$config" >"$OUT/reward-$(basename "$config" .json).log" 2>&1
    done
    models=()
    [ "${EVAL_BASE:-1}" = 0 ] || { pack_bf16 "$base_dir" base && models+=(--model /tmp/ship/base); }
    for config in $configs; do
      name=$(basename "$config" .json) out_dir=$(field "$config" out_dir)
      tail -2 "$OUT/reward-$name.log"; cp "$out_dir/metrics.jsonl" "$OUT/reward-$name-metrics.jsonl"
      pack_bf16 "$out_dir/checkpoint/pipeline" "$name" && models+=(--model "/tmp/ship/$name")
    done
    for extra in ${EVAL_EXTRA:-}; do models+=(--model "$extra"); done   # e.g. the shipped model, same run
    echo "$(date +%T) eval"
    python3 -m m4v eval "${models[@]}" ${EVAL_ARGS:-} --device cuda --json "$OUT/eval.json" --quiet
    ;;
  mixer)
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    wait_for_peer
    (cd benchmarks && python3 bench_mixer_vs_attention.py --tokens ${TOKENS:-15360 119040} --profile ${MIXER_ARGS:-} \
      --json "$OUT/h100-mixer-vs-attention.json") 2>&1 | grep -v '^\[{' | tee "$OUT/mixer.log" | tail -${TAIL:-60}
    ;;
  host)
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    (cd benchmarks && python3 bench_op_overhead.py --json "$OUT/op-overhead.json") 2>&1 | grep -v '^\[{'
    (cd benchmarks && python3 profile_mixer_host.py --tokens ${TOKENS:-15360} --paths eager op-by-op registered --rounds 3) \
      >"$OUT/host.txt" 2>&1
    grep "###" "$OUT/host.txt"
    ;;
  timeline)
    # The synced MM-DiM steps on the GPU's timeline (lead-in, idle gaps, tail), then MM-DiM's kernel
    # tables (mixer and block, eager).
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    (cd benchmarks && python3 profile_mixer_timeline.py --tokens ${TOKENS:-15360} ${TIMELINE_ARGS:-} --json "$OUT/timeline.json") 2>&1 \
      | tee "$OUT/timeline.log" | tail -${TAIL:-90}
    (cd benchmarks && python3 bench_mixer_vs_attention.py --tokens ${TOKENS:-15360} --profile --only mmdim) \
      >"$OUT/kernel-tables.log" 2>&1
    ;;
  patches)
    # Kernel versions written without a GPU wait in benchmarks/patches/ (NOTES.md has each one's
    # prediction): the tree as it is, then each patch applied alone, same run, same peer. PATCHES
    # (names without .patch) picks some; a patch's header lines "SCAN_TESTS: ..." and "SCAN_ARGS: ..."
    # (before its diff; git apply skips them) replace those settings for its round, and "MIXER: no"
    # skips the mixer there ("TEST_FILE: ..." runs another test file's tests). Each round's logs
    # are packed into $OUT/rounds.tar as it ends, so that a call cut short still brings back the
    # finished rounds (and stays within the files returned).
    install_wheels; wait_for_peer
    ROUNDS="$OUT/rounds"; mkdir -p "$ROUNDS"
    scan_round() {  # name [patch]: build, the scan's GPU tests, the scan benchmark, the mixer (token-major scan)
      local tests=${SCAN_TESTS:-not triton} args=${SCAN_ARGS:-} mixer=yes test_file=tests/kernels/test_selective_scan.py
      if [ -n "${2:-}" ]; then
        tests=$(sed -n 's/^SCAN_TESTS: //p' "$2" | head -1 | grep . || echo "$tests")
        test_file=$(sed -n 's/^TEST_FILE: //p' "$2" | head -1 | grep . || echo "$test_file")
        args=$(sed -n 's/^SCAN_ARGS: //p' "$2" | head -1 | grep . || echo "$args")
        mixer=$(sed -n 's/^MIXER: //p' "$2" | head -1 | grep . || echo yes)
      fi
      echo "== round $1 (tests: $test_file -k $tests; bench: $args; mixer: $mixer)"
      build_m4v || return 1
      TEST_TIMEOUT=300 sharded_tests "$test_file" "$tests" "$ROUNDS/tests-$1" ${SHARDS:-6}
      python3 benchmarks/bench_selective_scan.py $args --json "$ROUNDS/scan-$1.json" 2>&1 | tee "$ROUNDS/bench-$1.log" \
        | tail -14
      (cd benchmarks && python3 bench_conv1d.py --json "$ROUNDS/conv-$1.json") 2>&1 | grep -v '^\[{' | tail -5
      if [ "$mixer" != no ]; then
        (cd benchmarks && python3 bench_mixer_vs_attention.py --tokens 15360 --json "$ROUNDS/mixer-$1.json" >/dev/null 2>&1)
        python3 -c "import json, sys; [print('mixer', r['mixer'], r['scope'], r['pass'], r['ms']) for r in \
          json.load(open(sys.argv[1])) if r['mixer'] == 'mmdim']" "$ROUNDS/mixer-$1.json"
      fi
      tar cf "$OUT/rounds.tar" -C "$ROUNDS" .
    }
    scan_round tree
    for patch in benchmarks/patches/*.patch; do
      [ -e "$patch" ] || continue  # none waiting
      name=$(basename "$patch" .patch)
      [ -z "${PATCHES:-}" ] || [[ " $PATCHES " == *" $name "* ]] || continue
      git apply "$patch" && { scan_round "$name" "$patch"; git apply -R "$patch"; }
    done
    ;;
  final)
    bash "$0" peer-build
    install_wheels; build_m4v || exit 1
    timeout 120 python3 -m pytest -q tests/layers/test_layers.py tests/kernels/test_selective_scan.py \
      tests/kernels/test_eager.py tests/layers/test_mixer_autograd.py -k "cuda_graph or compiles or cuda_ops or on_cuda" \
      >"$OUT/graph-tests.log" 2>&1
    tail -1 "$OUT/graph-tests.log"
    # The eager rows are host-bound: niced as it is, the peer build beside them may still slow them.
    (cd benchmarks && timeout 200 python3 bench_mixer_vs_attention.py --tokens 15360 3840 --cuda-graphs \
      --only mmdim attn_cudnn attn_auto --json "$OUT/h100-mixer-graphs.json") 2>&1 | grep -v '^\[{' | tail -24
    BENCH_ARGS=${BENCH_ARGS:---backends cuda mamba_ssm} bash "$0" bench | grep -v '^\[{' | tail -16
    # Issue 7's other targets, same machine: reverse and varlen within 10% of the plain CUDA scan,
    # and the Triton forward within 2x of the CUDA one (forward only: the Triton backward's kernels
    # compile for minutes). Separate files, so h100-selective-scan.json keeps its plain records.
    timeout 150 python3 benchmarks/bench_selective_scan.py --backends cuda --variants plain reverse varlen \
      --json "$OUT/h100-scan-variants.json" 2>&1 | grep -v '^\[{' | tail -14
    timeout 150 python3 benchmarks/bench_selective_scan.py --backends cuda triton --passes fwd \
      --json "$OUT/h100-scan-triton-fwd.json" 2>&1 | grep -v '^\[{' | tail -8
    for tool in memcheck racecheck; do
      timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 python3 scripts/sanitize_selective_scan.py \
        >"$OUT/sanitize-$tool.log" 2>&1
      echo "sanitize_selective_scan $tool rc=$?"; tail -1 "$OUT/sanitize-$tool.log"
    done
    (cd "$OUT" && tar cf final.tar ./*.log ./*.json && rm -f ./*.log)
    ;;
  profile)
    # Executed instructions per SASS line (SourceCounters), to see where the issue slots go.
    # KERNEL: the kernel's name (default selective_scan_fwd; a backward one runs the backward too).
    # PROFILE_ARGS: more arguments of scripts/profile_scan.py (--token-major: the mixer's layout).
    python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    kernel=${KERNEL:-selective_scan_fwd}
    [[ $kernel == *bwd* ]] && backward=--backward || backward=
    ncu --kernel-name regex:"$kernel" --launch-skip 2 --launch-count 1 --section SourceCounters \
      --section InstructionStats --section WarpStateStats --section SchedulerStats --section LaunchStats \
      --section SpeedOfLight -o "$OUT/$kernel" -f python3 scripts/profile_scan.py $backward ${PROFILE_ARGS:-} >"$OUT/ncu.log" 2>&1 \
      || tail -20 "$OUT/ncu.log"
    ncu -i "$OUT/$kernel.ncu-rep" --page details >"$OUT/$kernel-details.txt" 2>&1
    ncu -i "$OUT/$kernel.ncu-rep" --page source --csv --print-source sass >"$OUT/$kernel-sass.csv" 2>&1 \
      || head -5 "$OUT/$kernel-sass.csv"
    grep -E "Executed Instructions|Issue Slots Busy|Eligible Warps|Active Warps|Registers|Duration|Throughput" \
      "$OUT/$kernel-details.txt" | head -24
    # One file back for all three: a call returns few files, and the per-line table was lost once.
    tar cf "$OUT/$kernel-tables.tar" -C "$OUT" "$kernel-details.txt" "$kernel-sass.csv" ncu.log
    ;;
  recompose)
    install_wheels; python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    python3 benchmarks/bench_recompose.py --json "$OUT/h100-recompose.json" 2>&1 | tee "$OUT/bench-recompose.log"
    ;;
  conv)
    python3 -c "import m4v._C" 2>/dev/null || build_m4v || exit 1
    (cd benchmarks && python3 bench_conv1d.py --json "$OUT/h100-conv1d.json") 2>&1 | grep -v '^\[{'
    ;;
esac
