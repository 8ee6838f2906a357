// The published @openfeature/server-sdk with @openfeature/ofrep-provider
// (single evaluation per call) against an edgeflag Worker.
// Usage: node server_sdk.mjs <baseUrl> <clientSecret> '<cases JSON>'
// A case is {"type": "Boolean"|"String"|"Number"|"Object", "key", "default", "context"};
// prints one JSON array of evaluation details, in case order.
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const [baseUrl, secret, casesJson] = process.argv.slice(2);
const provider = new OFREPProvider({ baseUrl, headers: [['Authorization', `Bearer ${secret}`]] });
await OpenFeature.setProviderAndWait(provider);
const client = OpenFeature.getClient();
const out = [];
for (const c of JSON.parse(casesJson)) {
  const d = await client[`get${c.type}Details`](c.key, c.default, c.context ?? {});
  out.push({ key: c.key, value: d.value, variant: d.variant ?? null, reason: d.reason ?? null, errorCode: d.errorCode ?? null });
}
await OpenFeature.close();
console.log(JSON.stringify(out));
