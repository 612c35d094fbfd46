// The Lambda@Edge origin-request "edge hasher" (deploy/edge-hasher/index.mjs),
// fed events shaped as the CloudFront Developer Guide documents them
// ("Lambda@Edge event structure": Records[0].cf.{config, request}; headers as
// {lowercase-name: [{key, value}]}; with IncludeBody, request.body =
// {inputTruncated, action, encoding, data}).
// Expected digests were computed independently (Python hashlib), not with the
// code under test.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { handler, MAX_BODY_BYTES } from '../edge-hasher/index.mjs';

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const ABC_SHA256 = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';
// "Grüße, 世界! 🚀 naïve café" as UTF-8 (34 bytes).
const UTF8_TEXT = 'Grüße, 世界! 🚀 naïve café';
const UTF8_SHA256 = '6700156cf2a78827e6605708f84cb2d8fa208f027826bc573c607a36446da9a9';
// The bytes 0x00..0xff.
const BYTES_0_255_SHA256 = '40aff2e9d2d8922e47afd4648e6967497158785fbd1da870e7110266bf944880';
// 1048576 bytes, byte i = (7 * i + 3) mod 256.
const LIMIT_SHA256 = '172c15dc2e12b50e523d8e657cbe7fbb11c1053252bbf1e1431077d57d8128fd';

function limitBody(length) {
    const bytes = Buffer.alloc(length);
    for (let i = 0; i < length; i++) bytes[i] = (7 * i + 3) % 256;
    return bytes;
}

// An origin-request event as CloudFront sends it to Lambda@Edge.
function originRequest({ method = 'GET', headers = {}, body } = {}) {
    const request = {
        clientIp: '203.0.113.178',
        headers: {
            host: [{ key: 'Host', value: 'abcdefghijkl.lambda-url.eu-west-1.on.aws' }],
            'x-original-host': [{ key: 'X-Original-Host', value: 'd111111abcdef8.cloudfront.net' }],
            accept: [{ key: 'Accept', value: 'text/event-stream' }],
            'user-agent': [{ key: 'User-Agent', value: 'Amazon CloudFront' }],
            via: [{ key: 'Via', value: '2.0 2afae0d44e2540f472c0635ab62c232b.cloudfront.net (CloudFront)' }],
            ...headers,
        },
        method,
        origin: {
            custom: {
                customHeaders: {},
                domainName: 'abcdefghijkl.lambda-url.eu-west-1.on.aws',
                keepaliveTimeout: 5,
                path: '',
                port: 443,
                protocol: 'https',
                readTimeout: 30,
                sslProtocols: ['TLSv1.2'],
            },
        },
        querystring: 'format=sse',
        uri: '/',
    };
    if (body !== undefined) request.body = body;
    return {
        Records: [{
            cf: {
                config: {
                    distributionDomainName: 'd111111abcdef8.cloudfront.net',
                    distributionId: 'EDFDVBD6EXAMPLE',
                    eventType: 'origin-request',
                    requestId: '4TyzHTaYWb1GX1qTfsHhEqV6HUDd_BzoBZnwfnvQc_1oF26ClkoUSEQ==',
                },
                request,
            },
        }],
    };
}

function readOnlyBody(data, { encoding = 'base64', inputTruncated = false } = {}) {
    return { inputTruncated, action: 'read-only', encoding, data };
}

function contentLength(n) {
    return { 'content-length': [{ key: 'Content-Length', value: String(n) }] };
}

// Runs the handler on a copy and returns [input, output].
async function run(event) {
    const input = structuredClone(event);
    const output = await handler(event);
    return [input, output];
}

function hashOf(request) {
    assert.ok(request.headers, 'expected a request, got a response');
    return request.headers['x-amz-content-sha256'];
}

// The request must equal the input except for the one header the hasher adds.
function assertOnlyHashAdded(input, output, digest) {
    const want = structuredClone(input.Records[0].cf.request);
    want.headers['x-amz-content-sha256'] = [{ key: 'X-Amz-Content-Sha256', value: digest }];
    assert.deepEqual(output, want);
}

function assertPayloadTooLarge(output) {
    assert.equal(output.status, '413');
    assert.equal(output.statusDescription, 'Payload Too Large');
    assert.deepEqual(output.headers, {
        'content-type': [{ key: 'Content-Type', value: 'application/json' }],
    });
    const body = JSON.parse(output.body);
    assert.deepEqual(Object.keys(body), ['status', 'error', 'message']);
    assert.equal(body.status, 413);
    assert.equal(body.error, 'payload_too_large');
    assert.equal(typeof body.message, 'string');
    assert.ok(body.message.length > 0);
}

test('an empty POST body is signed with the hash of the empty string', async () => {
    const [input, output] = await run(originRequest({ method: 'POST', body: readOnlyBody('') }));
    assertOnlyHashAdded(input, output, EMPTY_SHA256);
});

test('a POST with no body object at all also gets the empty hash', async () => {
    const [input, output] = await run(originRequest({ method: 'POST' }));
    assertOnlyHashAdded(input, output, EMPTY_SHA256);
});

test('"abc" as base64 hashes to the FIPS 180-2 test vector', async () => {
    const data = Buffer.from('abc').toString('base64');
    const [input, output] = await run(originRequest({
        method: 'POST',
        headers: { ...contentLength(3), 'content-type': [{ key: 'Content-Type', value: 'text/plain' }] },
        body: readOnlyBody(data),
    }));
    assertOnlyHashAdded(input, output, ABC_SHA256);
});

test('a body given as encoding "text" is hashed as its UTF-8 bytes', async () => {
    assert.equal(Buffer.byteLength(UTF8_TEXT, 'utf8'), 34);
    const [input, output] = await run(originRequest({
        method: 'PUT',
        headers: contentLength(34),
        body: readOnlyBody(UTF8_TEXT, { encoding: 'text' }),
    }));
    assertOnlyHashAdded(input, output, UTF8_SHA256);
});

test('binary bytes 0..255 given as base64 are hashed raw', async () => {
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const [input, output] = await run(originRequest({
        method: 'PATCH',
        headers: contentLength(256),
        body: readOnlyBody(bytes.toString('base64')),
    }));
    assertOnlyHashAdded(input, output, BYTES_0_255_SHA256);
});

test('a body of exactly the limit, not truncated, is signed', async () => {
    assert.equal(MAX_BODY_BYTES, 1048576);
    const bytes = limitBody(MAX_BODY_BYTES);
    const [input, output] = await run(originRequest({
        method: 'POST',
        headers: contentLength(MAX_BODY_BYTES),
        body: readOnlyBody(bytes.toString('base64')),
    }));
    assertOnlyHashAdded(input, output, LIMIT_SHA256);
});

test('a body just over the limit (inputTruncated) is answered 413', async () => {
    // CloudFront exposes the first MAX_BODY_BYTES bytes and sets inputTruncated.
    const exposed = limitBody(MAX_BODY_BYTES);
    const [, output] = await run(originRequest({
        method: 'POST',
        headers: contentLength(MAX_BODY_BYTES + 1),
        body: readOnlyBody(exposed.toString('base64'), { inputTruncated: true }),
    }));
    assertPayloadTooLarge(output);
});

test('inputTruncated alone (chunked upload, no Content-Length) is answered 413', async () => {
    const [, output] = await run(originRequest({
        method: 'PUT',
        headers: { 'transfer-encoding': [{ key: 'Transfer-Encoding', value: 'chunked' }] },
        body: readOnlyBody(limitBody(64).toString('base64'), { inputTruncated: true }),
    }));
    assertPayloadTooLarge(output);
});

test('a Content-Length larger than the decoded body is answered 413', async () => {
    const [, output] = await run(originRequest({
        method: 'POST',
        headers: contentLength(10),
        body: readOnlyBody(Buffer.from('abc').toString('base64')),
    }));
    assertPayloadTooLarge(output);
});

test('a POST declaring a body the trigger did not include is answered 413', async () => {
    // IncludeBody off: no body object, but the viewer sent 3 bytes.
    const [, output] = await run(originRequest({ method: 'POST', headers: contentLength(3) }));
    assertPayloadTooLarge(output);
});

test('the body itself is never replaced', async () => {
    const body = readOnlyBody(Buffer.from('abc').toString('base64'));
    const [input, output] = await run(originRequest({ method: 'POST', body }));
    assert.deepEqual(output.body, input.Records[0].cf.request.body);
    assert.equal(output.body.action, 'read-only');
});

test('a GET without a body is left exactly alone', async () => {
    const [input, output] = await run(originRequest({ method: 'GET' }));
    assert.deepEqual(output, input.Records[0].cf.request);
});

test('body-less GET, HEAD, OPTIONS and DELETE with empty data are left exactly alone', async () => {
    for (const method of ['GET', 'HEAD', 'OPTIONS', 'DELETE']) {
        const [input, output] = await run(originRequest({ method, body: readOnlyBody('') }));
        assert.deepEqual(output, input.Records[0].cf.request, method);
        assert.equal(hashOf(output), undefined, method);
    }
});

test('any method with a non-empty body is signed (DELETE with a body)', async () => {
    const [input, output] = await run(originRequest({
        method: 'DELETE',
        body: readOnlyBody(Buffer.from('abc').toString('base64')),
    }));
    assertOnlyHashAdded(input, output, ABC_SHA256);
});

test('Authorization, should one arrive, moves to X-Client-Authorization', async () => {
    const [input, output] = await run(originRequest({
        method: 'POST',
        headers: { authorization: [{ key: 'Authorization', value: 'Bearer t0ken' }] },
        body: readOnlyBody(''),
    }));
    const want = structuredClone(input.Records[0].cf.request);
    delete want.headers.authorization;
    want.headers['x-client-authorization'] = [{ key: 'X-Client-Authorization', value: 'Bearer t0ken' }];
    want.headers['x-amz-content-sha256'] = [{ key: 'X-Amz-Content-Sha256', value: EMPTY_SHA256 }];
    assert.deepEqual(output, want);
});

test('Authorization on a GET moves too, and nothing else changes', async () => {
    const [input, output] = await run(originRequest({
        headers: { authorization: [{ key: 'authorization', value: 'Basic dTpw' }] },
    }));
    const want = structuredClone(input.Records[0].cf.request);
    delete want.headers.authorization;
    want.headers['x-client-authorization'] = [{ key: 'X-Client-Authorization', value: 'Basic dTpw' }];
    assert.deepEqual(output, want);
});
