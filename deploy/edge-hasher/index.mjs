// Lambda@Edge "edge hasher", on origin-request with IncludeBody: true.
//
// CloudFront signs the origin request with OAC (SigV4) after this function
// has run, and a Lambda Function URL rejects a signed POST/PUT unless the
// request carries the SHA-256 of its payload in x-amz-content-sha256
// (Lambda does not accept unsigned payloads):
// https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/private-content-restricting-access-to-lambda.html
// So for every request that can carry a body we hash the exact bytes and
// set that header; body-less requests are left exactly as they came.
//
// Lambda@Edge has no environment variables: everything is a constant here.

import { createHash } from 'node:crypto';

// How much body an origin-request function sees. The CloudFront Developer
// Guide, "Restrictions on Lambda@Edge", section "Restrictions on the request
// body with the include body option":
// https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/lambda-at-edge-function-restrictions.html#lambda-at-edge-restrictions-request-body
//   "CloudFront always base64 encodes the request body before exposing it to
//    Lambda@Edge. If the request body is large, CloudFront truncates it before
//    exposing it ... For origin request events, the body is truncated at 1 MB."
// The limit is on the raw bytes, truncated before base64 encoding (the same
// page allows 1 MB of text or 1.33 MB of base64 for a replaced body: the
// base64 of 1 MB). The page writes "1 MB" without saying 10^6 or 2^20; we
// take 1 MiB (2^20), which is also the gateway's own server.max_body_bytes.
// The handler never trusts this number to detect truncation: CloudFront's
// body.inputTruncated flag and the Content-Length header decide. A body the
// edge cannot see whole cannot be signed, so it is answered 413 here, in the
// gateway's error shape, instead of being signed with the wrong hash.
export const MAX_BODY_BYTES = 1048576;

// Where a client's credential travels (OAC owns Authorization); the gateway
// moves it back (server.authorization_source).
export const CLIENT_AUTHORIZATION = 'x-client-authorization';

const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);

export const handler = async (event) => {
    const request = event.Records[0].cf.request;
    const headers = request.headers;

    // The viewer-request function already moved it; this only matters for
    // setups whose cache policy forwards Authorization to the origin request.
    if (headers.authorization) {
        headers[CLIENT_AUTHORIZATION] = headers.authorization.map((h) => ({
            key: 'X-Client-Authorization',
            value: h.value,
        }));
        delete headers.authorization;
    }

    const body = request.body;
    const data = body && typeof body.data === 'string' ? body.data : '';
    if (!BODY_METHODS.has(request.method) && data === '') {
        return request;
    }
    if (body && body.inputTruncated) {
        return payloadTooLarge();
    }
    const bytes = body && body.encoding === 'text'
        ? Buffer.from(data, 'utf8')
        : Buffer.from(data, 'base64');
    const declared = contentLength(headers);
    if (declared !== null && declared > bytes.length) {
        return payloadTooLarge();
    }
    headers['x-amz-content-sha256'] = [{
        key: 'X-Amz-Content-Sha256',
        value: createHash('sha256').update(bytes).digest('hex'),
    }];
    return request;
};

// The Content-Length the viewer declared, or null when absent or unreadable.
function contentLength(headers) {
    const values = headers['content-length'];
    if (!values || values.length !== 1 || !/^[0-9]+$/.test(values[0].value)) {
        return null;
    }
    return Number(values[0].value);
}

// A generated response: CloudFront returns it to the viewer and never
// contacts the origin.
function payloadTooLarge() {
    return {
        status: '413',
        statusDescription: 'Payload Too Large',
        headers: {
            'content-type': [{ key: 'Content-Type', value: 'application/json' }],
        },
        body: JSON.stringify({
            status: 413,
            error: 'payload_too_large',
            message: `request body too large: CloudFront's edge signs at most ${MAX_BODY_BYTES} bytes, and only a body it sees whole`,
        }),
    };
}
