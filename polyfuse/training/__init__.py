"""The training recipe (``recipe``: named stages, top to bottom) and its parts: the decoded training
set and its batches (``trainset``), disk shards, the frozen-backbone feature cache, the epoch loop,
optimiser, device and precision, torchrun/DDP, checkpoints, weight averaging, DP-SGD (``dp``),
the wide half's fit, classic heads, temperature calibration, and malloc habits (``memory``).
Named ``training`` because ``polyfuse.train`` is the public function.
May import: ``polyfuse.evaluate``, ``polyfuse.nn`` and everything below them.
"""
