"""Privacy and security primitives: de-identification of text (``pii``, ``pii_names``, the
labelled ``corpus`` that measures it and the adversarial inputs of ``attacks`` that time it),
AES-256-GCM sealing (``crypto``), Ed25519 keys (``sign``) and the hash-chained audit log (``audit``
writes it, ``audit_chain`` keeps its files and head, ``audit_verify`` checks it). Sealing or signing
a whole artifact is :mod:`polyfuse.artifact`'s; DP-SGD training is :mod:`polyfuse.training.dp`.
May import: the basics only (``polyfuse.errors``, ``polyfuse.extras``); numpy/regex/cryptography, so
the torch-free runtime can import it.
"""
