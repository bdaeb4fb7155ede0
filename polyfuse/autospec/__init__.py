"""`polyfuse init`: a commented spec from a table.

``profile`` measures a bounded sample of each column, ``infer`` chooses the spec from the
measurements, ``spec_yaml`` writes it as YAML with a comment on each choice.
May import: ``polyfuse.data``, ``polyfuse.preprocess``, ``polyfuse.spec`` and the basics; never torch.
"""
