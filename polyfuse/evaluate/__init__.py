"""Scores of a trained network: metrics per output, evaluation with per-input ablation (``scores``),
the linear baseline every network must clear and the comparison with it, plots and the terminal
summary (``report``), the model card, and robustness under corrupted and missing inputs.
Training uses these to validate and to report, so this package sits below ``polyfuse.training``.
May import: ``polyfuse.nn``, ``polyfuse.preprocess``, ``polyfuse.spec``, ``polyfuse.data``,
``polyfuse.artifact`` and the basics; a trained model is passed in, never loaded from here.
"""
