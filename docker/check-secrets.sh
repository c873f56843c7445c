#!/bin/sh
# Refuse to start the stack with weak secrets or an address it cannot serve safely: run by the
# check-secrets service of compose.yaml (every other service waits for it) and by
# `bash docker/secrets.sh check`. Reads the variables from its environment; prints what is wrong
# (never a secret's value) and exits 1.
bad=0
for name in POSTGRES_PASSWORD PREFECT_AUTH_STRING MINIO_ROOT_PASSWORD S3_WORKER_SECRET_KEY; do
  eval "value=\${$name:-}"
  secret=$value
  [ "$name" = PREFECT_AUTH_STRING ] && secret=${value#*:}  # user:password: the password part
  case $secret in
    "") echo "check-secrets: $name is empty" >&2; bad=1 ;;
    *change-me*) echo "check-secrets: $name still holds the placeholder of .env.example" >&2; bad=1 ;;
    *) if [ ${#secret} -lt 16 ]; then
         echo "check-secrets: $name is shorter than 16 characters" >&2; bad=1
       fi ;;
  esac
done
case ${BIND_ADDRESS:-127.0.0.1} in
  127.0.0.1|localhost|::1) ;;
  *) echo "check-secrets: BIND_ADDRESS=$BIND_ADDRESS would serve the Prefect API's basic auth and" \
          "S3 over plain HTTP beyond this machine; keep 127.0.0.1 and put a TLS-terminating" \
          "proxy in front (set PUBLIC_URL to its https:// address)" >&2; bad=1 ;;
esac
if [ $bad -ne 0 ]; then
  echo "check-secrets: refusing to start; make new secrets with: bash docker/secrets.sh generate" >&2
  exit 1
fi
echo "check-secrets: secrets and addresses are fine"
