#!/usr/bin/env bash
# The GPU figures of the pure-PyTorch benchmarks (ResNeXt-29's execution modes, the input
# pipeline), for a machine with a CUDA GPU and PyTorch but no Ray and no network. From the
# repository root: `bash benchmarks/gpu_check.sh`; each benchmark's output is kept under $OUT
# when it is set (else here). About 8 minutes.
set -u
export PYTHONPATH=.
out="${OUT:-.}"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout 420 python benchmarks/resnext_execution.py --batch 128 --seconds 2 \
  | tee "$out/resnext_execution.txt"
timeout 120 python benchmarks/input_pipeline.py --seconds 2 | tee "$out/input_pipeline.txt" \
  || echo "input_pipeline did not finish (missing package or time): see above"
