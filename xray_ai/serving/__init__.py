"""Models served: the registry entry's model loaded, verified, cached and run on TensorFlow or ONNX Runtime.

Importing this package imports nothing heavy: TensorFlow is imported when a model loads.
"""
