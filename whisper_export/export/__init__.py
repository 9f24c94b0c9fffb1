"""Graph building and export: ONNX graphs emitted from the weights (graphs.py, graphs_ort.py, onnx_builder.py),
the bundle writer (exporter.py) and bundles exported on demand into the user cache (on_demand.py).

Nothing is imported here, so that `whisper_export.export.on_demand` can find a cached bundle without onnx.
"""
