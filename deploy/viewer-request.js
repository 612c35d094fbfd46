// CloudFront Function, runtime cloudfront-js-2.0, on viewer-request.
// deploy/template.yaml carries a byte-identical copy inline (a test checks).
//
// 1. Host -> X-Original-Host: CloudFront keeps Host for signing the origin
//    request, so the gateway learns the public domain from this header.
// 2. Authorization -> X-Client-Authorization: OAC (signing "always")
//    overwrites Authorization with its SigV4 signature, and an origin request
//    policy may not forward Authorization at all (it must be in the cache key,
//    which CachingDisabled has none of). The gateway moves the header back.
// Nothing else changes. No environment variables exist here: constants only.
var CLIENT_AUTHORIZATION = 'x-client-authorization';

function handler(event) {
    var request = event.request;
    var headers = request.headers;
    if (headers.host) {
        headers['x-original-host'] = { value: headers.host.value };
    }
    if (headers.authorization) {
        headers[CLIENT_AUTHORIZATION] = headers.authorization;
        delete headers.authorization;
    }
    return request;
}
