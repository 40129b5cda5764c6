#!/usr/bin/env bash
# Static checks of the deployment kit, run by .ci/run (which installs the tools) and by hand:
#   - deploy/Dockerfile: hadolint;
#   - every Kubernetes manifest in deploy/kubernetes/, and the kustomization rendered by
#     `kubectl kustomize` where kubectl exists: kubernetes-validate --strict (the Kubernetes
#     OpenAPI schemas, bundled, offline; unknown fields are errors) for the oldest Kubernetes
#     the kit supports (1.30: the preStop `sleep` handler) and the newest the validator knows;
#   - prometheus-operator resources (servicemonitor.yaml, prometheusrule.yaml): the operator's
#     CRD schemas;
#   - the Grafana dashboard's PromQL and deploy/prometheus/scrape-config.yaml: promtool.
# What these cannot see (metric names against a real scrape, env var names against the CLI,
# timing invariants, the policy copy) is tested by tests/deploy.rs.
# Quiet: prints one line when everything passes, the validator's complaint otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS=(1.30.0 1.37.0)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
inputs() { python3 deploy/ci/inputs.py "$@"; }

hadolint deploy/Dockerfile

core=()
crd=()
for f in deploy/kubernetes/*.yaml; do
    case "${f##*/}" in
        # kustomize's own file, and the policy copy it turns into a ConfigMap.
        kustomization.yaml | vehicle-api-policy.yaml) ;;
        *)
            if grep -q '^apiVersion: monitoring.coreos.com/' "$f"; then
                crd+=("$f")
            else
                core+=("$f")
            fi
            ;;
    esac
done
if command -v kubectl >/dev/null; then
    kubectl kustomize deploy/kubernetes >"$tmp/kustomized.yaml"
    core+=("$tmp/kustomized.yaml")
    rendered="kustomization rendered"
else
    rendered="kustomization NOT rendered (no kubectl)"
fi
for version in "${K8S_VERSIONS[@]}"; do
    # --quiet prints only problems; a missing schema (an unknown apiVersion/kind) is only a
    # warning with exit status 0, so any output fails the check.
    out=$(kubernetes-validate --strict --quiet -k "$version" "${core[@]}" 2>&1) || true
    if [[ -n $out ]]; then
        printf '%s\n' "$out" >&2
        exit 1
    fi
done

inputs yaml-to-json "${crd[@]}" | node deploy/ci/validate-crds.mjs

inputs dashboard-rules deploy/grafana/verbosity-guard.json >"$tmp/dashboard-rules.json"
promtool check rules "$tmp/dashboard-rules.json" >/dev/null
inputs scrape-config deploy/prometheus/scrape-config.yaml >"$tmp/scrape-config.json"
promtool check config --syntax-only "$tmp/scrape-config.json" >/dev/null

echo "deploy kit ok: Dockerfile; ${#core[@]} manifests x Kubernetes ${K8S_VERSIONS[*]}" \
    "(${rendered}); ${#crd[@]} CRD resources; dashboard PromQL; scrape config"
