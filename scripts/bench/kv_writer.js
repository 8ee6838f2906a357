// A long-lived writer into a `wrangler dev` instance's local KV, for
// scripts/bench/live_state.py. `wrangler kv key put --local` starts a node
// process and a Miniflare (a workerd) for every put: 2.8 s (2.3 s CPU) here,
// so a writer using it cannot flip the state pointer every second. This opens
// the same persisted namespace once, the way that command does (Miniflare,
// defaultPersistRoot = <persist-to>/v3), and then puts as fast as asked.
//
//   node scripts/bench/kv_writer.js PERSIST_DIR NAMESPACE_ID
//
// stdin: one `KEY<TAB>FILE` per line; stdout: `ok <ms>` per put (its own
// duration), so the caller paces the puts and sees each one land.
"use strict";
const fs = require("fs");
const path = require("path");
const readline = require("readline");
const { Miniflare } = require(path.join(__dirname, "..", "..", "node_modules", "miniflare"));

async function main() {
    const [persist, namespaceId] = process.argv.slice(2);
    if (!persist || !namespaceId) {
        console.error("usage: kv_writer.js PERSIST_DIR NAMESPACE_ID");
        process.exit(2);
    }
    const mf = new Miniflare({
        script: 'addEventListener("fetch", (e) => e.respondWith(new Response(null, { status: 404 })))',
        defaultPersistRoot: path.join(persist, "v3"),
        kvNamespaces: { NAMESPACE: namespaceId },
    });
    const kv = await mf.getKVNamespace("NAMESPACE");
    console.log("ready");
    const lines = readline.createInterface({ input: process.stdin });
    for await (const line of lines) {
        const [key, file] = line.split("\t");
        const started = performance.now();
        const bytes = fs.readFileSync(file);
        // A plain ArrayBuffer: Miniflare's proxy refuses a Node Buffer.
        await kv.put(key, bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
        console.log(`ok ${(performance.now() - started).toFixed(1)}`);
    }
    await mf.dispose();
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
