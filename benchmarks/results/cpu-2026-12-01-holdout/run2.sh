#!/bin/bash
# The three runs after run.sh's seven: run.sh's lines up to `export TQDM_DISABLE=1` (its run() function),
# then these, as they ran (one at a time, after run.sh had finished).
run lr01_s1 --train.seed=1 --optim.lr=0.1
run preset_s2 --train.seed=2
run lr01_s2 --train.seed=2 --optim.lr=0.1
