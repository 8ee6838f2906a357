// Wall time of the wasm steps of a cold isolate, in deno (a V8 as recent
// as workerd's; node 20's V8 cannot compile the bundle's exception
// handling, and workerd freezes its clocks between I/O, so it cannot time
// them): compiling the bundle's index_bg.wasm and
// instantiating it. Imports are stubs: instantiating runs no Rust code
// (wasm-bindgen's glue calls __wbindgen_start afterwards), so a stub
// cannot change the figure.
//
//   deno run --allow-read --allow-env scripts/bench/wasm_cold.mjs LABEL=build/index_bg.wasm [LABEL=FILE ...]
//
// Each wasm is compiled RUNS times (env, default 15) in this one process;
// V8 caches nothing across WebAssembly.compile calls of fresh buffers
// unless told to, so each compile is a cold one. Prints a markdown table:
// median [min-max] ms. Run it once with V8's default (lazy) wasm
// compilation and once with --v8-flags=--no-wasm-lazy-compilation and
// MODE=eager for the whole module compiled up front.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

const runs = Math.max(1, Math.min(200, Number(process.env.RUNS ?? 15)));

function stubImports(module) {
    const imports = {};
    for (const imp of WebAssembly.Module.imports(module)) {
        const ns = (imports[imp.module] ??= {});
        switch (imp.kind) {
            case "function":
                ns[imp.name] = () => undefined;
                break;
            case "tag":
                ns[imp.name] = WebAssembly.JSTag ?? new WebAssembly.Tag({ parameters: ["externref"] });
                break;
            default:
                throw new Error(`unexpected import kind ${imp.kind} (${imp.module}.${imp.name})`);
        }
    }
    return imports;
}

function spread(xs) {
    const s = [...xs].sort((a, b) => a - b);
    const mid = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
    const f = (x) => x.toFixed(1);
    return `${f(mid)} [${f(s[0])}-${f(s[s.length - 1])}]`;
}

const mode = process.env.MODE ?? "lazy, V8 default";
console.log(`| wasm | raw KB | compile ms (${mode}) | instantiate ms |`);
console.log("|---|---:|---:|---:|");
for (const arg of process.argv.slice(2)) {
    const [label, file] = arg.includes("=") ? arg.split(/=(.*)/s, 2) : [arg, arg];
    const bytes = readFileSync(file);
    const compile = [];
    const instantiate = [];
    for (let i = 0; i < runs; i++) {
        // A fresh copy: the same ArrayBuffer could hit a compile cache.
        const copy = new Uint8Array(bytes);
        let t = performance.now();
        const module = await WebAssembly.compile(copy);
        compile.push(performance.now() - t);
        const imports = stubImports(module);
        t = performance.now();
        await WebAssembly.instantiate(module, imports);
        instantiate.push(performance.now() - t);
    }
    console.log(`| ${label} | ${(bytes.length / 1024).toFixed(1)} | ${spread(compile)} | ${spread(instantiate)} |`);
}
