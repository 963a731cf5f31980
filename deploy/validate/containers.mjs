// Prints, as one JSON array, every container (and init container) of the rendered manifests: the object it belongs
// to, its name, command, args and env names. check_deploy_references.py reads it to check flags against the
// binaries (a YAML parser in Node, so the Python side needs none).
// usage: node containers.mjs FILE.yaml...
import { readFileSync } from "node:fs";
import yaml from "js-yaml";

function podSpecs(doc) {
  const s = doc.spec ?? {};
  if (doc.kind === "Pod") return [s];
  if (doc.kind === "CronJob") return [s.jobTemplate?.spec?.template?.spec];
  if (doc.kind === "LeaderWorkerSet") {
    const t = s.leaderWorkerTemplate ?? {};
    return [t.leaderTemplate?.spec, t.workerTemplate?.spec];
  }
  return [s.template?.spec];
}

const out = [];
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (doc == null) continue;
    for (const pod of podSpecs(doc).filter(Boolean)) {
      for (const c of [...(pod.initContainers ?? []), ...(pod.containers ?? [])]) {
        out.push({
          object: `${doc.kind} ${doc.metadata?.name}`, name: c.name, command: c.command ?? [], args: c.args ?? [],
          env: (c.env ?? []).map((e) => e.name),
        });
      }
    }
  }
}
console.log(JSON.stringify(out));
