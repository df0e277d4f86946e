// Validates KEDA, Knative and prometheus-operator custom resources against their CRD schemas, offline.
//
// Input: a JSON file holding [{id, doc}, ...]. Output (stdout): JSON [{id, errors: [string]}].
// The schemas are the compiled validators shipped by @kubernetes-models/keda,
// @kubernetes-models/knative and @kubernetes-models/prometheus-operator. Those validators do not
// reject unknown fields, which is how a typo slips through to a cluster that silently drops it, so
// this script adds a strict mode: it watches
// which properties the validator reads and reports every property it never looked at, except
// inside free-form maps (which the validator enumerates) and free-form objects (which it never
// opens).
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { Service as KnativeService } from "@kubernetes-models/knative/serving.knative.dev/v1/Service";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const MODELS = new Map([
  ["keda.sh/v1alpha1/ScaledObject", ScaledObject],
  ["keda.sh/v1alpha1/TriggerAuthentication", TriggerAuthentication],
  ["serving.knative.dev/v1/Service", KnativeService],
  ["monitoring.coreos.com/v1/ServiceMonitor", ServiceMonitor],
]);

// Wraps every object and array in a proxy that records how the validator touched it.
function track(value, path, seen) {
  if (value === null || typeof value !== "object") {
    return value;
  }
  const record = { path, value, read: new Set(), enumerated: false };
  seen.push(record);
  const children = new Map();
  return new Proxy(value, {
    get(target, prop, receiver) {
      if (typeof prop === "string") {
        record.read.add(prop);
        if (Object.prototype.hasOwnProperty.call(target, prop)) {
          if (!children.has(prop)) {
            children.set(prop, track(target[prop], `${path}/${prop}`, seen));
          }
          return children.get(prop);
        }
      }
      return Reflect.get(target, prop, receiver);
    },
    has(target, prop) {
      if (typeof prop === "string") {
        record.read.add(prop);
      }
      return Reflect.has(target, prop);
    },
    ownKeys(target) {
      record.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

function unknownFields(seen) {
  const found = [];
  for (const record of seen) {
    if (Array.isArray(record.value) || record.enumerated || record.read.size === 0) {
      continue;
    }
    for (const key of Object.keys(record.value)) {
      if (!record.read.has(key)) {
        found.push(`${record.path || "/"}: unknown field "${key}"`);
      }
    }
  }
  return found;
}

function validate(doc) {
  const model = MODELS.get(`${doc.apiVersion}/${doc.kind}`);
  if (!model) {
    return [`no CRD schema for ${doc.apiVersion} ${doc.kind}`];
  }
  const seen = [];
  const tracked = track(doc, "", seen);
  const errors = [];
  try {
    model.prototype.validate.call(tracked);
  } catch (error) {
    if (!Array.isArray(error.errors)) {
      throw error;
    }
    for (const e of error.errors) {
      errors.push(`${e.instancePath || "/"}: ${e.message}`);
    }
  }
  return errors.concat(unknownFields(seen));
}

const items = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = items.map(({ id, doc }) => ({ id, errors: validate(doc) }));
process.stdout.write(JSON.stringify(results));
