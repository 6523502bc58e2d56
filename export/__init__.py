"""The export stage (merge, ONNX, optimise, quantise, validate): not built yet, see issue 3."""
