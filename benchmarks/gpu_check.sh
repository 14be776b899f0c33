#!/usr/bin/env bash
# Issue 11, item 5, on a lent GPU machine (PyTorch, no Ray, no network), from the repository
# root: `bash benchmarks/gpu_check.sh`. Runs the pure-PyTorch benchmarks on the GPU and keeps
# their output under $OUT (the device tool's output folder) when it is set. About 8 minutes.
set -u
export PYTHONPATH=.
out="${OUT:-.}"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout 420 python benchmarks/resnext_execution.py --batch 128 --seconds 2 \
  | tee "$out/resnext_execution.txt"
timeout 120 python benchmarks/input_pipeline.py --seconds 2 | tee "$out/input_pipeline.txt" \
  || echo "input_pipeline did not finish (missing package or time): see above"
