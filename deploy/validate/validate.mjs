// Validates Kubernetes objects (YAML files, several documents each) against the Kubernetes API schema with
// kubernetes-models, prometheus-operator objects with its models, and LeaderWorkerSets against
// schemas/leaderworkerset-v1.json. Strict: a field the schema does not declare (a misspelling such as
// podManagmentPolicy) is an error, as `kubectl apply --validate=strict` would make it. Exits 1 naming every
// invalid object and field.
// usage: node validate.mjs FILE.yaml...
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import Ajv from "ajv";
import { validateStrict } from "./strict.mjs";

function modulePath(apiVersion) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) return `@kubernetes-models/prometheus-operator/${apiVersion}`;
  return `kubernetes-models/${apiVersion}`;
}

// The core types a LeaderWorkerSet embeds, checked by kubernetes-models' own validators (strictly, too).
const embedded = {};
for (const [name, pkg] of [
  ["IoK8sApiCoreV1PodTemplateSpec", "kubernetes-models"],
  ["IoK8sApiCoreV1PersistentVolumeClaim", "kubernetes-models"],
  ["IoK8sApiAppsV1StatefulSetPersistentVolumeClaimRetentionPolicy", "kubernetes-models"],
  ["IoK8sApimachineryPkgApisMetaV1ObjectMeta", "@kubernetes-models/apimachinery"],
  ["IoK8sApimachineryPkgApisMetaV1Condition", "@kubernetes-models/apimachinery"],
]) {
  embedded[name] = (await import(`${pkg}/_schemas/${name}`)).validate;
}

function throwing(fn) {
  return (data) => {
    if (!fn(data)) throw new Error(fn.errors.map((e) => `${e.instancePath} ${e.message}`).join(", "));
  };
}

const ajv = new Ajv({ allErrors: true });
ajv.addKeyword({
  keyword: "k8sSchema",
  schemaType: "string",
  errors: true,
  validate: function k8s(name, data, _schema, ctx) {
    const where = ctx?.instancePath ?? "";
    try {
      const unknown = validateStrict(data, throwing(embedded[name]));
      k8s.errors = unknown.map((f) => ({ instancePath: where + f.replaceAll(".", "/"), message: "is not a known field" }));
    } catch (e) {
      k8s.errors = [{ instancePath: where, message: e.message }];
    }
    return k8s.errors.length === 0;
  },
});
const crdSchemas = {
  "leaderworkerset.x-k8s.io/v1 LeaderWorkerSet": ajv.compile(
    JSON.parse(readFileSync(new URL("./schemas/leaderworkerset-v1.json", import.meta.url), "utf8"))),
};

// Returns a function that throws on a schema error and returns the unknown fields' paths.
async function validatorFor(doc) {
  const crd = crdSchemas[`${doc.apiVersion} ${doc.kind}`];
  if (crd) {
    return (d) => {
      if (crd(d)) return [];
      throw new Error(crd.errors.map((e) => e.keyword === "additionalProperties"
        ? `unknown field ${e.instancePath}/${e.params.additionalProperty}`
        : `${e.instancePath || "/"} ${e.message}`).join(", "));
    };
  }
  let Model;
  try {
    Model = (await import(modulePath(doc.apiVersion)))[doc.kind];
  } catch (e) {
    Model = undefined;
  }
  if (!Model) return undefined;
  return (d) => validateStrict(d, (proxy) => Model.prototype.validate.call(proxy));
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
    const validate = await validatorFor(doc);
    if (!validate) {
      console.error(`${where}: no schema for ${doc.apiVersion} ${doc.kind}`);
      failures++;
      continue;
    }
    try {
      const unknown = validate(doc);
      if (unknown.length) {
        console.error(`${where}: unknown field ${unknown.join(", unknown field ")}`);
        failures++;
      } else {
        checked++;
      }
    } catch (e) {
      console.error(`${where}: ${e.message}`);
      failures++;
    }
  }
}
console.log(`${checked} objects valid, ${failures} invalid`);
process.exit(failures > 0 || checked === 0 ? 1 : 0);
