"""Platform verbs: serve (API + one worker, embedded default; its code is in cli/serve.py), worker, keys, db."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:  # pydantic-settings takes a second to import: only the verbs that read settings pay it
    from core.config import Settings


def masked_url(url: str) -> str:
    """A URL fit to print: its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with --data-dir on top."""
    from core.config import Settings

    settings = Settings()
    if getattr(args, "data_dir", None):
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir).resolve()})
    return settings


def add_platform_verbs(verbs: Any) -> None:
    serve = verbs.add_parser("serve", help="run the API and one worker (embedded default: no servers needed)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--data-dir", default=None, help="everything lives here (default: data/fitcycle)")
    serve.add_argument("--no-worker", action="store_true", help="API only (workers run elsewhere)")
    serve.add_argument("--access-log", action="store_true", help="log every request (default: warnings and errors)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="a 'demo' project with a sample dataset and a fine-tune job on it (reused on later runs), "
        "and how to follow it",
    )

    worker = verbs.add_parser("worker", help="run a worker against the configured database, store and broker")
    worker.add_argument("--data-dir", default=None)
    worker.add_argument("--queues", default=None, help="comma-separated queues (default: fitcycle)")
    worker.add_argument(
        "--pool",
        default="solo",
        choices=["solo", "prefork"],
        help="solo: the job runs in this process (one job per process, nothing forked after torch is loaded)",
    )
    worker.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)  # `serve` waits for it

    keys = verbs.add_parser("keys", help="API keys")
    key_verbs = keys.add_subparsers(dest="keys_verb", required=True)
    create = key_verbs.add_parser("create", help="create a project if needed and print a new key (last line)")
    create.add_argument("--project", required=True)
    create.add_argument("--name", default="", help="what the key is for (shown by 'keys list')")
    create.add_argument("--expires-in-days", type=float, default=None, metavar="DAYS", help="default: never")
    create.add_argument(
        "--member", action="store_true", help="a plain key (default: an admin key, which can manage keys over REST)"
    )
    create.add_argument("--data-dir", default=None)
    listing = key_verbs.add_parser("list", help="every key (id, prefix, state), or one project's")
    listing.add_argument("--project", default=None)
    listing.add_argument("--data-dir", default=None)
    revoke = key_verbs.add_parser("revoke", help="revoke a key at once, named by the key, its id or its prefix")
    revoke.add_argument("key", metavar="KEY")
    revoke.add_argument("--data-dir", default=None)

    db = verbs.add_parser("db", help="database migrations")
    db_verbs = db.add_subparsers(dest="db_verb", required=True)
    up = db_verbs.add_parser("upgrade", help="migrate the database to the newest revision")
    up.add_argument("--data-dir", default=None)


def cmd_keys(args: argparse.Namespace) -> int:
    from api.admin import KeyNotFound, create_key, list_keys, revoke_key

    settings = settings_from(args)
    try:
        if args.keys_verb == "create":
            name, project_id, key = create_key(
                settings, args.project, name=args.name, admin=not args.member, expires_in_days=args.expires_in_days
            )
            print(f"project {name} ({project_id})")
            print(key)
        elif args.keys_verb == "list":
            from cli.remote import table

            rows = [
                [
                    project,
                    k.id,
                    k.prefix,
                    k.state,
                    "admin" if k.admin else "member",
                    k.expires_at.strftime("%Y-%m-%d %H:%M") if k.expires_at else "never",
                    k.name,
                ]
                for project, k in list_keys(settings, args.project)
            ]
            print(table(rows, ["PROJECT", "ID", "PREFIX", "STATE", "ROLE", "EXPIRES", "NAME"]))
        else:
            k = revoke_key(settings, args.key)
            print(f"revoked key {k.id} ({k.prefix}...); every API process refuses it within a second")
    except KeyNotFound as exc:
        print(f"fitcycle keys: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from api.admin import migrate

    print(f"database at revision {migrate(settings_from(args))}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.app import run_worker

    settings = settings_from(args)
    ready = Path(args.ready_file) if args.ready_file else None
    run_worker(settings, args.queues.split(",") if args.queues else None, pool=args.pool, ready_file=ready)
    return 0
