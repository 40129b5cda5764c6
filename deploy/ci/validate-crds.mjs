// Validates prometheus-operator resources against the JSON schemas that
// @kubernetes-models/prometheus-operator generates from the operator's CRDs (types, required
// fields, enums, patterns such as durations). The documents arrive on stdin as one JSON array
// (deploy/check.sh converts the YAML). Any other kind is an error, so nothing passes unchecked.
//
// Limit: like the API server's structural schemas, these accept unknown fields; a misspelt
// optional field is not caught here.
import { readFileSync } from "node:fs";
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const doc of docs) {
  const name = `${doc?.kind ?? "?"}/${doc?.metadata?.name ?? "?"}`;
  const Model = doc?.apiVersion === "monitoring.coreos.com/v1" ? v1[doc.kind] : undefined;
  if (typeof Model !== "function") {
    console.error(`${name}: no schema for apiVersion ${doc?.apiVersion} kind ${doc?.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    console.error(`${name}: ${e.message}`);
    failed++;
  }
}
if (docs.length === 0) {
  console.error("no documents to validate");
  failed++;
}
process.exit(failed ? 1 : 0);
