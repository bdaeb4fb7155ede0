"""`polyfuse keygen`, `polyfuse encrypt`, `polyfuse sign` and `polyfuse audit verify`: the command-line
side of :mod:`polyfuse.privacy.crypto`, :mod:`polyfuse.privacy.sign` and :mod:`polyfuse.privacy.audit`. Keys never travel in argv:
the encryption key comes from an environment variable, the signing key from a file."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from polyfuse.errors import ArtifactError
from polyfuse.privacy.crypto import DEFAULT_KEY_ENV


def cmd_keygen(args: argparse.Namespace) -> None:
    if args.sign:
        from polyfuse.privacy.sign import keygen

        private, public = keygen(args.out)
        print(f"wrote {private} (private, keep it secret) and {public} (public, give it to whoever loads the model)")
        return
    from polyfuse.privacy.crypto import new_key

    print(new_key())
    print(f"(a new AES-256 key: store it in a secret manager and export it as ${DEFAULT_KEY_ENV})", file=sys.stderr)


def cmd_encrypt(args: argparse.Namespace) -> None:
    from polyfuse.artifact import SIGNATURE, encrypt_artifact
    from polyfuse.privacy.crypto import key_from_env

    if not (Path(args.model) / "manifest.json").is_file():
        raise ArtifactError(f"{args.model}: not a model directory (no manifest.json); give the folder `polyfuse "
                            "train --out` wrote")
    if not os.environ.get(args.key_env):  # the loader's message assumes an encrypted model: say how to start
        raise ArtifactError(f"${args.key_env} is unset or empty: make a key with `export {args.key_env}=$(polyfuse "
                            "keygen)`, keep it safe, then encrypt")
    was_signed = (Path(args.model) / SIGNATURE).exists()
    manifest = encrypt_artifact(args.model, key_from_env(args.key_env))
    enc = manifest["encryption"]
    print(f"encrypted {len(enc['files'])} files of {args.model} ({enc['algorithm']}, key {enc['key_id']}); "
          f"load it with ${args.key_env} set")
    if was_signed:  # the manifest changed, so the old signature could only fail
        print(f"the signature no longer applied and was removed: run `polyfuse sign {args.model} --key-file KEY`")


def cmd_sign(args: argparse.Namespace) -> None:
    from polyfuse.artifact import sign_artifact

    print(f"wrote {sign_artifact(args.model, args.key_file)}")


def cmd_audit_verify(args: argparse.Namespace) -> None:
    from polyfuse.privacy.audit_chain import AuditError
    from polyfuse.privacy.audit_verify import verify

    if args.expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", args.expect_head):
        raise AuditError(f"--expect-head {args.expect_head!r}: expected the 64 hex digits `audit verify` printed")
    v = verify(args.log, expect_head=args.expect_head, head_file=not args.no_head_file)
    for note in v.notes:
        print(f"note: {note}")
    if not v.ok:
        raise AuditError(f"audit log NOT intact after {v.lines} good entries: {v.problem}")
    print(f"{args.log}: intact, {v.lines} entries in {v.files} file(s); last hash {v.head} (keep a copy elsewhere, "
          "e.g. with a log shipper, and pass it as --expect-head later to show that nothing was removed from the end)")


def add_key_options(p: argparse.ArgumentParser) -> None:
    """--key-env / --verify-key for every command that opens a model."""
    p.add_argument("--key-env", default=None,
                   help=f"environment variable holding an encrypted model's key (default {DEFAULT_KEY_ENV})")
    p.add_argument("--verify-key", default=None, help="PEM public key file: refuse an unsigned or mis-signed model")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="print a new AES-256 key for `encrypt` (or, with --sign, write an Ed25519 key pair)")
    p.add_argument("--sign", action="store_true", help="write an Ed25519 signing key pair instead")
    p.add_argument("--out", default="polyfuse-signing.pem", help="with --sign: the private key file (public: OUT.pub)")
    p.set_defaults(fn=cmd_keygen)

    p = sub.add_parser("encrypt", help="encrypt every file of a model directory in place (AES-256-GCM)")
    p.add_argument("model")
    p.add_argument("--key-env", default=DEFAULT_KEY_ENV, help="environment variable holding the key (base64 or hex)")
    p.set_defaults(fn=cmd_encrypt)

    p = sub.add_parser("sign", help="sign a model's manifest with an Ed25519 private key (writes manifest.sig)")
    p.add_argument("model")
    p.add_argument("--key-file", required=True, help="PEM private key (`polyfuse keygen --sign`)")
    p.set_defaults(fn=cmd_sign)

    p = sub.add_parser("audit", help="check a served model's audit log (`polyfuse serve --audit-log`)")
    audit = p.add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", help="check the hash chain over every rotated file; name the first bad line")
    p.add_argument("log", help="the --audit-log PATH (its rotated PATH.000001... files are found beside it)")
    p.add_argument("--expect-head", default=None, metavar="HASH",
                   help="a last hash kept elsewhere (printed by an earlier verify, or PATH.head's): fail unless "
                        "the chain still holds it, i.e. nothing was cut from the end since")
    p.add_argument("--no-head-file", action="store_true",
                   help="do not check the head the server keeps in PATH.head (default: checked when present)")
    p.set_defaults(fn=cmd_audit_verify)
