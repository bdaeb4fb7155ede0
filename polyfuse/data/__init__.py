"""Records before preprocessing: reading tables (CSV, Parquet, JSONL, DataFrame, records) and the raw
files their cells name (``io``), and the offline demo dataset (``demo``).
May import: the basics only (``polyfuse.errors``, ``polyfuse.extras``); ``io`` never imports torch.
"""
