// A container that drains on SIGTERM (it passes --drain_timeout_ms) gets the time to: its pod's
// terminationGracePeriodSeconds covers the preStop sleep, the drain timeout and a margin for the exit, and it has
// a preStop sleep (so endpoints are removed before the drain starts). Otherwise the kubelet would kill it with
// requests still running. Exits 1 naming the object and container.
// usage: node drain-budget.mjs FILE.yaml...
import { readFileSync } from "node:fs";
import yaml from "js-yaml";

const MARGIN_S = 5;

function templates(doc) {
  const s = doc.spec ?? {};
  if (doc.kind === "LeaderWorkerSet") {
    const t = s.leaderWorkerTemplate ?? {};
    return [t.leaderTemplate, t.workerTemplate].filter(Boolean);
  }
  return s.template ? [s.template] : [];
}

function preStopSeconds(c) {
  const p = c.lifecycle?.preStop;
  if (p?.sleep) return p.sleep.seconds;
  const cmd = p?.exec?.command ?? [];
  if (/(^|\/)sleep$/.test(cmd[0] ?? "") && cmd.length === 2) return Number(cmd[1]);
  return undefined;
}

let failures = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (doc == null) continue;
    for (const t of templates(doc)) {
      const grace = t.spec?.terminationGracePeriodSeconds ?? 30;
      for (const c of t.spec?.containers ?? []) {
        const flag = (c.args ?? []).map((a) => /^--drain_timeout_ms=(\d+)$/.exec(a)).find(Boolean);
        if (!flag) continue;
        checked++;
        const drain = Number(flag[1]) / 1000;
        const sleep = preStopSeconds(c);
        const where = `${file}: ${doc.kind} ${doc.metadata?.name} container ${c.name}`;
        if (sleep === undefined) {
          console.error(`${where}: drains on SIGTERM but has no preStop sleep (lifecycle.preStop)`);
          failures++;
        } else if (grace < sleep + drain + MARGIN_S) {
          console.error(`${where}: terminationGracePeriodSeconds ${grace} < preStop ${sleep} s + drain ${drain} s + ${MARGIN_S} s`);
          failures++;
        }
      }
    }
  }
}
console.log(`${checked} draining containers checked; ${failures} problems`);
process.exit(failures > 0 || checked === 0 ? 1 : 0);
