"""The deployment subcommands of ``fedtune``: TLS certificates, SuperNode keys, the
consortium's app-signing key, signing an app, and the registry that serves signed apps."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator

from fedtune.errors import ConfigError


@contextlib.contextmanager
def _user_error() -> Iterator[None]:
    """A credentials request that cannot be carried out is the CLI's one-sentence user error."""
    from fedtune.deploy.credentials import CredentialError

    try:
        yield
    except CredentialError as err:
        raise ConfigError(str(err)) from None


def certs_cmd(args: argparse.Namespace) -> int:
    from fedtune.deploy.credentials import make_certificates

    with _user_error():
        paths = make_certificates(args.out, args.host, args.days, args.force)
    print("\n".join(f"wrote {p}" for p in paths.values()))
    print(f"SuperLink: flower-superlink --ssl-ca-certfile {paths['ca.crt']} --ssl-certfile "
          f"{paths['server.crt']} --ssl-keyfile {paths['server.key']}\n"
          f"SuperNodes and flwr: --root-certificates {paths['ca.crt']}")
    return 0


def keys_cmd(args: argparse.Namespace) -> int:
    from fedtune.deploy.credentials import make_node_keys

    with _user_error():
        private, public = make_node_keys(args.out, args.name, args.force)
    print(f"wrote {private} (private, keep it on the node) and {public}\n"
          f"register: flwr supernode register {public} <connection>\n"
          f"node:     flower-supernode ... --auth-supernode-private-key {private}")
    return 0


def signing_key_cmd(args: argparse.Namespace) -> int:
    from fedtune.deploy.signing import make_signing_key

    with _user_error():
        paths = make_signing_key(args.out, args.name, args.force)
    print(f"wrote {paths['private']} (private: keep it offline, it approves code), "
          f"{paths['public']} and {paths['trusted']}\n"
          f"sign:  fedtune sign --key {paths['private']} --app <app folder> --out <apps>\n"
          f"nodes: flower-supernode ... --trusted-entities {paths['trusted']}")
    return 0


def sign_cmd(args: argparse.Namespace) -> int:
    from fedtune.deploy.signing import sign_app

    with _user_error():
        done = sign_app(args.key, args.out, app=args.app, fab_file=args.fab, force=args.force)
    print(f"signed {done['app_id']}=={done['version']} (sha256 {done['sha256']}) with "
          f"{done['key_id']}\nwrote {done['fab_path']} and {done['record_path']}\n"
          f"run:   flwr run {done['app_id']}=={done['version']} <connection>")
    return 0


def registry_cmd(args: argparse.Namespace) -> int:
    from fedtune.deploy.registry import RegistryServer, read_apps

    with _user_error():
        server = RegistryServer(args.apps, args.host, args.port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    apps = ", ".join(f"{r['app_id']}=={r['version']}" for r in read_apps(args.apps))
    print(f"serving {apps or 'no apps yet'} from {server.folder}\n"
          f"SuperLink: FLWR_SUPERGRID_API_URL={server.url} flower-superlink ...", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``certs``, ``keys``, ``signing-key``, ``sign`` and ``registry`` on ``sub``."""
    certs = sub.add_parser("certs", help="create a CA and a SuperLink TLS certificate")
    certs.add_argument("--out", default="certificates", help="folder (default: certificates)")
    certs.add_argument("--host", action="append", default=[],
                       help="DNS name or IP clients dial (repeat for several)")
    certs.add_argument("--days", type=int, default=365)
    certs.add_argument("--force", action="store_true", help="overwrite existing files")
    certs.set_defaults(func=certs_cmd)

    keys = sub.add_parser("keys", help="create a SuperNode authentication key pair")
    keys.add_argument("--out", default="keys", help="folder (default: keys)")
    keys.add_argument("--name", required=True, help="file name, e.g. client-1")
    keys.add_argument("--force", action="store_true", help="overwrite existing files")
    keys.set_defaults(func=keys_cmd)

    skey = sub.add_parser("signing-key", help="create the consortium's app-signing key and the "
                          "SuperNodes' trusted-entities file")
    skey.add_argument("--out", default="signing", help="folder (default: signing)")
    skey.add_argument("--name", default="consortium", help="key name (default: consortium)")
    skey.add_argument("--force", action="store_true", help="overwrite existing files")
    skey.set_defaults(func=signing_key_cmd)

    sign = sub.add_parser("sign", help="build the Flower app (as flwr build does) and sign it "
                          "for the registry")
    sign.add_argument("--key", required=True, help="the private signing key")
    sign.add_argument("--app", default=".", help="app folder to build (default: .)")
    sign.add_argument("--fab", help="sign this .fab file (from flwr build) instead of --app")
    sign.add_argument("--out", default="apps", help="registry folder (default: apps)")
    sign.add_argument("--force", action="store_true", help="overwrite existing files")
    sign.set_defaults(func=sign_cmd)

    reg = sub.add_parser("registry", help="serve signed apps to a SuperLink "
                         "(FLWR_SUPERGRID_API_URL)")
    reg.add_argument("--apps", default="apps", help="folder written by fedtune sign")
    reg.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    reg.add_argument("--port", type=int, default=9099)
    reg.set_defaults(func=registry_cmd)
