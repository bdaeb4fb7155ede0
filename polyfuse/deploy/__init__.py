"""A trained model taken to where it runs: verified ONNX / int8 / torch.export builds (``exporter``,
``onnx``, ``quantize``), batch prediction over tables (``batch``), embeddings as Parquet (``embed``),
and ``bench`` comparing every runtime with its report and the runtime's install footprint.
May import: ``polyfuse.estimator`` (the Model), ``polyfuse.runtime`` and everything below them.
"""
