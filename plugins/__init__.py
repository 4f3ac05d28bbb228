"""Custom ops with one meaning everywhere: a PyTorch reference, and later ONNX/ORT/TensorRT forms."""
