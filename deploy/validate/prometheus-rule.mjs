// Writes the Prometheus Operator's PrometheusRule from the plain Prometheus rule file, so the two never drift:
// the groups are copied as they are; the labels are the ones kube-prometheus-stack's default ruleSelector
// matches (release: kube-prometheus-stack). With --check, compares instead and exits 1 if the file differs.
// usage: node prometheus-rule.mjs RULES.yml PROMETHEUS_RULE.yaml [--check]
import { readFileSync, writeFileSync } from "node:fs";
import yaml from "js-yaml";

const [rulesPath, outPath, mode] = process.argv.slice(2);
const rules = yaml.load(readFileSync(rulesPath, "utf8"));
const object = {
  apiVersion: "monitoring.coreos.com/v1",
  kind: "PrometheusRule",
  metadata: {
    name: "gemma-serve",
    labels: { "app.kubernetes.io/part-of": "gemma-serve", release: "kube-prometheus-stack" },
  },
  spec: { groups: rules.groups },
};
const text = "# Generated from monitoring/prometheus/rules/gemma-alerts.yml by deploy/validate/prometheus-rule.mjs: edit that\n" +
  "# file and run  node deploy/validate/prometheus-rule.mjs monitoring/prometheus/rules/gemma-alerts.yml " +
  "monitoring/kubernetes/prometheus-rule.yaml\n" + yaml.dump(object, { lineWidth: 120 });
if (mode === "--check") {
  let current = "";
  try {
    current = readFileSync(outPath, "utf8");
  } catch {}
  if (current !== text) {
    console.error(`FAIL: ${outPath} differs from the rules in ${rulesPath}; regenerate it (see its first lines)`);
    process.exit(1);
  }
  console.log(`${outPath} matches ${rulesPath}`);
} else {
  writeFileSync(outPath, text);
}
