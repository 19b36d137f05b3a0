// Validates Gateway API objects (JSON array on stdin) against the models @kubernetes-models/gateway-api
// generates from the Gateway API CRDs; prints one JSON array: null (valid) or the error text per object.
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import { Gateway } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/Gateway";

const MODELS = { "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute, "gateway.networking.k8s.io/v1/Gateway": Gateway };
let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((obj) => {
  const Model = MODELS[`${obj.apiVersion}/${obj.kind}`];
  if (!Model) return `no published model for ${obj.apiVersion} ${obj.kind}`;
  try {
    new Model(obj).validate();
    return null;
  } catch (e) {
    return String(e.message);
  }
});
process.stdout.write(JSON.stringify(results));
