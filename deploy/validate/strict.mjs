// Unknown-field detection for the compiled validators of kubernetes-models (which, like a lenient API server,
// ignore fields they do not know: a misspelled `podManagmentPolicy` would pass). The validators read every
// property their schema declares; this wraps the object in proxies that record which properties were read, and
// reports every property that was never read. Objects the schema treats as maps (labels, resource lists) are
// enumerated by the validator, and then every key is known.
const accessed = new WeakMap();  // object -> Set of property names the validator read
const enumerated = new WeakSet();  // objects whose keys the validator listed (maps)

function wrap(value) {
  if (value === null || typeof value !== "object") return value;
  if (!accessed.has(value)) accessed.set(value, new Set());
  return new Proxy(value, {
    get(target, prop, receiver) {
      if (typeof prop === "string") accessed.get(target).add(prop);
      return wrap(Reflect.get(target, prop, receiver));
    },
    has(target, prop) {
      if (typeof prop === "string") accessed.get(target).add(prop);
      return Reflect.has(target, prop);
    },
    ownKeys(target) {
      enumerated.add(target);
      return Reflect.ownKeys(target);
    },
  });
}

function unknownFields(value, path, out) {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((item, i) => unknownFields(item, `${path}[${i}]`, out));
    return;
  }
  const read = accessed.get(value);
  for (const [key, child] of Object.entries(value)) {
    // An object the validator never reached (inside a field it rejected) was reported already.
    if (read && !enumerated.has(value) && !read.has(key)) out.push(`${path}.${key}`);
    else unknownFields(child, `${path}.${key}`, out);
  }
}

// Runs validate(proxy) (which throws on a schema error) and returns the paths of fields the schema does not
// declare, e.g. [".spec.podManagmentPolicy"].
export function validateStrict(doc, validate) {
  validate(wrap(doc));
  const out = [];
  unknownFields(doc, "", out);
  return out;
}
