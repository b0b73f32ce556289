"""Component runners: torch, ONNX Runtime and TensorRT produce the same protocol from one IO spec."""
