"""The spec: which columns are which modality, how each is encoded, fused and predicted.

``schema`` (the Spec model, ``load_spec``, the JSON Schema) and ``inputs`` (one section per input
kind). Pydantic only: the torch-free runtime loads specs with it.
May import: the basics (``polyfuse.errors``, ``polyfuse.extras``) and nothing else of polyfuse.
"""
