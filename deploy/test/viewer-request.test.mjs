// The CloudFront Function (deploy/viewer-request.js, runtime
// cloudfront-js-2.0), fed events shaped as the CloudFront Developer Guide
// documents them ("CloudFront Functions event structure": version, context,
// viewer, request; headers as {lowercase-name: {value}}, with `multiValue` for
// repeated headers). The file is a plain script with a top-level
// `function handler(event)` and no module system, so it runs in a node:vm
// context, as CloudFront runs it.
// Also: deploy/template.yaml must carry the same code inline, byte for byte.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import vm from 'node:vm';

const DEPLOY = new URL('../', import.meta.url);
const SOURCE = readFileSync(new URL('viewer-request.js', DEPLOY), 'utf8');

function loadHandler() {
    const context = vm.createContext({});
    vm.runInContext(SOURCE, context, { filename: 'viewer-request.js' });
    assert.equal(typeof context.handler, 'function', 'a top-level function handler(event)');
    return context.handler;
}

const handler = loadHandler();

// A viewer-request event as CloudFront Functions passes it.
function viewerRequest(headers) {
    return {
        version: '1.0',
        context: {
            distributionDomainName: 'd111111abcdef8.cloudfront.net',
            distributionId: 'EDFDVBD6EXAMPLE',
            eventType: 'viewer-request',
            requestId: 'EXAMPLEntjQpEXAMPLE_SG5Z-EXAMPLEPmPfEXAMPLEu3EqEXAMPLE==',
        },
        viewer: { ip: '198.51.100.11' },
        request: {
            method: 'GET',
            uri: '/jobs/42',
            querystring: {
                format: { value: 'sse' },
                tag: { value: 'a', multiValue: [{ value: 'a' }, { value: 'b' }] },
            },
            headers: {
                host: { value: 'stream.example.com' },
                accept: {
                    value: 'text/event-stream',
                    multiValue: [{ value: 'text/event-stream' }, { value: 'application/x-ndjson' }],
                },
                'last-event-id': { value: '4' },
                'user-agent': { value: 'curl/8.5.0' },
                ...headers,
            },
            cookies: { session: { value: 'abc123' } },
        },
    };
}

// Runs the function; returns [the input request, the returned request] as
// plain objects of this realm (objects made inside the vm context have
// another Object.prototype, which deepEqual would count as a difference).
function run(event) {
    const input = structuredClone(event.request);
    const output = structuredClone(handler(event));
    return [input, output];
}

test('the file is a plain script: no module syntax, no require', () => {
    assert.doesNotMatch(SOURCE, /^\s*(import|export)\b/m);
    assert.doesNotMatch(SOURCE, /\brequire\s*\(/);
    assert.match(SOURCE, /^function handler\(event\) \{$/m);
});

test('Host is copied into X-Original-Host and nothing else changes', () => {
    const [input, output] = run(viewerRequest());
    const want = structuredClone(input);
    want.headers['x-original-host'] = { value: 'stream.example.com' };
    assert.deepEqual(output, want);
    assert.deepEqual(output.headers.host, { value: 'stream.example.com' });
});

test('a client-sent X-Original-Host is replaced by the real Host', () => {
    const [, output] = run(viewerRequest({ 'x-original-host': { value: 'evil.example' } }));
    assert.deepEqual(output.headers['x-original-host'], { value: 'stream.example.com' });
});

test('Authorization moves to X-Client-Authorization', () => {
    const [input, output] = run(viewerRequest({ authorization: { value: 'Bearer t0ken' } }));
    const want = structuredClone(input);
    delete want.headers.authorization;
    want.headers['x-client-authorization'] = { value: 'Bearer t0ken' };
    want.headers['x-original-host'] = { value: 'stream.example.com' };
    assert.deepEqual(output, want);
    assert.equal('authorization' in output.headers, false);
});

test('repeated Authorization headers move with their multiValue', () => {
    const authorization = {
        value: 'Bearer one',
        multiValue: [{ value: 'Bearer one' }, { value: 'Bearer two' }],
    };
    const [, output] = run(viewerRequest({ authorization }));
    assert.deepEqual(output.headers['x-client-authorization'], authorization);
    assert.equal('authorization' in output.headers, false);
});

test('without Authorization no X-Client-Authorization appears', () => {
    const [, output] = run(viewerRequest());
    assert.equal('x-client-authorization' in output.headers, false);
});

test('a POST is handled the same way (method, uri, querystring, cookies untouched)', () => {
    const event = viewerRequest({ authorization: { value: 'Basic dTpw' } });
    event.request.method = 'POST';
    const [input, output] = run(event);
    assert.equal(output.method, 'POST');
    assert.equal(output.uri, input.uri);
    assert.deepEqual(output.querystring, input.querystring);
    assert.deepEqual(output.cookies, input.cookies);
    assert.deepEqual(output.headers['x-client-authorization'], { value: 'Basic dTpw' });
});

// The YAML literal block scalar after `FunctionCode: |`, read by indentation:
// the block is every following line that is blank or indented deeper than
// the key; the first non-blank line sets the indentation that is removed.
// Clip chomping (`|`) keeps exactly one final newline.
function inlineFunctionCode(yaml) {
    const lines = yaml.split('\n');
    const start = lines.findIndex((line) => /^\s*FunctionCode: \|\s*$/.test(line));
    assert.notEqual(start, -1, 'template.yaml has a `FunctionCode: |` block');
    const keyIndent = lines[start].match(/^ */)[0].length;
    const block = [];
    for (const line of lines.slice(start + 1)) {
        const indent = line.match(/^ */)[0].length;
        if (line.trim() !== '' && indent <= keyIndent) break;
        block.push(line);
    }
    while (block.length && block[block.length - 1].trim() === '') block.pop();
    assert.ok(block.length > 0, 'the block is not empty');
    const indent = block[0].match(/^ */)[0].length;
    assert.ok(indent > keyIndent);
    return block
        .map((line) => {
            if (line.trim() === '') return '';
            assert.ok(line.startsWith(' '.repeat(indent)), `under-indented line: ${line}`);
            return line.slice(indent);
        })
        .join('\n') + '\n';
}

test('template.yaml carries viewer-request.js inline, byte for byte', () => {
    const template = readFileSync(new URL('template.yaml', DEPLOY), 'utf8');
    assert.equal(inlineFunctionCode(template), SOURCE);
});
