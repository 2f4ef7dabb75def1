"""Using a trained model: the Python API (``localize``), the predict mode, ONNX / TorchScript export."""
