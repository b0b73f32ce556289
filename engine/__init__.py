"""W+ Studio inference engine: no Qt, synchronous, thread-agnostic.

Heavy dependencies (torch, diffusers, onnxruntime, tensorrt, dlib) are imported lazily inside the
functions that need them, so `import engine.api` stays cheap for the GUI and the CLI's `--help`.
"""

__version__ = "0.1.0"
