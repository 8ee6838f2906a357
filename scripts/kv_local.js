// A long-lived client of `wrangler dev` instances' local KV, for the e2e
// harness (tests/e2e/conftest.py: LocalKv) and scripts/bench/live_state.py.
// `wrangler kv key put --local` starts a node process and a Miniflare (a
// workerd) for every call: 2.8 s (2.3 s CPU) on 2 cores. This opens each
// persisted store once, the way that command does (Miniflare,
// defaultPersistRoot = <persist-to>/v3, the namespace ids of wrangler.toml),
// and then serves every call on it in milliseconds.
//
//   node scripts/kv_local.js NAMESPACE_ID [NAMESPACE_ID ...]
//
// stdin: one JSON request per line; stdout: one JSON answer per line, in order.
//   {"op":"put","dir":D,"ns":ID,"key":K,"file":F,"ttl":S?,"metadata":{}?}  -> {"ok":true,"ms":..}
//   {"op":"get","dir":D,"ns":ID,"key":K}       -> {"ok":true,"base64":B|null}
//   {"op":"list","dir":D,"ns":ID,"prefix":P?}  -> {"ok":true,"keys":[{"name","metadata"?,"expiration"?}]}
//   {"op":"close","dir":D}                     -> {"ok":true}  (disposes D's Miniflare)
// A failed call answers {"ok":false,"error":...} and the client goes on.
"use strict";
const fs = require("fs");
const path = require("path");
const readline = require("readline");
const { Miniflare } = require(path.join(__dirname, "..", "node_modules", "miniflare"));

const namespaces = process.argv.slice(2);
const stores = new Map(); // persist dir -> Miniflare

async function store(dir) {
    let mf = stores.get(dir);
    if (!mf) {
        mf = new Miniflare({
            script: 'addEventListener("fetch", (e) => e.respondWith(new Response(null, { status: 404 })))',
            defaultPersistRoot: path.join(dir, "v3"),
            kvNamespaces: Object.fromEntries(namespaces.map((id) => [id, id])),
        });
        await mf.ready;
        stores.set(dir, mf);
    }
    return mf;
}

async function call(req) {
    if (req.op === "close") {
        const mf = stores.get(req.dir);
        stores.delete(req.dir);
        if (mf) await mf.dispose();
        return {};
    }
    if (!namespaces.includes(req.ns)) throw new Error(`unknown namespace ${req.ns}`);
    const kv = await (await store(req.dir)).getKVNamespace(req.ns);
    switch (req.op) {
        case "put": {
            const bytes = fs.readFileSync(req.file);
            const opts = {};
            if (req.ttl) opts.expirationTtl = req.ttl;
            if (req.metadata !== undefined) opts.metadata = req.metadata;
            // A plain ArrayBuffer: Miniflare's proxy refuses a Node Buffer.
            await kv.put(req.key, bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength), opts);
            return {};
        }
        case "get": {
            const value = await kv.get(req.key, "arrayBuffer");
            return { base64: value === null ? null : Buffer.from(value).toString("base64") };
        }
        case "list": {
            const keys = [];
            let cursor;
            for (let page = 0; page < 100; page++) { // bounded: 100,000 keys
                const res = await kv.list({ prefix: req.prefix, cursor });
                keys.push(...res.keys);
                if (res.list_complete) return { keys };
                cursor = res.cursor;
            }
            throw new Error("more than 100 pages of keys");
        }
        default:
            throw new Error(`unknown op ${req.op}`);
    }
}

async function main() {
    if (namespaces.length === 0) {
        console.error("usage: kv_local.js NAMESPACE_ID [NAMESPACE_ID ...]");
        process.exit(2);
    }
    console.log(JSON.stringify({ ok: true, ready: true }));
    for await (const line of readline.createInterface({ input: process.stdin })) {
        const started = performance.now();
        let answer;
        try {
            answer = { ok: true, ...(await call(JSON.parse(line))) };
        } catch (e) {
            answer = { ok: false, error: String((e && e.stack) || e) };
        }
        answer.ms = Number((performance.now() - started).toFixed(1));
        console.log(JSON.stringify(answer));
    }
    for (const mf of stores.values()) await mf.dispose();
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
