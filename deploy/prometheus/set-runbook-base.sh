#!/usr/bin/env bash
# Points every alert's runbook_url at where your copy of docs/runbooks.md is published:
#   bash deploy/prometheus/set-runbook-base.sh https://git.example.com/platform/verbosity-guard/blob/main/docs/runbooks.md
# Rewrites the base (everything before `#`) in alerts.yaml, its unit tests (alerts_test.yaml)
# and the PrometheusRule generated from it (deploy/kubernetes/prometheusrule.yaml).
# Each alert keeps its own anchor, the alert's name in lower case (a heading of runbooks.md).
set -euo pipefail
cd "$(dirname "$0")"
new=${1:?usage: set-runbook-base.sh URL-of-runbooks.md}
case $new in
    http://* | https://*) ;;
    *) echo "set-runbook-base.sh: $new: an absolute http(s) URL, please" >&2; exit 2 ;;
esac
[[ $new != *'#'* && $new != *'|'* ]] || { echo "set-runbook-base.sh: no '#' or '|' in the URL" >&2; exit 2; }
old=$(sed -n 's/^ *runbook_url: "\([^#]*\)#.*/\1/p' alerts.yaml | sort -u)
[[ $(wc -l <<<"$old") -eq 1 ]] || { echo "set-runbook-base.sh: alerts.yaml has several bases:" >&2; echo "$old" >&2; exit 1; }
for f in alerts.yaml alerts_test.yaml ../kubernetes/prometheusrule.yaml; do
    sed -i "s|runbook_url: \"$old#|runbook_url: \"$new#|" "$f"
done
echo "runbook_url base: $new"
