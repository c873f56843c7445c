#!/usr/bin/env bash
# Secrets of the compose stack: make strong ones, and refuse weak or placeholder ones.
#
#   bash docker/secrets.sh generate [--force] [--out FILE]
#                                               write docker/.env (or FILE; mode 0600) from
#                                               .env.example, every secret a new random value
#   bash docker/secrets.sh check [FILE]         exit 1, naming them, when a secret in FILE
#                                               (docker/.env) is empty, a placeholder or short
#
# The stack runs the same check itself before anything else starts (the check-secrets service of
# compose.yaml), so a stack with placeholder secrets never comes up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

random() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }

generate() {
  local out=$here/.env force=""
  while (($#)); do
    case $1 in
      --force) force=1 ;;
      --out) out=$2; shift ;;
      *) echo "secrets.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
  done
  if [[ -e $out && -z $force ]]; then
    echo "secrets.sh: $out exists; keep it, or replace it with: bash docker/secrets.sh generate --force" >&2
    exit 1
  fi
  local tmp
  tmp=$(mktemp "$(dirname "$out")/.env.XXXXXX")
  chmod 600 "$tmp"
  while IFS= read -r line; do
    case $line in
      POSTGRES_PASSWORD=*|MINIO_ROOT_PASSWORD=*|S3_WORKER_SECRET_KEY=*) line="${line%%=*}=$(random)" ;;
      PREFECT_AUTH_STRING=*) line="PREFECT_AUTH_STRING=admin:$(random)" ;;
    esac
    printf '%s\n' "$line"
  done < "$here/.env.example" > "$tmp"
  mv "$tmp" "$out"
  echo "secrets.sh: wrote $out (mode 0600) with new random secrets"
}

check() {
  local file=${1:-$here/.env}
  [[ -r $file ]] || { echo "secrets.sh: $file: no such file (bash docker/secrets.sh generate)" >&2; exit 1; }
  set -a
  # shellcheck disable=SC1090
  . "$file"
  set +a
  exec sh "$here/check-secrets.sh"
}

case ${1:-} in
  generate) shift; generate "$@" ;;
  check) shift; check "$@" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
