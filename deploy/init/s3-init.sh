#!/bin/sh
# fitcycle's bucket and its MinIO user, made (or brought up to date) with MinIO's root credentials, which nothing
# else is given: compose's `s3-init` service runs this (image minio/mc) at every `up`, Kubernetes in the migration
# Job's initContainer. Idempotent: a second run sets the user's secret and the policy again.
#   S3_URL, S3_ROOT_USER, S3_ROOT_PASSWORD   MinIO (http://minio:9000) and its root user
#   S3_BUCKET                                fitcycle's bucket (FITCYCLE_S3_BUCKET)
#   S3_APP_ACCESS_KEY, S3_APP_SECRET_KEY     the API's and the workers' user (FITCYCLE_S3_ACCESS_KEY/SECRET_KEY):
#                                            list that bucket, read, write and delete its objects, nothing more
# mc keeps its alias in MC_DIR (default /tmp/mc: the root filesystem may be read-only).
set -eu
: "${S3_URL:?}" "${S3_ROOT_USER:?}" "${S3_ROOT_PASSWORD:?}" "${S3_BUCKET:?}" "${S3_APP_ACCESS_KEY:?}" "${S3_APP_SECRET_KEY:?}"
dir="${MC_DIR:-/tmp/mc}"
mkdir -p "$dir"
mc() { command mc --config-dir "$dir" "$@"; }
policy="fitcycle-$S3_BUCKET"

tries=0
until mc alias set root "$S3_URL" "$S3_ROOT_USER" "$S3_ROOT_PASSWORD" >/dev/null; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "s3-init: MinIO did not answer at $S3_URL" >&2
    exit 1
  fi
  sleep 2
done

mc mb --ignore-existing "root/$S3_BUCKET"
cat >"$dir/policy.json" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$S3_BUCKET"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::$S3_BUCKET/*"]
    }
  ]
}
JSON
mc admin policy create root "$policy" "$dir/policy.json"
mc admin user add root "$S3_APP_ACCESS_KEY" "$S3_APP_SECRET_KEY"
# A second attach fails with "The specified policy change is already in effect": that is success here.
if ! out=$(mc admin policy attach root "$policy" --user "$S3_APP_ACCESS_KEY" 2>&1); then
  case "$out" in
    *"already in effect"* | *"no net effect"*) ;;
    *)
      echo "$out" >&2
      exit 1
      ;;
  esac
fi
echo "s3-init: bucket $S3_BUCKET, user $S3_APP_ACCESS_KEY with policy $policy"
