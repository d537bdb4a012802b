#!/bin/bash
# held-out check of the cifar10-cpu preset: one setting changed at a time, seed 0, 5 epochs
cd /tmp/kh/src; export PYTHONPATH=/tmp/kh/src
run() {  # name, overrides...
  name=$1; shift
  [ -f /tmp/kh/$name/done ] && return
  rm -rf /tmp/kh/$name
  start=$(date +%s); load0=$(cut -d' ' -f1 /proc/loadavg)
  python -m byol.cli pretrain --config cifar10-cpu --data.root=../shared/data/cifar10 --train.knn_holdout=10000 \
      --train.progress=false --train.out_dir=/tmp/kh/$name "$@" > /tmp/kh/$name.log 2>&1
  rc=$?
  python -m byol.cli eval knn /tmp/kh/$name/checkpoints/last.pt --out /tmp/kh/$name/test_knn.json >> /tmp/kh/$name.log 2>&1
  echo "$name rc=$rc wall=$(( $(date +%s) - start )) load=$load0/$(cut -d' ' -f1 /proc/loadavg) args=$*" >> /tmp/kh/summary.txt
  touch /tmp/kh/$name/done
}
export TQDM_DISABLE=1
run lr01_s1 --train.seed=1 --optim.lr=0.1
run preset_s2 --train.seed=2
run lr01_s2 --train.seed=2 --optim.lr=0.1
