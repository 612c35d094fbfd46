// Runs one of the deploy chain's JavaScript functions on one event, for the
// Rust test tests/chain.rs. Node 20 or later, no npm packages.
//
// stdin:  {"function": "viewer" | "edge", "event": {...}}
// stdout: {"result": <what the handler returned>}
// On failure it writes the error to stderr and exits with status 1.
//
// "viewer" loads deploy/viewer-request.js as CloudFront Functions does: a
// plain script (runtime cloudfront-js-2.0 has no module system, no process,
// no timers) whose top-level `function handler(event)` returns the request
// or a response. It runs in a fresh node:vm context with only `console` and
// the few modules cloudfront-js-2.0 lets `require` load.
// "edge" imports deploy/edge-hasher/index.mjs and awaits its exported
// `handler(event, context)`, as the Lambda Node.js runtime does.
//
// The deploy directory is CHAIN_DEPLOY_DIR, or ../../deploy from here.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import vm from 'node:vm';
import crypto from 'node:crypto';
import querystring from 'node:querystring';
import buffer from 'node:buffer';

const here = path.dirname(fileURLToPath(import.meta.url));
const deploy = process.env.CHAIN_DEPLOY_DIR || path.resolve(here, '..', '..', 'deploy');

async function readStdin() {
    const chunks = [];
    for await (const chunk of process.stdin) {
        chunks.push(chunk);
    }
    return Buffer.concat(chunks).toString('utf8');
}

// The built-in modules cloudfront-js-2.0 offers to `require`.
const VIEWER_MODULES = { crypto, querystring, buffer };

async function runViewer(event) {
    const file = path.join(deploy, 'viewer-request.js');
    const code = readFileSync(file, 'utf8');
    const sandbox = {
        console,
        require(name) {
            if (Object.hasOwn(VIEWER_MODULES, name)) {
                return VIEWER_MODULES[name];
            }
            throw new Error(`cloudfront-js-2.0 has no module ${JSON.stringify(name)}`);
        },
    };
    const context = vm.createContext(sandbox);
    vm.runInContext(code, context, { filename: file });
    if (typeof context.handler !== 'function') {
        throw new Error(`${file} defines no top-level function handler(event)`);
    }
    // Hand the event over as JSON so that its objects belong to the
    // function's own realm, as they would in CloudFront.
    context.__event = JSON.stringify(event);
    return await vm.runInContext('handler(JSON.parse(__event))', context);
}

async function runEdge(event) {
    const file = path.join(deploy, 'edge-hasher', 'index.mjs');
    const module = await import(pathToFileURL(file).href);
    if (typeof module.handler !== 'function') {
        throw new Error(`${file} exports no handler`);
    }
    const context = {
        functionName: 'us-east-1.edge-hasher',
        functionVersion: '1',
        getRemainingTimeInMillis: () => 5000,
    };
    return await module.handler(event, context);
}

try {
    const input = JSON.parse(await readStdin());
    let result;
    if (input.function === 'viewer') {
        result = await runViewer(input.event);
    } else if (input.function === 'edge') {
        result = await runEdge(input.event);
    } else {
        throw new Error(`unknown function ${JSON.stringify(input.function)}: use "viewer" or "edge"`);
    }
    process.stdout.write(JSON.stringify({ result: result ?? null }));
} catch (error) {
    process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
    process.exitCode = 1;
}
