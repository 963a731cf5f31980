// Validates Kubernetes objects (YAML files, several documents each) against the Kubernetes API schema with
// kubernetes-models, and prometheus-operator objects with its models. Exits 1 naming every invalid object.
// usage: node validate.mjs FILE.yaml...
import { readFileSync } from "node:fs";
import yaml from "js-yaml";

function modulePath(apiVersion) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) return `@kubernetes-models/prometheus-operator/${apiVersion}`;
  return `kubernetes-models/${apiVersion}`;
}

let failures = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (doc == null) continue;
    const where = `${file}: ${doc.kind ?? "(no kind)"} ${doc.metadata?.name ?? "(no name)"}`;
    if (!doc.apiVersion || !doc.kind) {
      console.error(`${where}: apiVersion and kind are required`);
      failures++;
      continue;
    }
    let Model;
    try {
      Model = (await import(modulePath(doc.apiVersion)))[doc.kind];
    } catch (e) {
      Model = undefined;
    }
    if (!Model) {
      console.error(`${where}: no schema for ${doc.apiVersion} ${doc.kind}`);
      failures++;
      continue;
    }
    try {
      new Model(doc).validate();
      checked++;
    } catch (e) {
      console.error(`${where}: ${e.message}`);
      failures++;
    }
  }
}
console.log(`${checked} objects valid, ${failures} invalid`);
process.exit(failures > 0 || checked === 0 ? 1 : 0);
