"""The `polyfuse` command line: ``main`` builds the parser; each command group has its own module
(``spec``: init/schema, ``train``: train/evaluate/robustness, ``predict``: predict/embed, ``deploy``:
export/bench, ``serve``: serve/k8s, ``privacy``: keygen/encrypt/sign/audit, ``demo``).
May import: anything; nothing imports it. Heavy parts are imported when a command runs, so the
base install's commands work without torch.
"""
