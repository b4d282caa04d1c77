#!/bin/bash
# NoProp on a lent GPU machine (issue 17), inside one short lease: the two NoProp-CT rows at
# gpu_long's settings until a deadline, beside the paper_table rows whose seeds 1-2 are missing.
#
#   bash benchmarks/noprop_gpu_lease.sh prepare     # here, once: fills .gpu/ (git-ignored)
#   bash benchmarks/noprop_gpu_lease.sh             # there, e.g. the device tool's run with
#                                                   # carry [".gpu"] and timeout_s 570
#
# `prepare` puts into .gpu/: wheels for Python 3.12 of the packages the GPU image lacks (at this
# venv's versions) and the Fashion-MNIST files. The GPU image brings its own torch/torchvision.
# What travels must stay under 64 MiB: the tracked tree (~26 MB, 17 of them one pretrained
# policy, which the NoProp runs do not read) plus .gpu (~47 MB) is over it, so that one file was
# moved out of the checkout for the lease and back after it.
#
# The CT rows run with a constant learning rate, so a run stopped after epoch N *is* the N-epoch
# run: at TRAIN_S each is stopped (SIGTERM; its checkpoint, written by rename, is the last
# finished epoch's) and then tested as `--config gpu_long epochs=N`. The seed rows
# (`--config gpu`, seeds 1-2) stop at C_S; rows finished by then are kept. Everything but the
# checkpoints lands in $OUT/runs.tgz. CT_ROWS (default "18 50") and SEED_ROWS (default none) pick the runs: on
# 2026-11-30 the three processes kept the H200 99 % busy (CT ResNet-18 12.6 s an epoch, ResNet-50
# 18.6 s; backprop ResNet-18 took 3.5 s alone), so CT_ROWS=18 SEED_ROWS= gives one row more
# epochs. CT_EPOCHS=E CT_TAIL=K give the CT rows a fixed length with a K-epoch cosine tail
# (`epochs=E train.lr_decay_epochs=K`; on CPU a 6-epoch tail lifted CT ResNet-18 by ~3 points):
# a row that finishes writes its own result; one stopped before its tail is tested as above; one
# stopped inside its tail is reported and not tested (its last epochs ran at other rates).
# Local dry run on a CPU:
#   OUT=/tmp/o NO_WHEELS=1 TRAIN_S=70 C_S=110 END_S=150 \
#     EXTRA="train.device=cpu threads=1 data.train_subset=512 data.test_subset=256 train.max_steps_per_epoch=2" \
#     bash benchmarks/noprop_gpu_lease.sh
set -u
if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p .gpu/whl .gpu/fmnist
  pins=$(python3 -m pip list --format=freeze 2>/dev/null | grep -iE \
    '^(zarr|numcodecs|donfig|google-crc32c|diffusers|hydra-core|omegaconf|importlib[-_]metadata)==')
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl $pins
  python3 -m pip wheel -q --no-deps -w .gpu/whl \
    "antlr4-python3-runtime==$(python3 -m pip show antlr4-python3-runtime | awk '/^Version/{print $2}')"
  cp "$(python3 -c 'from diffpolicy import paths; print(paths.fmnist_dir())')"/*-ubyte.gz .gpu/fmnist/
  du -sh .gpu; exit 0
fi
T0=$(date +%s)
TRAIN_S=${TRAIN_S:-420}     # stop the two long CT runs (s after the start)
C_S=${C_S:-470}             # stop the seed rows
END_S=${END_S:-520}         # stop waiting for the CT runs' tests
EXTRA=${EXTRA:-}
CT_ROWS=${CT_ROWS-18 50}    # NoProp-CT ResNet rows to train (gpu_long), each in its own process:
                            # K trains noprop-ct-resnetK, e.g. "18-adamw" its AdamW twin
SEED_ROWS=${SEED_ROWS-}     # rows of --config gpu to train for seeds 1-2, e.g. backprop-dt,noprop-dt ('' = none:
                            # paper_table has seeds 0-2 of every row since 2026-11-30)
CT_EPOCHS=${CT_EPOCHS:-}     # CT rows' epochs ('' = gpu_long's 100, stopped at TRAIN_S)
CT_TAIL=${CT_TAIL:-0}        # with CT_EPOCHS: the last CT_TAIL of them decay to 0 on a cosine
CT_ARGS=()
if [ -n "$CT_EPOCHS" ]; then CT_ARGS=("epochs=$CT_EPOCHS" "train.lr_decay_epochs=$CT_TAIL")
elif [ "$CT_TAIL" != 0 ]; then echo "CT_TAIL needs CT_EPOCHS (the tail ends the run)"; exit 2; fi
R=${R:-/tmp/runs}
el() { echo $(( $(date +%s) - T0 )); }
mkdir -p "$R" "$OUT"
exec > >(tee -a "$OUT/device.log") 2>&1
echo "== $(date -u) start"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
nproc; python3 -V
if [ -d .gpu/whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || { echo "WHEELS FAILED"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 DIFFPOLICY_FMNIST=$PWD/.gpu/fmnist
python3 -c "import torch, torchvision, diffpolicy.noprop.bench; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
  || { echo "IMPORT FAILED"; exit 4; }
python3 -c "import torch; from diffpolicy.host_copy import to_device
s = torch.arange(100000.0); o = to_device(s, 'cuda'); s.zero_()
assert torch.equal(o.cpu(), torch.arange(100000.0)); print('non-blocking host copy: ok')" \
  || echo "NON-BLOCKING HOST COPY CHECK FAILED"
NP="python3 -m diffpolicy.noprop"
(nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 30 > "$R/smi.log" 2>&1 &)

start() {  # log name, then the command's arguments; prints the pid (= its process group)
  local name=$1; shift
  setsid $NP "$@" train.progress=false $EXTRA > "$R/$name.log" 2>&1 &
  echo "$!"
}
alive() { [ -n "$1" ] && [ "$1" -gt 1 ] && kill -0 "$1" 2>/dev/null; }   # never pid 0 (the own group)
stop() { alive "$1" || return 0; kill -TERM -- -"$1" 2>/dev/null; for _ in $(seq 20); do alive "$1" || return; sleep 1; done
         kill -KILL -- -"$1" 2>/dev/null; }
CT=()
for k in $CT_ROWS; do
  CT+=("$(start "ct$k" --config gpu_long out_dir=$R/gl$k 'seeds=[0]' "only=[noprop-ct-resnet$k]" "${CT_ARGS[@]+"${CT_ARGS[@]}"}")")
done
C=""    # no process
[ -n "$SEED_ROWS" ] && C=$(start seeds --config gpu out_dir=$R/pt 'seeds=[1,2]' "only=[$SEED_ROWS]")
echo "== $(el) s: started CT rows ${CT[*]:-none} ($CT_ROWS), seed rows $C"
any_alive() { for p in "$@"; do alive "$p" && return 0; done; return 1; }
last=0
while [ "$(el)" -lt "$TRAIN_S" ]; do
  sleep 5
  if ! any_alive "${CT[@]}"; then
    if [ ${#CT[@]} -gt 0 ] && [ "$(el)" -lt 120 ] && ! ls "$R"/gl*/checkpoints/*.pt >/dev/null 2>&1; then
      echo "== $(el) s: every CT run died before an epoch: stopping all"; stop "$C"; break
    fi
    alive "$C" || break
  fi
  if [ $(( $(el) - last )) -ge 60 ]; then
    last=$(el); echo "== $(el) s"; tail -qn 1 "$R"/*.log | grep -v "^20[0-9][0-9]/"
  fi
done
echo "== $(el) s: stopping the CT runs"
for p in "${CT[@]}"; do stop "$p"; done
FIN=()
for k in $CT_ROWS; do
  row=noprop-ct-resnet$k; dir=$R/gl$k; ck=$dir/checkpoints/${row}_seed0.pt
  [ -f "$dir/rows/${row}_seed0.json" ] && { echo "$row finished all its epochs"; continue; }
  [ -f "$ck" ] || { echo "$row: no checkpoint"; continue; }
  n=$(python3 -c "import torch; print(torch.load('$ck', map_location='cpu', weights_only=False)['epoch'])")
  if [ -n "$CT_EPOCHS" ] && [ "$CT_TAIL" -gt 0 ] && [ "$n" -gt $(( CT_EPOCHS - CT_TAIL )) ]; then
    echo "== $(el) s: $row stopped after epoch $n, inside its tail (epochs $(( CT_EPOCHS - CT_TAIL + 1 ))-$CT_EPOCHS): not a finished run, not tested"
    continue
  fi
  echo "== $(el) s: $row stopped after epoch $n: testing it as epochs=$n"
  FIN+=("$(start "fin$k" --config gpu_long out_dir="$dir" 'seeds=[0]' "only=[$row]" "epochs=$n")")
done
while [ "$(el)" -lt "$C_S" ] && alive "$C"; do sleep 5; done
alive "$C" && { echo "== $(el) s: stopping the seed rows"; stop "$C"; }
for p in "${FIN[@]+"${FIN[@]}"}"; do
  while [ "$(el)" -lt "$END_S" ] && alive "$p"; do sleep 2; done
  alive "$p" && { echo "== $(el) s: a CT test ran past END_S: stopped"; stop "$p"; }
done
pkill -f "nvidia-smi --query" 2>/dev/null
echo "== $(el) s: done"; ls "$R"/*/rows
tar czf "$OUT/runs.tgz" -C "$R" --exclude=checkpoints .
tail -n 5 "$R"/*.log
