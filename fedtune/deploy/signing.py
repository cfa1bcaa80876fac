"""App signing: SuperNodes that run only the app the consortium approved.

Flower 1.42's SuperNode takes ``--trusted-entities FILE`` (YAML, ``public_key_id: 'ssh-ed25519
...'``) and then runs a run's FAB (the app's Python code) only if the FAB carries an ed25519
signature, by one of those keys, over ``create_message_to_sign(sha256(FAB), signed_at)``
(``flwr.supernode.start_client_internal._verify_fab``); any other FAB gets an error reply and
never executes. The SuperLink attaches signatures only to apps it fetched from an app registry
(``flwr run @publisher/name==version``), which :mod:`fedtune.deploy.registry` serves.

- :func:`make_signing_key`: the consortium's ed25519 key pair (OpenSSH format, private 0600)
  and the ``trusted-entities.yaml`` every SuperNode takes.
- :func:`build_fab`: the FAB of an app folder, built by Flower's own ``flwr build`` code.
- :func:`sign_fab` / :func:`write_signed_app`: a signature record, and the FAB plus its record
  in a registry folder.
- :func:`verify_fab`: Flower's own SuperNode check, for a FAB and its records.

Signing happens offline, where the private key lives; the registry and the SuperLink hold only
public material.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedtune.deploy.credentials import CredentialError, _write

TRUSTED_FILE = "trusted-entities.yaml"
RECORD_SUFFIX = ".json"  # next to each FAB: <fab file>.json


class SigningError(CredentialError):
    """A signing or registry request that cannot be carried out as asked (one sentence)."""


def key_id(public_key: ed25519.Ed25519PublicKey, name: str) -> str:
    """The key's public_key_id: its name and the first 16 hex digits of sha256(raw key)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{name}-{hashlib.sha256(raw).hexdigest()[:16]}"


def _openssh_public(public_key: ed25519.Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH).decode()


def make_signing_key(out: str | Path, name: str = "consortium",
                     force: bool = False) -> dict[str, Path]:
    """Write ``NAME`` (private, OpenSSH ed25519, 0600), ``NAME.pub`` and
    ``trusted-entities.yaml`` (``{key id: public key}``) into ``out``; returns their paths."""
    if not name or "/" in name or name.startswith("."):
        raise SigningError(f"--name '{name}' must be a plain file name, e.g. consortium.")
    out = Path(out)
    paths = {"private": out / name, "public": out / f"{name}.pub", "trusted": out / TRUSTED_FILE}
    for p in paths.values():
        if p.exists() and not force:
            raise SigningError(f"{p} exists; pass --force to overwrite it, or choose another "
                               "--out folder.")
    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key()
    kid = key_id(public, name)
    _write(paths["private"], key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()),
           private=True, force=force)
    _write(paths["public"], f"{_openssh_public(public)} {kid}\n".encode(), private=False,
           force=force)
    _write(paths["trusted"], yaml.safe_dump({kid: _openssh_public(public)}).encode(),
           private=False, force=force)
    return paths


def load_signing_key(path: str | Path) -> tuple[ed25519.Ed25519PrivateKey, str]:
    """(private key, its key id) from an OpenSSH ed25519 file written by make_signing_key."""
    from flwr.supercore.primitives.asymmetric_ed25519 import load_private_key

    path = Path(path)
    if not path.is_file():
        raise SigningError(f"signing key {path} does not exist; create it with `fedtune "
                           "signing-key --out <folder>` and pass --key <folder>/<name>.")
    try:
        key = load_private_key(path)
    except ValueError as err:
        raise SigningError(f"{path} is not an unencrypted OpenSSH ed25519 private key "
                           f"({err}); create one with `fedtune signing-key`.") from None
    return key, key_id(key.public_key(), path.name)


def read_trusted(path: str | Path) -> dict[str, str]:
    """A trusted-entities file as the SuperNode reads it (YAML ``{key id: public key}``)."""
    try:
        trusted = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SigningError(f"cannot read trusted entities {path} ({err}).") from None
    if not isinstance(trusted, dict) or not trusted:
        raise SigningError(f"{path} holds no 'key id: ssh-ed25519 ...' lines; write it with "
                           "`fedtune signing-key`.")
    return {str(k): str(v) for k, v in trusted.items()}


def build_fab(app: str | Path) -> bytes:
    """The FAB of app folder ``app``, byte for byte what ``flwr build``/``flwr run .`` send."""
    from flwr.cli.build import build_fab_from_disk

    app = Path(app).expanduser().resolve()
    if not (app / "pyproject.toml").is_file():
        raise SigningError(f"{app} has no pyproject.toml; pass --app <the Flower app folder>.")
    try:
        return build_fab_from_disk(app)
    except ValueError as err:
        raise SigningError(f"cannot build the app in {app}: {err}") from None


def fab_identity(fab: bytes) -> dict[str, str]:
    """{"app_id": "@publisher/name", "version", "sha256", "file": Flower's FAB file name}."""
    from flwr.cli.build import get_fab_filename
    from flwr.common.config import get_fab_config, get_metadata_from_config

    try:
        config = get_fab_config(fab)
        fab_id, version = get_metadata_from_config(config)
    except (ValueError, KeyError, OSError) as err:
        raise SigningError(f"not a Flower app bundle ({err}).") from None
    digest = hashlib.sha256(fab).hexdigest()
    return {"app_id": f"@{fab_id}", "version": version, "sha256": digest,
            "file": get_fab_filename(config, digest)}


def sign_fab(fab: bytes, key: ed25519.Ed25519PrivateKey, kid: str,
             signed_at: int | None = None) -> dict[str, Any]:
    """One verification record, in the form Flower's app registry returns it."""
    from flwr.supercore.primitives.asymmetric_ed25519 import (
        create_message_to_sign,
        sign_message,
    )

    signed_at = int(time.time()) if signed_at is None else int(signed_at)
    message = create_message_to_sign(hashlib.sha256(fab).digest(), signed_at)
    signature = sign_message(key, message)
    return {"public_key_id": kid, "signed_at": signed_at,
            "signature": base64.urlsafe_b64encode(signature).decode().rstrip("=")}


def verification_dict(records: list[dict[str, Any]]) -> dict[str, str]:
    """The ``Fab.verifications`` a SuperLink builds from registry records (Flower's own)."""
    from flwr.superlink.servicer.control.control_handlers import _format_verification

    return _format_verification(records)


def verify_fab(fab: bytes, records: list[dict[str, Any]], trusted: dict[str, str]) -> bool:
    """Whether a SuperNode with these trusted entities runs this FAB (Flower's own check)."""
    from flwr.supercore.fab import Fab
    from flwr.supernode.start_client_internal import _verify_fab

    verifications = verification_dict(records)
    return _verify_fab(Fab(hashlib.sha256(fab).hexdigest(), fab, verifications), trusted)


def write_signed_app(fab: bytes, records: list[dict[str, Any]], out: str | Path,
                     force: bool = False) -> tuple[Path, Path]:
    """Write ``<fab file>`` and ``<fab file>.json`` (identity + records) into ``out``."""
    ident = fab_identity(fab)
    out = Path(out)
    fab_path = out / ident["file"]
    record_path = out / (ident["file"] + RECORD_SUFFIX)
    for p in (fab_path, record_path):
        if p.exists() and not force:
            raise SigningError(f"{p} exists; pass --force to overwrite it.")
    _write(fab_path, fab, private=False, force=force)
    record = {**ident, "verifications": records}
    _write(record_path, (json.dumps(record, indent=1) + "\n").encode(), private=False,
           force=force)
    return fab_path, record_path


def sign_app(key_path: str | Path, out: str | Path, app: str | Path | None = None,
             fab_file: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Build (or read) a FAB, sign it with ``key_path``, check the signature with Flower's
    SuperNode check, write it into ``out``; returns the record and the paths."""
    key, kid = load_signing_key(key_path)
    if fab_file is not None:
        try:
            fab = Path(fab_file).read_bytes()
        except OSError as err:
            raise SigningError(f"cannot read the FAB {fab_file} ({err}).") from None
    else:
        fab = build_fab(app if app is not None else ".")
    record = sign_fab(fab, key, kid)
    trusted = {kid: _openssh_public(key.public_key())}
    if not verify_fab(fab, [record], trusted):  # never expected: Flower changed its check
        raise RuntimeError("a fresh signature failed Flower's SuperNode check")
    fab_path, record_path = write_signed_app(fab, [record], out, force=force)
    return {**fab_identity(fab), "key_id": kid, "fab_path": fab_path,
            "record_path": record_path}
