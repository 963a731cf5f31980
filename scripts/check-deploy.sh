#!/usr/bin/env bash
# Checks the deployment and monitoring files with the tools that read them:
#   kubectl kustomize renders every overlay, Job and the monitoring objects; kubernetes-models validates each object
#   against the Kubernetes API schema (prometheus-operator's objects against its schema, LeaderWorkerSets against
#   deploy/validate/schemas), rejecting unknown fields; every pod template meets Pod Security "restricted"; every
#   draining container's grace period covers its preStop sleep and --drain_timeout_ms;
#   promtool checks both Prometheus configs and the rules, and runs the alert unit tests; the PrometheusRule
#   equals the rule file;
#   the dashboard queries only documented metrics; the Dockerfiles and manifests refer only to what exists.
# usage: scripts/check-deploy.sh BUILD_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for tool in kubectl node promtool; do
  command -v $tool >/dev/null || { echo "FAIL: $tool is missing; scripts/install-deps.sh installs it" >&2; exit 1; }
done
[[ -d $root/deploy/validate/node_modules ]] || { echo "FAIL: run scripts/install-deps.sh (npm ci in deploy/validate)" >&2; exit 1; }

echo "== kustomize"
rendered=()
# The overlays (layouts) and the run-once Jobs (deploy/kubernetes/jobs).
for overlay in "$root"/deploy/kubernetes/overlays/*/ "$root"/deploy/kubernetes/jobs/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$out/$name.yaml" 2>"$out/$name.err" || { cat "$out/$name.err"; exit 1; }
  rendered+=("$out/$name.yaml")
  echo "$name: $(grep -c '^kind:' "$out/$name.yaml") objects"
done
kubectl kustomize "$root/monitoring" >"$out/monitoring.yaml" 2>"$out/monitoring.err" || { cat "$out/monitoring.err"; exit 1; }

echo "== Kubernetes API schema, strict (kubernetes-models; LeaderWorkerSet: deploy/validate/schemas)"
node "$root/deploy/validate/validate.mjs" "${rendered[@]}" "$out/monitoring.yaml"
node "$root/deploy/validate/validate_test.mjs" | tail -1

echo "== Pod Security restricted"
node "$root/deploy/validate/pod-security.mjs" "${rendered[@]}"

echo "== drain budgets"
node "$root/deploy/validate/drain-budget.mjs" "${rendered[@]}"

echo "== promtool"
promtool check config "$root/monitoring/prometheus/prometheus-kubernetes.yml"
promtool check config "$root/monitoring/prometheus/prometheus-local.yml" 2>&1 | grep -v 'WARNING: file "targets'
promtool check rules "$root/monitoring/prometheus/rules/gemma-alerts.yml"
(cd "$root/monitoring/prometheus/rules" && promtool test rules gemma-alerts_test.yml)
# The Operator's PrometheusRule holds exactly the rules of the plain rule file.
node "$root/deploy/validate/prometheus-rule.mjs" "$root/monitoring/prometheus/rules/gemma-alerts.yml" \
  "$root/monitoring/kubernetes/prometheus-rule.yaml" --check

echo "== dashboard"
python3 "$root/scripts/check_dashboard.py" "$root/monitoring/grafana/gemma-dashboard.json" "$root/monitoring/METRICS.md" \
  "$root/monitoring/prometheus/rules/gemma-alerts.yml"

echo "== images and references"
python3 "$root/scripts/check_deploy_references.py" "$build" "${rendered[@]}"
