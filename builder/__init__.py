"""Stage 4: ONNX graphs -> TensorRT engines (a static compatibility check on any machine, the build on the GPU)."""
