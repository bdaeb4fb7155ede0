"""The one preprocessing: numpy functions per modality (decode -> fit -> collate), shared by training,
the torch-free runtime, the server and every export's parity check; ``pipeline`` joins them.
Also the live windows of real-time streams (``streams``).
May import: ``polyfuse.spec``, ``polyfuse.data``, ``polyfuse.privacy`` (de-identification) and the
basics. Never torch, transformers or scikit-learn (an import-linter contract checks it).
"""
