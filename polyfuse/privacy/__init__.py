"""Privacy and security: de-identification of text (pii), encryption at rest (crypto), signed
artifacts (sign). ``pii`` is numpy/regex only, so the torch-free runtime can import it."""
