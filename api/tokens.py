"""``orchard token``: create, list and revoke API tokens in the state store.

``orchard token create --role admin --name alice`` prints the new token once; the
store keeps only its SHA-256.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from api.auth import Role, create_token, list_tokens, revoke_token
from api.settings import ApiSettings
from orchard.db import create_engine, init_db


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="orchard token", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--name", required=True, help="who or what uses the token")
    sub.add_parser("list", help="list tokens (never their secret)")
    revoke = sub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    parser.add_argument("--state-url", help="SQLAlchemy URL (default: ORCHARD_STATE_URL)")
    args = parser.parse_args(argv)

    settings = ApiSettings()
    engine = create_engine(args.state_url or settings.state_url)
    init_db(engine)
    try:
        if args.action == "create":
            name = args.name.strip()
            if not name or len(name) > 100 or not name.isprintable():
                parser.error("--name must be 1-100 printable characters")
            token_id, token = create_token(engine, name, Role(args.role), created_by="cli")
            sys.stderr.write(
                f"created {args.role} token {token_id} for {name!r}; it is shown only now:\n"
            )
            print(token)
        elif args.action == "list":
            for t in list_tokens(engine):
                state = "revoked" if t["revoked_at"] else "active"
                print(f"{t['id']:>4}  {t['role']:<10}  {state:<7}  {t['name']}")
        else:
            if not revoke_token(engine, args.id):
                sys.stderr.write(f"no active token with id {args.id}\n")
                return 1
            print(f"revoked token {args.id}")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
