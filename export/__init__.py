"""Offline tools: torch → ONNX export (`to_onnx`), verification (`verify`), TensorRT engines (`to_trt`).

The command line is `python -m export` (console script `wplus-export`), see `export.cli`.
"""
