// The published @openfeature/web-sdk with @openfeature/ofrep-web-provider
// (bulk evaluation, cached, re-fetched by polling and on context change)
// against an edgeflag Worker. Node 20's global fetch stands in for the
// browser's; a wrapper records each request's If-None-Match and status.
// Usage: node web_sdk.mjs <baseUrl> <clientSecret> '<scenario JSON>'
// Scenario: {"context", "changedContext", "cases": [{"type", "key", "default"}]}.
// Prints {"before": [...], "after": [...], "requests": [...]}.
import { OpenFeature } from '@openfeature/web-sdk';
import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';

const [baseUrl, secret, scenarioJson] = process.argv.slice(2);
const scenario = JSON.parse(scenarioJson);
const requests = [];
const recordingFetch = async (input, init) => {
  const req = new Request(input, init);
  const ifNoneMatch = req.headers.get('If-None-Match');
  const res = await fetch(req);
  requests.push({ url: req.url, ifNoneMatch, status: res.status, etag: res.headers.get('ETag') });
  return res;
};
const provider = new OFREPWebProvider({
  baseUrl,
  headers: [['Authorization', `Bearer ${secret}`]],
  pollInterval: 150,
  cacheMode: 'disabled',
  fetchImplementation: recordingFetch,
});

const evaluate = () => {
  const client = OpenFeature.getClient();
  return scenario.cases.map((c) => {
    const d = client[`get${c.type}Details`](c.key, c.default);
    return { key: c.key, value: d.value, variant: d.variant ?? null, reason: d.reason ?? null, errorCode: d.errorCode ?? null };
  });
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

await OpenFeature.setContext(scenario.context);
await OpenFeature.setProviderAndWait(provider);
const before = evaluate();
// Wait (bounded) for a poll that the Worker answers 304.
for (let i = 0; i < 40 && !requests.some((r) => r.status === 304); i++) await sleep(100);
const afterPoll = requests.length;
await OpenFeature.setContext(scenario.changedContext);
const after = evaluate();
await OpenFeature.close();
console.log(JSON.stringify({ before, after, requests, afterPoll }));
