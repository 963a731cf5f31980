// Proves the checkers can fail: validate.mjs rejects a misspelled field (top level, nested in a pod template, in
// a prometheus-operator object and in a LeaderWorkerSet) and accepts the same objects spelled right;
// pod-security.mjs rejects a pod that breaks "restricted" and names the field; drain-budget.mjs rejects a grace
// period shorter than preStop + drain, reading the drain as absl does (the last value, flag files in place, the
// binary's default without the flag).
// usage: node validate_test.mjs   (exit 0: every case behaved)
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import yaml from "js-yaml";

const here = new URL(".", import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), "validate-test-"));
let failed = 0;

function run(script, objects) {
  const file = join(dir, `case${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, objects.map((o) => yaml.dump(o)).join("---\n"));
  const r = spawnSync("node", [join(here, script), file], { encoding: "utf8" });
  return { code: r.status, out: r.stdout + r.stderr };
}

function expect(name, result, code, mention) {
  const ok = result.code === code && (!mention || result.out.includes(mention));
  console.log(`${ok ? "ok  " : "FAIL"} ${name}`);
  if (!ok) {
    console.log(`  expected exit ${code}${mention ? ` naming "${mention}"` : ""}, got ${result.code}:\n${result.out}`);
    failed++;
  }
}

const container = () => ({
  name: "main",
  image: "example:1",
  securityContext: {
    allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true,
    capabilities: { drop: ["ALL"] }, seccompProfile: { type: "RuntimeDefault" },
  },
});
const podTemplate = () => ({
  metadata: { labels: { app: "x" } },
  spec: { automountServiceAccountToken: false, containers: [container()] },
});
const statefulSet = () => ({
  apiVersion: "apps/v1", kind: "StatefulSet", metadata: { name: "s" },
  spec: { serviceName: "s", podManagementPolicy: "Parallel", selector: { matchLabels: { app: "x" } },
          template: podTemplate() },
});
const lws = () => ({
  apiVersion: "leaderworkerset.x-k8s.io/v1", kind: "LeaderWorkerSet", metadata: { name: "l" },
  spec: { replicas: 1, startupPolicy: "LeaderCreated",
          leaderWorkerTemplate: { size: 2, restartPolicy: "RecreateGroupOnPodRestart", workerTemplate: podTemplate() },
          rolloutStrategy: { type: "RollingUpdate", rollingUpdateConfiguration: { maxUnavailable: 1, maxSurge: 0 } } },
});
const serviceMonitor = () => ({
  apiVersion: "monitoring.coreos.com/v1", kind: "ServiceMonitor", metadata: { name: "m" },
  spec: { selector: { matchLabels: { app: "x" } }, endpoints: [{ port: "metrics" }] },
});

expect("a correct StatefulSet passes", run("validate.mjs", [statefulSet()]), 0);
const misspelled = statefulSet();
misspelled.spec.podManagmentPolicy = misspelled.spec.podManagementPolicy;
delete misspelled.spec.podManagementPolicy;
expect("spec.podManagmentPolicy is rejected", run("validate.mjs", [misspelled]), 1, "unknown field .spec.podManagmentPolicy");
const nested = statefulSet();
nested.spec.template.spec.containers[0].securityContext.readOnlyRootFilesytem = true;
expect("a misspelled field inside a container is rejected", run("validate.mjs", [nested]), 1,
  ".spec.template.spec.containers[0].securityContext.readOnlyRootFilesytem");
const labels = statefulSet();
labels.spec.template.metadata.labels["any-label"] = "is fine";
expect("free-form maps (labels) still take any key", run("validate.mjs", [labels]), 0);
expect("a wrong type is still rejected", run("validate.mjs", [{ ...statefulSet(), spec: { ...statefulSet().spec, replicas: "two" } }]), 1, "replicas");

expect("a correct ServiceMonitor passes", run("validate.mjs", [serviceMonitor()]), 0);
const sm = serviceMonitor();
sm.spec.endpoints[0].intervall = "15s";
expect("a misspelled ServiceMonitor field is rejected", run("validate.mjs", [sm]), 1, "intervall");

expect("a correct LeaderWorkerSet passes", run("validate.mjs", [lws()]), 0);
const badLws = lws();
badLws.spec.leaderWorkerTemplate.sise = 2;
expect("a misspelled LeaderWorkerSet field is rejected", run("validate.mjs", [badLws]), 1, "sise");
const badLwsPod = lws();
badLwsPod.spec.leaderWorkerTemplate.workerTemplate.spec.containers[0].imagePullPolicyy = "Always";
expect("a misspelled field in a LeaderWorkerSet's pod template is rejected", run("validate.mjs", [badLwsPod]), 1,
  "imagePullPolicyy");
const badEnum = lws();
badEnum.spec.startupPolicy = "WhenReady";
expect("a LeaderWorkerSet startupPolicy outside the enum is rejected", run("validate.mjs", [badEnum]), 1, "startupPolicy");

expect("a restricted pod passes Pod Security", run("pod-security.mjs", [statefulSet()]), 0);
const root = statefulSet();
root.spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation = true;
expect("allowPrivilegeEscalation true fails Pod Security", run("pod-security.mjs", [root]), 1,
  "StatefulSet s: spec.template.spec.containers[0] (main).securityContext.allowPrivilegeEscalation");
const hostPath = lws();
hostPath.spec.leaderWorkerTemplate.workerTemplate.spec.volumes = [{ name: "h", hostPath: { path: "/" } }];
expect("a hostPath volume in a LeaderWorkerSet fails Pod Security", run("pod-security.mjs", [hostPath]), 1,
  "volume type hostPath");
expect("a Namespace without the enforce label fails", run("pod-security.mjs",
  [{ apiVersion: "v1", kind: "Namespace", metadata: { name: "n" } }, statefulSet()]), 1, "pod-security.kubernetes.io/enforce");

const draining = () => {
  const s = statefulSet();
  s.spec.template.spec.terminationGracePeriodSeconds = 150;
  Object.assign(s.spec.template.spec.containers[0], {
    args: ["--drain_timeout_ms=120000"], lifecycle: { preStop: { exec: { command: ["/bin/sleep", "15"] } } },
  });
  return s;
};
expect("a grace period that covers preStop and drain passes", run("drain-budget.mjs", [draining()]), 0);
const short = draining();
short.spec.template.spec.terminationGracePeriodSeconds = 60;
expect("a grace period shorter than preStop + drain fails", run("drain-budget.mjs", [short]), 1,
  "terminationGracePeriodSeconds 60 < preStop 15 s + drain 120 s");
const noPreStop = draining();
delete noPreStop.spec.template.spec.containers[0].lifecycle;
expect("a draining container without preStop fails", run("drain-budget.mjs", [noPreStop]), 1, "no preStop sleep");
const twice = draining();
twice.spec.template.spec.terminationGracePeriodSeconds = 60;
twice.spec.template.spec.containers[0].args = ["--drain_timeout_ms=1000", "--drain_timeout_ms=120000"];
expect("the last --drain_timeout_ms counts, as absl reads it", run("drain-budget.mjs", [twice]), 1,
  "terminationGracePeriodSeconds 60 < preStop 15 s + drain 120 s");
// The router's flags come from a ConfigMap mounted as a file (--flagfile).
const flagFile = (args) => {
  const s = draining();
  s.spec.template.spec.terminationGracePeriodSeconds = 60;
  Object.assign(s.spec.template.spec.containers[0], {
    command: ["/opt/gemma-serve/bin/gemma-router"], args,
    volumeMounts: [{ name: "flags", mountPath: "/etc/gemma/router", readOnly: true }],
  });
  s.spec.template.spec.volumes = [{ name: "flags", configMap: { name: "router-flags-5tc8h" } }];
  const cm = { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "router-flags-5tc8h" },
               data: { "router.flags": "--port=50051\n--drain_timeout_ms=120000\n" } };
  return [cm, s];
};
expect("a --drain_timeout_ms in a flag file counts", run("drain-budget.mjs",
  flagFile(["--flagfile=/etc/gemma/router/router.flags"])), 1, "terminationGracePeriodSeconds 60 < preStop 15 s + drain 120 s");
expect("a flag after the --flagfile overrides the file", run("drain-budget.mjs",
  flagFile(["--flagfile=/etc/gemma/router/router.flags", "--drain_timeout_ms=20000"])), 0);
expect("the file overrides a flag before the --flagfile", run("drain-budget.mjs",
  flagFile(["--drain_timeout_ms=20000", "--flagfile=/etc/gemma/router/router.flags"])), 1, "drain 120 s");
expect("a flag file that is not in the manifests fails", run("drain-budget.mjs",
  flagFile(["--flagfile=/etc/gemma/other/router.flags"])), 1, "--flagfile=/etc/gemma/other/router.flags is on no mounted volume");
// Without the flag a worker drains for its default 30 s and a router for 10 s: they need the time all the same.
const byDefault = (bin, grace) => {
  const s = draining();
  s.spec.template.spec.terminationGracePeriodSeconds = grace;
  Object.assign(s.spec.template.spec.containers[0], { command: [`/opt/gemma-serve/bin/${bin}`], args: ["--port=50051"] });
  return s;
};
expect("a worker without the flag drains for its default 30 s", run("drain-budget.mjs", [byDefault("gemma-worker", 30)]), 1,
  "terminationGracePeriodSeconds 30 < preStop 15 s + drain 30 s (gemma-worker's default)");
expect("a worker's default drain within the grace period passes", run("drain-budget.mjs", [byDefault("gemma-worker", 50)]), 0);
expect("a router without the flag drains for its default 10 s", run("drain-budget.mjs", [byDefault("gemma-router", 29)]), 1,
  "drain 10 s (gemma-router's default)");
const defaultNoPreStop = byDefault("gemma-worker", 60);
delete defaultNoPreStop.spec.template.spec.containers[0].lifecycle;
expect("a worker without the flag still needs a preStop sleep", run("drain-budget.mjs", [defaultNoPreStop]), 1, "no preStop sleep");

rmSync(dir, { recursive: true });
console.log(failed ? `${failed} cases failed` : "all cases behaved");
process.exit(failed ? 1 : 0);
