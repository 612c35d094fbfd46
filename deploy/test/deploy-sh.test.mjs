// deploy/deploy.sh, run against fake `aws`, `sam`, `docker` and `cargo-lambda`
// executables: each one appends its argv to a log (one JSON line per call)
// and prints canned answers. PATH holds only the fakes and `cat`, so a
// missing fake is a missing prerequisite.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('../deploy.sh', import.meta.url));
const BASH = ['/bin/bash', '/usr/bin/bash'].find((p) => existsSync(p));
const CAT = execFileSync(BASH, ['-c', 'command -v cat'], { encoding: 'utf8' }).trim();

const ACCOUNT = '123456789012';
const EDGE_ARN = `arn:aws:lambda:us-east-1:${ACCOUNT}:function:demo-edge-EdgeHasher-AbC123:7`;
const DISTRIBUTION_URL = 'https://d111111abcdef8.cloudfront.net/';
const CURL = 'curl -N https://d111111abcdef8.cloudfront.net/';
// How --parameter-overrides writes the empty string (sam reads `""` as '').
const EMPTY = '""';

// One fake tool: logs {tool, argv} and answers like the real one would.
const FAKE = String.raw`
const { appendFileSync } = require('node:fs');
const tool = TOOL;
const argv = process.argv.slice(2);
appendFileSync(process.env.FAKE_LOG, JSON.stringify({ tool, argv }) + '\n');
const has = (...words) => words.every((w) => argv.includes(w));
if (tool === 'aws') {
    if (has('sts', 'get-caller-identity')) {
        if (process.env.FAKE_NO_CREDENTIALS) {
            process.stderr.write('Unable to locate credentials.\n');
            process.exit(255);
        }
        console.log(ACCOUNT);
    } else if (has('configure', 'get', 'region')) {
        if (!process.env.FAKE_CONFIGURED_REGION) process.exit(1);
        console.log(process.env.FAKE_CONFIGURED_REGION);
    } else if (has('cloudformation', 'describe-stacks')) {
        const query = argv[argv.indexOf('--query') + 1];
        if (query.includes('EdgeHasherVersionArn')) console.log(EDGE_ARN);
        else if (query.includes('DistributionUrl')) console.log(DISTRIBUTION_URL);
        else if (query.includes('CurlCommand')) console.log(CURL);
        else process.exit(254);
    } else {
        process.exit(252);
    }
} else if (tool === 'docker') {
    if (argv[0] === 'info' && process.env.FAKE_DOCKER_DOWN) process.exit(1);
} else if (tool === 'sam') {
    console.log('sam ' + argv[0] + ': ok');
}
`;

function sandbox(tools = ['aws', 'sam', 'docker', 'cargo-lambda']) {
    const dir = mkdtempSync(join(tmpdir(), 'deploy-sh-'));
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    symlinkSync(CAT, join(bin, 'cat'));
    for (const tool of tools) {
        const file = join(bin, tool);
        const body = FAKE
            .replace('TOOL', JSON.stringify(tool))
            .replaceAll('ACCOUNT', JSON.stringify(ACCOUNT))
            .replace('console.log(EDGE_ARN)', `console.log(${JSON.stringify(EDGE_ARN)})`)
            .replace('console.log(DISTRIBUTION_URL)', `console.log(${JSON.stringify(DISTRIBUTION_URL)})`)
            .replace('console.log(CURL)', `console.log(${JSON.stringify(CURL)})`);
        writeFileSync(file, `#!${process.execPath}\n${body}`);
        chmodSync(file, 0o755);
    }
    const log = join(dir, 'calls.jsonl');
    writeFileSync(log, '');
    return { dir, bin, log };
}

function deploy(args, { tools, env = {} } = {}) {
    const box = sandbox(tools);
    try {
        const result = spawnSync(BASH, [SCRIPT, ...args], {
            encoding: 'utf8',
            env: { PATH: box.bin, HOME: box.dir, FAKE_LOG: box.log, ...env },
            timeout: 60_000,
        });
        const calls = readFileSync(box.log, 'utf8')
            .split('\n')
            .filter(Boolean)
            .map((line) => JSON.parse(line));
        return { status: result.status, stdout: result.stdout, stderr: result.stderr, calls };
    } finally {
        rmSync(box.dir, { recursive: true, force: true });
    }
}

const after = (argv, flag) => {
    const i = argv.indexOf(flag);
    return i === -1 ? undefined : argv[i + 1];
};
const isSam = (call, sub) => call.tool === 'sam' && call.argv[0] === sub;
const deploys = (calls) => calls.filter((c) => isSam(c, 'deploy'));
const builds = (calls) => calls.filter((c) => isSam(c, 'build'));
// The values after --parameter-overrides, up to the next option.
function parameterOverrides(argv) {
    const start = argv.indexOf('--parameter-overrides') + 1;
    assert.ok(start > 0, 'sam deploy has --parameter-overrides');
    const values = [];
    for (const arg of argv.slice(start)) {
        if (arg.startsWith('--')) break;
        values.push(arg);
    }
    return Object.fromEntries(values.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
}

test('--help prints usage and exits 0 without running any tool', () => {
    const r = deploy(['--help']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^Usage: deploy\/deploy\.sh/);
    for (const option of ['--profile', '--region', '--stack-name', '--package-type', '--function-timeout', '--config',
        '--subnets', '--security-groups', '--credential-cookie', '--origin-read-timeout', '--completion-timeout']) {
        assert.ok(r.stdout.includes(option), option);
    }
    // What a user must know before choosing the timeouts.
    assert.match(r.stdout, /20\.\.180/);
    assert.match(r.stdout, /More than 180 needs a\s+CloudFront quota increase/);
    assert.match(r.stdout, /above the function\s+timeout to let a stream live the whole invocation/);
    assert.deepEqual(r.calls, []);
});

test('an unknown option fails before anything runs', () => {
    const r = deploy(['--stack-nmae', 'x']);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /unknown option: --stack-nmae/);
    assert.deepEqual(r.calls, []);
});

test('bad option values fail before anything runs', () => {
    for (const args of [
        ['--package-type', 'tarball'],
        ['--function-timeout', '901'],
        ['--function-timeout', '29'],
        ['--function-timeout', 'soon'],
        ['--stack-name', 'has_underscore'],
        ['--region'],
        ['--package-type', 'zip', '--config', '/etc/gateway/examples/fan-in.toml'],
        ['--subnets', 'subnet-0abc1234'],
        ['--security-groups', 'sg-0abc1234'],
        ['--subnets', 'subnet-0abc1234 subnet-0def5678', '--security-groups', 'sg-0abc1234'],
        ['--subnets', 'subnet-0abc1234', '--security-groups', 'sg-0abc1234;reboot'],
        ['--credential-cookie'],
        ['--credential-cookie', 'access token'],
        ['--origin-read-timeout'],
        ['--completion-timeout'],
    ]) {
        const r = deploy(args);
        assert.notEqual(r.status, 0, args.join(' '));
        assert.match(r.stderr, /deploy\.sh: /, args.join(' '));
        assert.deepEqual(r.calls, [], args.join(' '));
    }
});

test('image: edge stack first in us-east-1, then the main stack with its version ARN', () => {
    const r = deploy(['--stack-name', 'demo', '--region', 'eu-west-1']);
    assert.equal(r.status, 0, r.stderr);

    const order = r.calls.map((c) => `${c.tool} ${c.argv.slice(0, 2).join(' ')}`);
    assert.deepEqual(order, [
        'docker info',
        'aws sts get-caller-identity',
        'sam build --template-file',
        'sam deploy --template-file',
        'aws cloudformation describe-stacks',
        'sam build --template-file',
        'sam deploy --template-file',
        'aws cloudformation describe-stacks',
        'aws cloudformation describe-stacks',
    ]);

    const [edgeBuild, mainBuild] = builds(r.calls);
    assert.equal(after(edgeBuild.argv, '--template-file'), 'deploy/template_le.yaml');
    assert.equal(after(mainBuild.argv, '--template-file'), 'deploy/template.yaml');
    assert.equal(after(mainBuild.argv, '--exclude'), 'GatewayZipFunction');

    const [edge, main] = deploys(r.calls);
    assert.equal(after(edge.argv, '--stack-name'), 'demo-edge');
    assert.equal(after(edge.argv, '--region'), 'us-east-1');
    assert.equal(after(edge.argv, '--capabilities'), 'CAPABILITY_IAM');
    for (const flag of ['--resolve-s3', '--no-fail-on-empty-changeset', '--no-confirm-changeset']) {
        assert.ok(edge.argv.includes(flag), `edge deploy ${flag}`);
        assert.ok(main.argv.includes(flag), `main deploy ${flag}`);
    }
    assert.ok(!edge.argv.includes('--parameter-overrides'));

    const describeEdge = r.calls[4];
    assert.equal(after(describeEdge.argv, '--stack-name'), 'demo-edge');
    assert.equal(after(describeEdge.argv, '--region'), 'us-east-1');
    assert.match(after(describeEdge.argv, '--query'), /EdgeHasherVersionArn/);

    assert.equal(after(main.argv, '--stack-name'), 'demo');
    assert.equal(after(main.argv, '--region'), 'eu-west-1');
    assert.equal(after(main.argv, '--capabilities'), 'CAPABILITY_IAM');
    assert.ok(main.argv.includes('--resolve-image-repos'));
    assert.deepEqual(parameterOverrides(main.argv), {
        EdgeHasherVersionArn: EDGE_ARN,
        PackageType: 'Image',
        FunctionTimeout: '900',
        OriginReadTimeout: '30',
        ResponseCompletionTimeout: '0',
        CredentialCookie: EMPTY,
    });

    assert.ok(r.stdout.includes(`Distribution URL: ${DISTRIBUTION_URL}`), r.stdout);
    assert.ok(r.stdout.includes(CURL), r.stdout);
});

test('zip: cargo-lambda instead of docker, the image function excluded from the build', () => {
    const r = deploy(['--package-type', 'zip', '--function-timeout', '300', '--region', 'ap-southeast-2'],
        { tools: ['aws', 'sam', 'cargo-lambda'] });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(!r.calls.some((c) => c.tool === 'docker'));
    const [edge, main] = deploys(r.calls);
    assert.equal(after(edge.argv, '--stack-name'), 'streaming-gateway-edge');
    assert.equal(after(edge.argv, '--region'), 'us-east-1');
    assert.equal(after(main.argv, '--stack-name'), 'streaming-gateway');
    assert.equal(after(main.argv, '--region'), 'ap-southeast-2');
    const mainBuild = builds(r.calls)[1];
    assert.equal(after(mainBuild.argv, '--exclude'), 'GatewayImageFunction');
    assert.ok(mainBuild.argv.includes('--beta-features'));
    assert.ok(!main.argv.includes('--resolve-image-repos'));
    assert.deepEqual(parameterOverrides(main.argv), {
        EdgeHasherVersionArn: EDGE_ARN,
        PackageType: 'Zip',
        FunctionTimeout: '300',
        OriginReadTimeout: '30',
        ResponseCompletionTimeout: '0',
        CredentialCookie: EMPTY,
    });
    assert.ok(r.stdout.includes(DISTRIBUTION_URL));
});

test('--profile reaches every aws and sam call, --config becomes ConfigPath', () => {
    const r = deploy(['--profile', 'ops', '--config', '/etc/gateway/examples/fan-in.toml']);
    assert.equal(r.status, 0, r.stderr);
    for (const call of r.calls.filter((c) => c.tool === 'aws' || c.tool === 'sam')) {
        assert.equal(after(call.argv, '--profile'), 'ops', JSON.stringify(call));
    }
    const main = deploys(r.calls)[1];
    assert.equal(parameterOverrides(main.argv).ConfigPath, '/etc/gateway/examples/fan-in.toml');
});

test('--subnets and --security-groups put the function in a VPC (SubnetIds, SecurityGroupIds)', () => {
    const r = deploy([
        '--subnets', 'subnet-0abc1234,subnet-0def5678',
        '--security-groups', 'sg-0abc1234',
    ]);
    assert.equal(r.status, 0, r.stderr);
    const overrides = parameterOverrides(deploys(r.calls)[1].argv);
    assert.equal(overrides.SubnetIds, 'subnet-0abc1234,subnet-0def5678');
    assert.equal(overrides.SecurityGroupIds, 'sg-0abc1234');
    const plain = parameterOverrides(deploys(deploy([]).calls)[1].argv);
    assert.equal(plain.SubnetIds, undefined);
    assert.equal(plain.SecurityGroupIds, undefined);
});

test('--credential-cookie becomes CredentialCookie; without it the empty name is passed, not left out', () => {
    const r = deploy(['--credential-cookie', 'access_token']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(parameterOverrides(deploys(r.calls)[1].argv).CredentialCookie, 'access_token');
    assert.ok(!deploys(r.calls)[0].argv.includes('--parameter-overrides'), 'the edge stack has no such parameter');
    // sam deploy keeps a parameter it is not given at its previous value:
    // the empty name is given, or an earlier cookie would stay forwarded.
    const plain = deploy([]);
    assert.equal(plain.status, 0, plain.stderr);
    assert.equal(parameterOverrides(deploys(plain.calls)[1].argv).CredentialCookie, EMPTY);
});

// The template's AllowedPattern for CredentialCookie, as written.
function credentialCookiePattern() {
    const template = readFileSync(fileURLToPath(new URL('../template.yaml', import.meta.url)), 'utf8');
    const block = template.slice(template.indexOf('\n  CredentialCookie:\n'));
    const line = block.split('\n').find((l) => l.trim().startsWith('AllowedPattern:'));
    assert.ok(line, 'template.yaml: CredentialCookie has an AllowedPattern');
    return new RegExp(line.trim().slice('AllowedPattern:'.length).trim().replace(/^'(.*)'$/, '$1'));
}

test('--credential-cookie takes what the template allows, and refuses the rest before anything runs', () => {
    const pattern = credentialCookiePattern();
    for (const name of [
        'access_token', '__Host-session', 'a!#$%&*+.^_`|~-z', 'x'.repeat(128),
        'x'.repeat(129), 'access token', 'tok=en', 'tok;x', "it's", 'tök', 'a,b', '"quoted"',
    ]) {
        const r = deploy(['--credential-cookie', name]);
        if (pattern.test(name)) {
            assert.equal(r.status, 0, `${name}: ${r.stderr}`);
            assert.equal(parameterOverrides(deploys(r.calls)[1].argv).CredentialCookie, name);
        } else {
            assert.equal(r.status, 1, name);
            assert.match(r.stderr, /^deploy\.sh: --credential-cookie takes a cookie name .*, not '/, name);
            assert.deepEqual(r.calls, [], name);
        }
    }
    // Both kinds are in the list above: the pattern is not all-or-nothing.
    assert.ok(pattern.test('access_token') && !pattern.test('access token'));
});

test('--origin-read-timeout and --completion-timeout become OriginReadTimeout and ResponseCompletionTimeout', () => {
    const r = deploy(['--origin-read-timeout', '60', '--completion-timeout', '1200']);
    assert.equal(r.status, 0, r.stderr);
    const overrides = parameterOverrides(deploys(r.calls)[1].argv);
    assert.equal(overrides.OriginReadTimeout, '60');
    assert.equal(overrides.ResponseCompletionTimeout, '1200');
    assert.ok(!deploys(r.calls)[0].argv.includes('--parameter-overrides'), 'the edge stack has no such parameter');
    // sam deploy keeps a parameter it is not given at its previous value:
    // without the options the defaults are given, or an earlier deploy's
    // timeouts would stay.
    const plain = deploy([]);
    assert.equal(plain.status, 0, plain.stderr);
    const defaults = parameterOverrides(deploys(plain.calls)[1].argv);
    assert.equal(defaults.OriginReadTimeout, '30');
    assert.equal(defaults.ResponseCompletionTimeout, '0');
});

// A parameter's scalar settings in template.yaml (Default, MinValue, ...).
function templateParameter(name) {
    const template = readFileSync(fileURLToPath(new URL('../template.yaml', import.meta.url)), 'utf8');
    const start = template.indexOf(`\n  ${name}:\n`);
    assert.ok(start !== -1, `template.yaml has the parameter ${name}`);
    const settings = {};
    for (const line of template.slice(start).split('\n').slice(2)) {
        if (!line.startsWith('    ')) break;
        const m = /^    ([A-Za-z]+): (\S.*)$/.exec(line);
        if (m) settings[m[1]] = m[2];
    }
    return settings;
}

test('the timeouts deploy.sh takes are those the template allows, with its defaults', () => {
    const read = templateParameter('OriginReadTimeout');
    const completion = templateParameter('ResponseCompletionTimeout');
    assert.deepEqual([read.Default, read.MinValue, read.MaxValue], ['30', '20', '180']);
    assert.deepEqual([completion.Default, completion.MinValue], ['0', '0']);
    for (const [args, expected] of [
        [['--origin-read-timeout', read.MinValue], [read.MinValue, '0']],
        [['--origin-read-timeout', read.MaxValue], [read.MaxValue, '0']],
        // 0 sets none, whatever the origin read timeout.
        [['--origin-read-timeout', read.MaxValue, '--completion-timeout', '0'], [read.MaxValue, '0']],
        [['--completion-timeout', '0'], ['30', '0']],
        // Equal to the origin read timeout is enough, the template's default too.
        [['--completion-timeout', read.Default], ['30', '30']],
        [['--origin-read-timeout', '60', '--completion-timeout', '60'], ['60', '60']],
        // 30 s is enough below a shorter origin read timeout.
        [['--origin-read-timeout', '20', '--completion-timeout', '30'], ['20', '30']],
        [['--completion-timeout', '86400'], ['30', '86400']],
        // Written as numbers are: leading zeros go.
        [['--origin-read-timeout', '045', '--completion-timeout', '0900'], ['45', '900']],
    ]) {
        const r = deploy(args);
        assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
        const overrides = parameterOverrides(deploys(r.calls)[1].argv);
        assert.deepEqual([overrides.OriginReadTimeout, overrides.ResponseCompletionTimeout], expected, args.join(' '));
    }
});

test('bad timeouts are refused with exit 1 and a clear message before anything runs', () => {
    const readRange = /^deploy\.sh: --origin-read-timeout must be a number of seconds from 20 to 180, not '/;
    const quota = (given) => new RegExp(
        `^deploy\\.sh: --origin-read-timeout must be a number of seconds from 20 to 180, not '${given}': ` +
        'more needs a CloudFront quota increase');
    const completionRange = /^deploy\.sh: --completion-timeout must be 0 \(none\) or a number of seconds from 30 to 86400, not '/;
    const belowRead = (read, given, source) => new RegExp(
        `^deploy\\.sh: --completion-timeout must be at least the origin read timeout, ${read} s \\(${source}\\), ` +
        `not ${given}: CloudFront refuses a shorter one\\n$`);
    const belowMargin = (given) => new RegExp(
        `^deploy\\.sh: --completion-timeout must be 0 \\(none\\) or at least 30 s, not ${given}: streams end 10 s before it\\n$`);
    for (const [args, message] of [
        // Not numbers.
        [['--origin-read-timeout', 'soon'], readRange],
        [['--origin-read-timeout', '30s'], readRange],
        [['--origin-read-timeout', '-30'], readRange],
        [['--origin-read-timeout', '1e2'], readRange],
        [['--origin-read-timeout', '30.5'], readRange],
        [['--origin-read-timeout', ' 30'], readRange],
        [['--completion-timeout', 'never'], completionRange],
        [['--completion-timeout', '600s'], completionRange],
        [['--completion-timeout', '-1'], completionRange],
        [['--completion-timeout', '90.5'], completionRange],
        [['--completion-timeout', '0x40'], completionRange],
        // Out of range.
        [['--origin-read-timeout', '0'], readRange],
        [['--origin-read-timeout', '19'], readRange],
        [['--origin-read-timeout', '181'], quota(181)],
        [['--origin-read-timeout', '600'], quota(600)],
        [['--completion-timeout', '86401'], completionRange],
        [['--completion-timeout', '1000000'], completionRange],
        // Below the origin read timeout: the option's, or the template's default.
        [['--origin-read-timeout', '60', '--completion-timeout', '59'], belowRead(60, 59, '--origin-read-timeout')],
        [['--completion-timeout', '45', '--origin-read-timeout', '180'], belowRead(180, 45, '--origin-read-timeout')],
        [['--completion-timeout', '29'], belowRead(30, 29, "the template's default; see --origin-read-timeout")],
        [['--completion-timeout', '1'], belowRead(30, 1, "the template's default; see --origin-read-timeout")],
        // At or above a short origin read timeout, but no time for a stream.
        [['--origin-read-timeout', '20', '--completion-timeout', '29'], belowMargin(29)],
        [['--origin-read-timeout', '20', '--completion-timeout', '20'], belowMargin(20)],
    ]) {
        const r = deploy(args);
        assert.equal(r.status, 1, args.join(' '));
        assert.match(r.stderr, message, args.join(' '));
        assert.deepEqual(r.calls, [], `${args.join(' ')}: no tool ran`);
    }
});

test('the main region defaults to the configured one, else us-east-1', () => {
    const configured = deploy([], { env: { FAKE_CONFIGURED_REGION: 'eu-central-1' } });
    assert.equal(configured.status, 0, configured.stderr);
    assert.equal(after(deploys(configured.calls)[1].argv, '--region'), 'eu-central-1');

    const none = deploy([]);
    assert.equal(none.status, 0, none.stderr);
    assert.equal(after(deploys(none.calls)[1].argv, '--region'), 'us-east-1');
});

for (const [name, args, tools] of [
    ['aws', [], ['sam', 'docker']],
    ['sam', [], ['aws', 'docker']],
    ['docker', [], ['aws', 'sam', 'cargo-lambda']],
    ['cargo-lambda', ['--package-type', 'zip'], ['aws', 'sam', 'docker']],
]) {
    test(`a missing ${name} fails early, names it, and deploys nothing`, () => {
        const r = deploy(args, { tools });
        assert.notEqual(r.status, 0);
        assert.match(r.stderr, new RegExp(`missing prerequisite: ${name} `));
        assert.deepEqual(r.calls, [], 'no tool ran');
    });
}

test('a stopped docker daemon fails before anything is built', () => {
    const r = deploy([], { env: { FAKE_DOCKER_DOWN: '1' } });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /docker .*not running/);
    assert.deepEqual(builds(r.calls), []);
    assert.deepEqual(deploys(r.calls), []);
});

test('missing credentials fail before anything is built', () => {
    const r = deploy([], { env: { FAKE_NO_CREDENTIALS: '1' } });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /credentials/);
    assert.deepEqual(builds(r.calls), []);
    assert.deepEqual(deploys(r.calls), []);
});
