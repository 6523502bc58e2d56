"""The export stage: merge LoRA, export ONNX, optimise, quantise, gate on parity, benchmark."""
