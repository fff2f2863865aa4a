"""fer-edge: facial-expression recognition with ONNX Runtime."""
__version__ = "0.1.0"
