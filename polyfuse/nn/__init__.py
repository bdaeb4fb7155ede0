"""The network (torch): one encoder per input (``encoders``, ``timeseries``, ``video``, pretrained
``hf``/``video_hf``; ``build`` picks the one a spec input asks for), fusion, heads, the wide half of
wide-and-deep text, and ``model`` composing them.
May import: ``polyfuse.preprocess``, ``polyfuse.spec`` and the basics.
"""
