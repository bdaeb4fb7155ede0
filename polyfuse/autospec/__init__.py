"""`polyfuse init`: a commented spec from a table.

``profile`` measures a bounded sample of each column, ``infer`` chooses the inputs and the spec
from the measurements, ``target`` the output and the test table, ``spec_yaml`` writes it as YAML
with a comment on each choice.
May import: ``polyfuse.data``, ``polyfuse.preprocess``, ``polyfuse.spec`` and the basics; never torch.
"""
