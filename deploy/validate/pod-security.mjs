// Every pod template of the rendered manifests meets the Pod Security Standard "restricted" (the rules the API
// server's admission enforces in namespaces labelled pod-security.kubernetes.io/enforce: restricted), plus this
// project's own rules: a read-only root filesystem, no service account token where no container uses the API,
// and every Namespace labelled to enforce "restricted". Exits 1 naming the object and the field of each failure.
// usage: node pod-security.mjs FILE.yaml...
import { readFileSync } from "node:fs";
import yaml from "js-yaml";

// Volume types "restricted" allows (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
const allowedVolumes = new Set([
  "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
]);

// [path to the pod template spec, template] for each pod template an object carries.
function podSpecs(doc) {
  const s = doc.spec ?? {};
  switch (doc.kind) {
    case "Pod": return [["spec", s]];
    case "Deployment": case "StatefulSet": case "DaemonSet": case "ReplicaSet": case "Job":
      return [["spec.template.spec", s.template?.spec ?? {}]];
    case "CronJob": return [["spec.jobTemplate.spec.template.spec", s.jobTemplate?.spec?.template?.spec ?? {}]];
    case "LeaderWorkerSet": {
      const t = s.leaderWorkerTemplate ?? {};
      const out = [["spec.leaderWorkerTemplate.workerTemplate.spec", t.workerTemplate?.spec ?? {}]];
      if (t.leaderTemplate) out.push(["spec.leaderWorkerTemplate.leaderTemplate.spec", t.leaderTemplate.spec ?? {}]);
      return out;
    }
    default: return [];
  }
}

function checkPod(path, pod, fail) {
  const psc = pod.securityContext ?? {};
  for (const field of ["hostNetwork", "hostPID", "hostIPC"]) {
    if (pod[field]) fail(`${path}.${field} must be unset or false`);
  }
  if (pod.automountServiceAccountToken !== false) {
    fail(`${path}.automountServiceAccountToken must be false (no container here talks to the Kubernetes API)`);
  }
  if (psc.runAsUser === 0) fail(`${path}.securityContext.runAsUser must not be 0`);
  const podSeccomp = psc.seccompProfile?.type;
  if (podSeccomp && !["RuntimeDefault", "Localhost"].includes(podSeccomp)) {
    fail(`${path}.securityContext.seccompProfile.type must be RuntimeDefault or Localhost`);
  }
  for (const [i, v] of (pod.volumes ?? []).entries()) {
    const type = Object.keys(v).find((k) => k !== "name");
    if (!allowedVolumes.has(type)) fail(`${path}.volumes[${i}] (${v.name}): volume type ${type} is not allowed`);
  }
  const containers = [
    ...(pod.initContainers ?? []).map((c, i) => [`${path}.initContainers[${i}]`, c]),
    ...(pod.containers ?? []).map((c, i) => [`${path}.containers[${i}]`, c]),
  ];
  if (!(pod.containers ?? []).length) fail(`${path}.containers is empty`);
  for (const [where, c] of containers) {
    const sc = c.securityContext ?? {};
    const at = `${where} (${c.name}).securityContext`;
    if (sc.privileged) fail(`${at}.privileged must be false`);
    if (sc.allowPrivilegeEscalation !== false) fail(`${at}.allowPrivilegeEscalation must be false`);
    if (sc.runAsNonRoot !== true && psc.runAsNonRoot !== true) fail(`${at}.runAsNonRoot must be true (here or on the pod)`);
    if (sc.runAsUser === 0) fail(`${at}.runAsUser must not be 0`);
    const seccomp = sc.seccompProfile?.type ?? podSeccomp;
    if (!["RuntimeDefault", "Localhost"].includes(seccomp)) {
      fail(`${at}.seccompProfile.type must be RuntimeDefault or Localhost (here or on the pod)`);
    }
    if (!(sc.capabilities?.drop ?? []).includes("ALL")) fail(`${at}.capabilities.drop must include ALL`);
    for (const cap of sc.capabilities?.add ?? []) {
      if (cap !== "NET_BIND_SERVICE") fail(`${at}.capabilities.add may hold only NET_BIND_SERVICE, not ${cap}`);
    }
    if (sc.readOnlyRootFilesystem !== true) fail(`${at}.readOnlyRootFilesystem must be true`);
    for (const [i, p] of (c.ports ?? []).entries()) {
      if (p.hostPort) fail(`${where}.ports[${i}].hostPort must be unset`);
    }
  }
}

let failures = 0;
let pods = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (doc == null) continue;
    const name = `${file}: ${doc.kind} ${doc.metadata?.namespace ? doc.metadata.namespace + "/" : ""}${doc.metadata?.name}`;
    const fail = (message) => {
      console.error(`${name}: ${message}`);
      failures++;
    };
    if (doc.kind === "Namespace" && doc.metadata?.labels?.["pod-security.kubernetes.io/enforce"] !== "restricted") {
      fail("metadata.labels must carry pod-security.kubernetes.io/enforce: restricted");
    }
    for (const [path, pod] of podSpecs(doc)) {
      checkPod(path, pod, fail);
      pods++;
    }
  }
}
console.log(`${pods} pod templates checked against Pod Security "restricted"; ${failures} problems`);
process.exit(failures > 0 || pods === 0 ? 1 : 0);
