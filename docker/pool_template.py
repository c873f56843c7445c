"""A Docker work pool's base job template whose containers get their credentials from Prefect
Secret blocks.

The references go into the pool's template, not into ``prefect.yaml``: ``prefect deploy``
resolves block references in a deployment's job variables when it deploys, so a reference
there would be stored (and shown in the UI) as the secret's value. A pool's template is stored
as written, and the worker resolves its references each time it starts a container.

    python docker/pool_template.py --out docker-pool.json
    prefect work-pool create cpu-docker --type docker --base-job-template docker-pool.json

Each ``--secret VARIABLE=BLOCK`` names an environment variable and the Secret block that holds
its value (defaults: the S3 keys and the Prefect API auth string).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DEFAULT_SECRETS = {
    "AWS_ACCESS_KEY_ID": "s3-worker-access-key",
    "AWS_SECRET_ACCESS_KEY": "s3-worker-secret-key",
    "PREFECT_API_AUTH_STRING": "prefect-auth-string",
}
# Prefect's block names: lowercase letters, digits and dashes.
BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def template(secrets: dict[str, str]) -> dict:
    """The Docker worker's default template, with ``env`` defaulting to the block references."""
    from prefect_docker.worker import DockerWorker

    base = DockerWorker.get_default_base_job_template()
    env = base["variables"]["properties"]["env"]
    env["default"] = {v: "{{ prefect.blocks.secret." + b + " }}" for v, b in secrets.items()}
    return base


def parse_secrets(pairs: list[str]) -> dict[str, str]:
    secrets: dict[str, str] = {}
    for pair in pairs:
        variable, _, block = pair.partition("=")
        if not VARIABLE.match(variable) or not BLOCK_NAME.match(block):
            named = variable if VARIABLE.match(variable) else "(not a variable name)"
            raise ValueError(
                f"--secret for {named}: expected VARIABLE=block-name (a Secret block's name: "
                "lowercase letters, digits and dashes), never a value"
            )
        secrets[variable] = block
    return secrets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret", action="append", default=[], metavar="VARIABLE=BLOCK")
    parser.add_argument("--out", type=Path, help="write here (default: standard output)")
    args = parser.parse_args(argv)
    try:
        secrets = parse_secrets(args.secret) if args.secret else DEFAULT_SECRETS
    except ValueError as error:
        print(f"pool_template: {error}", file=sys.stderr)
        return 2
    text = json.dumps(template(secrets), indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
