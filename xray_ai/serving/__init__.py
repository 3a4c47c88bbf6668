"""Models served: the registry entry's model loaded, verified, cached and run on TensorFlow or ONNX Runtime.

- manager: ModelManager, LoadedModel, LoadedEnsemble (load, cache, pick the backend).
- verify: is a model file the one its entry names, and can it serve?
- analyzer: the interface both backends' analyzers share.
- head: a model's classification head and its Grad-CAM in closed form.
- onnx_backend: the ONNX export (built, checked, cached, loaded) and its analyzer.
- settings: backend and cache settings from the environment.
- artifacts: the names (and sha256) of a model's side files and ONNX exports.
- input_check, body_part: the side files read at load; preprocessing: model-ready batches.

Importing this package imports nothing heavy: TensorFlow is imported when a model loads.
"""

__all__: list[str] = []  # import the submodules themselves
