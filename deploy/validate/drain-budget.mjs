// A container that drains on SIGTERM (gemma-router or gemma-worker, whether it passes --drain_timeout_ms or drains
// for the binary's default) gets the time to: its pod's terminationGracePeriodSeconds covers the preStop sleep,
// the drain timeout and a margin for the exit, and it has a preStop sleep (so endpoints are removed before the drain
// starts). Otherwise the kubelet would kill it with requests still running. The timeout is read as absl reads it:
// a --flagfile's lines count where the --flagfile stands, and the last value wins. A flag file is found through
// the container's volume mounts in a ConfigMap of the same file. Exits 1 naming the object and container.
// usage: node drain-budget.mjs FILE.yaml...
import { readFileSync } from "node:fs";
import yaml from "js-yaml";

const MARGIN_S = 5;
// The binaries' own defaults (router/router_main.cc, worker/worker_options.cc), for containers without the flag.
const DEFAULT_DRAIN_MS = { "gemma-router": 10000, "gemma-worker": 30000 };

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

// The text of the flag file at `path` as the container sees it, or an Error saying why it cannot be read here.
function readFlagFile(path, container, podSpec, configMaps) {
  for (const m of container.volumeMounts ?? []) {
    let key;
    if (m.subPath !== undefined) {
      if (path === m.mountPath) key = m.subPath;
    } else if (path.startsWith(`${m.mountPath.replace(/\/$/, "")}/`)) {
      key = path.slice(m.mountPath.replace(/\/$/, "").length + 1);
    }
    if (key === undefined) continue;
    const volume = (podSpec.volumes ?? []).find((v) => v.name === m.name);
    if (!volume?.configMap) return new Error(`--flagfile=${path} is on volume ${m.name}, which is no ConfigMap`);
    const item = (volume.configMap.items ?? []).find((i) => i.path === key);
    if (volume.configMap.items && !item) return new Error(`--flagfile=${path}: ConfigMap volume ${m.name} has no item ${key}`);
    const data = configMaps.get(volume.configMap.name)?.data;
    const text = data?.[item ? item.key : key];
    if (text === undefined) {
      return new Error(`--flagfile=${path}: no ConfigMap ${volume.configMap.name} with key ${item ? item.key : key} in this file`);
    }
    return text;
  }
  return new Error(`--flagfile=${path} is on no mounted volume`);
}

// Flags in the order absl applies them: a flag file's lines in place of its --flagfile.
function expandFlags(args, container, podSpec, configMaps, depth = 0) {
  const out = [];
  for (let i = 0; i < args.length; i++) {
    const m = /^--?flagfile(?:=(.*))?$/.exec(args[i]);
    if (!m) {
      out.push(args[i]);
      continue;
    }
    const path = m[1] ?? args[++i];
    if (depth > 8) throw new Error(`--flagfile=${path}: flag files nest too deep`);
    const text = readFlagFile(path, container, podSpec, configMaps);
    if (text instanceof Error) throw text;
    const lines = text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
    out.push(...expandFlags(lines, container, podSpec, configMaps, depth + 1));
  }
  return out;
}

// The last --drain_timeout_ms (absl keeps the last value given), as a string, or undefined.
function lastDrainTimeout(flags) {
  let value;
  for (let i = 0; i < flags.length; i++) {
    const m = /^--?drain_timeout_ms(?:=(.*))?$/.exec(flags[i]);
    if (m) value = m[1] ?? flags[++i];
  }
  return value;
}

function binary(c) {
  const name = (c.command ?? [])[0]?.split("/").pop();
  return name in DEFAULT_DRAIN_MS ? name : undefined;
}

let failures = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = yaml.loadAll(readFileSync(file, "utf8")).filter((d) => d != null);
  const configMaps = new Map(docs.filter((d) => d.kind === "ConfigMap").map((d) => [d.metadata?.name, d]));
  for (const doc of docs) {
    for (const t of templates(doc)) {
      const grace = t.spec?.terminationGracePeriodSeconds ?? 30;
      for (const c of t.spec?.containers ?? []) {
        const where = `${file}: ${doc.kind} ${doc.metadata?.name} container ${c.name}`;
        let flags;
        try {
          flags = expandFlags([...(c.command ?? []).slice(1), ...(c.args ?? [])], c, t.spec, configMaps);
        } catch (e) {
          console.error(`${where}: ${e.message}`);
          failures++;
          continue;
        }
        const given = lastDrainTimeout(flags);
        const bin = binary(c);
        if (given === undefined && !bin) continue;
        checked++;
        if (given !== undefined && !/^\d+$/.test(given)) {
          console.error(`${where}: --drain_timeout_ms "${given}" is not a number of milliseconds`);
          failures++;
          continue;
        }
        const drain = (given !== undefined ? Number(given) : DEFAULT_DRAIN_MS[bin]) / 1000;
        const source = given !== undefined ? "" : ` (${bin}'s default)`;
        const sleep = preStopSeconds(c);
        if (sleep === undefined) {
          console.error(`${where}: drains on SIGTERM but has no preStop sleep (lifecycle.preStop)`);
          failures++;
        } else if (grace < sleep + drain + MARGIN_S) {
          console.error(`${where}: terminationGracePeriodSeconds ${grace} < preStop ${sleep} s + drain ${drain} s${source} + ${MARGIN_S} s`);
          failures++;
        }
      }
    }
  }
}
console.log(`${checked} draining containers checked; ${failures} problems`);
process.exit(failures > 0 || checked === 0 ? 1 : 0);
