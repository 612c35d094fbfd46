#!/usr/bin/env bash
# Deploys the streaming gateway: first the edge stack (template_le.yaml, the
# Lambda@Edge edge hasher) in us-east-1, then the main stack (template.yaml)
# in the chosen region with the edge hasher's version ARN. Prints the
# distribution URL and a curl command at the end. Run with --help.
set -euo pipefail

EDGE_REGION=us-east-1

usage() {
    cat <<'USAGE'
Usage: deploy/deploy.sh [options]

Builds and deploys the streaming gateway with AWS SAM:
  1. the edge stack (deploy/template_le.yaml: the Lambda@Edge edge hasher)
     in us-east-1, where Lambda@Edge functions must live;
  2. the main stack (deploy/template.yaml: the gateway function, its
     Function URL, CloudFront) in the chosen region, with the edge hasher's
     version ARN.
Then prints the distribution URL and a `curl -N` command.

Options:
  --profile NAME         AWS CLI profile for every aws and sam command.
  --region REGION        Region of the main stack (default: the profile's
                         configured region, else AWS_REGION, else us-east-1).
  --stack-name NAME      Main stack name (default: streaming-gateway); the
                         edge stack is NAME-edge. At most 40 characters.
  --package-type TYPE    image (default): container image with the Lambda
                         Web Adapter, needs docker. zip: provided.al2023
                         with the gateway's native Lambda mode, needs
                         cargo-lambda.
  --function-timeout S   Lambda timeout in seconds, 30..900 (default 900).
                         Streams end 10 s before it; clients resume.
  --origin-read-timeout S
                         CloudFront's origin response timeout in seconds,
                         20..180 (default 30): the longest silence it allows
                         within a stream. Keep routes' heartbeat (15 s by
                         default) well under it. More than 180 needs a
                         CloudFront quota increase ("Response timeout per
                         origin") and a larger MaxValue in template.yaml.
  --completion-timeout S CloudFront's response completion timeout in seconds:
                         the longest one response may last. 0 (default):
                         none. Otherwise 30..86400 and at least the origin
                         read timeout; streams end 10 s before it, with
                         their last id. A stream lives the smallest of the
                         function timeout less 10 s, this less 10 s and its
                         route's max_lifetime: set it above the function
                         timeout to let a stream live the whole invocation.
  --config PATH          Gateway config file inside the image, e.g.
                         /etc/gateway/examples/fan-in.toml (config/ is
                         copied to /etc/gateway/). Image only.
  --subnets IDS          Comma-separated subnet ids: the function runs in
                         that VPC, to reach a bus there (ElastiCache,
                         RDS, Amazon MQ) for durable routes and brokers.
  --security-groups IDS  Comma-separated security group ids (with --subnets).
  --credential-cookie NAME
                         The cookie routes read credentials from (auth
                         from = ["cookie"], cookie_name, e.g. access_token):
                         CloudFront forwards it to the gateway, and no
                         other cookie. Default: none is forwarded.
  -h, --help             Show this help.

Prerequisites: aws (AWS CLI v2) with credentials, sam (AWS SAM CLI), and
docker (image) or cargo-lambda (zip).

--origin-read-timeout, --completion-timeout and --credential-cookie are
set on every deploy: one left out goes back to its default, not to the
value of the previous deploy.
USAGE
}

die() {
    printf 'deploy.sh: %s\n' "$*" >&2
    exit 1
}

step() {
    printf '==> %s\n' "$*" >&2
}

profile=""
region=""
stack_name="streaming-gateway"
package_type="image"
function_timeout="900"
origin_read_timeout="30"
origin_read_given=no
completion_timeout="0"
config_path=""
subnets=""
security_groups=""
credential_cookie=""

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --profile)
            need_value "$@"
            profile="$2"
            shift 2
            ;;
        --region)
            need_value "$@"
            region="$2"
            shift 2
            ;;
        --stack-name)
            need_value "$@"
            stack_name="$2"
            shift 2
            ;;
        --package-type)
            need_value "$@"
            package_type="$2"
            shift 2
            ;;
        --function-timeout)
            need_value "$@"
            function_timeout="$2"
            shift 2
            ;;
        --origin-read-timeout)
            need_value "$@"
            origin_read_timeout="$2"
            origin_read_given=yes
            shift 2
            ;;
        --completion-timeout)
            need_value "$@"
            completion_timeout="$2"
            shift 2
            ;;
        --config)
            need_value "$@"
            config_path="$2"
            shift 2
            ;;
        --subnets)
            need_value "$@"
            subnets="$2"
            shift 2
            ;;
        --security-groups)
            need_value "$@"
            security_groups="$2"
            shift 2
            ;;
        --credential-cookie)
            need_value "$@"
            credential_cookie="$2"
            shift 2
            ;;
        *)
            die "unknown option: $1 (see --help)"
            ;;
    esac
done

# Validate the options before touching anything.
case "$package_type" in
    image) template_package_type=Image ;;
    zip) template_package_type=Zip ;;
    *) die "--package-type must be image or zip, not '$package_type'" ;;
esac
if ! [[ "$function_timeout" =~ ^[0-9]{1,3}$ ]] ||
    ((10#$function_timeout < 30 || 10#$function_timeout > 900)); then
    die "--function-timeout must be a number of seconds from 30 to 900, not '$function_timeout'"
fi
function_timeout=$((10#$function_timeout))
# The template's MinValue and MaxValue; 180 s is CloudFront's most without
# a quota increase.
if ! [[ "$origin_read_timeout" =~ ^[0-9]{1,5}$ ]] || ((10#$origin_read_timeout < 20)); then
    die "--origin-read-timeout must be a number of seconds from 20 to 180, not '$origin_read_timeout'"
fi
if ((10#$origin_read_timeout > 180)); then
    die "--origin-read-timeout must be a number of seconds from 20 to 180, not '$origin_read_timeout': more needs a CloudFront quota increase and a larger MaxValue in deploy/template.yaml"
fi
origin_read_timeout=$((10#$origin_read_timeout))
# CloudFront refuses a completion timeout below the origin read timeout,
# which the template cannot check; and the gateway ends streams 10 s
# (cloudfront.completion_margin) before it, so 30 s leaves a stream 20.
if ! [[ "$completion_timeout" =~ ^[0-9]{1,5}$ ]] || ((10#$completion_timeout > 86400)); then
    die "--completion-timeout must be 0 (none) or a number of seconds from 30 to 86400, not '$completion_timeout'"
fi
completion_timeout=$((10#$completion_timeout))
if ((completion_timeout > 0 && completion_timeout < origin_read_timeout)); then
    origin_read_source="--origin-read-timeout"
    [[ "$origin_read_given" == yes ]] || origin_read_source="the template's default; see --origin-read-timeout"
    die "--completion-timeout must be at least the origin read timeout, ${origin_read_timeout} s (${origin_read_source}), not ${completion_timeout}: CloudFront refuses a shorter one"
fi
if ((completion_timeout > 0 && completion_timeout < 30)); then
    die "--completion-timeout must be 0 (none) or at least 30 s, not ${completion_timeout}: streams end 10 s before it"
fi
# CloudFormation stack names; ours also prefix account-wide CloudFront names.
[[ "$stack_name" =~ ^[A-Za-z][A-Za-z0-9-]{0,39}$ ]] ||
    die "--stack-name must be a letter then letters, digits or '-', at most 40 characters, not '$stack_name'"
if [[ -n "$config_path" && "$package_type" == zip ]]; then
    die "--config needs --package-type image: the zip package holds only the gateway binary"
fi
if [[ -n "$config_path" && "$config_path" != /* ]]; then
    die "--config takes a path inside the image, e.g. /etc/gateway/examples/fan-in.toml"
fi
if [[ -n "$subnets" && ! "$subnets" =~ ^subnet-[0-9a-f]{8,17}(,subnet-[0-9a-f]{8,17})*$ ]]; then
    die "--subnets takes subnet ids separated by commas (subnet-0abc1234,subnet-0def5678), not '$subnets'"
fi
if [[ -n "$security_groups" && ! "$security_groups" =~ ^sg-[0-9a-f]{8,17}(,sg-[0-9a-f]{8,17})*$ ]]; then
    die "--security-groups takes security group ids separated by commas (sg-0abc1234), not '$security_groups'"
fi
if [[ -n "$subnets" && -z "$security_groups" ]] || [[ -z "$subnets" && -n "$security_groups" ]]; then
    die "--subnets and --security-groups go together: a function in a VPC needs both"
fi
# The AllowedPattern of the template's CredentialCookie: a cookie name (an
# RFC 6265 token) without "'", which --parameter-overrides reads as quoting.
cookie_name_pattern='^[A-Za-z0-9!#$%&*+.^_`|~-]{0,128}$'
if [[ ! "$credential_cookie" =~ $cookie_name_pattern ]]; then
    die "--credential-cookie takes a cookie name of at most 128 letters, digits and !#\$%&*+-.^_\`|~ (e.g. access_token), not '$credential_cookie'"
fi

# Prerequisites, all checked before anything is built or deployed.
missing=()
command -v aws >/dev/null 2>&1 || missing+=("aws (AWS CLI v2: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html)")
command -v sam >/dev/null 2>&1 || missing+=("sam (AWS SAM CLI: https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/install-sam-cli.html)")
if [[ "$package_type" == image ]]; then
    command -v docker >/dev/null 2>&1 || missing+=("docker (builds the container image; or use --package-type zip)")
else
    command -v cargo-lambda >/dev/null 2>&1 || missing+=("cargo-lambda (builds the zip: https://www.cargo-lambda.info/guide/installation.html)")
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    printf 'deploy.sh: missing prerequisite: %s\n' "${missing[@]}" >&2
    exit 1
fi
if [[ "$package_type" == image ]] && ! docker info >/dev/null 2>&1; then
    die "docker is installed but not running (docker info failed): start the Docker daemon"
fi

# Possibly empty: expanded as ${aws_args[@]+"${aws_args[@]}"}, which bash 3.2
# (macOS) accepts under `set -u`.
aws_args=()
[[ -n "$profile" ]] && aws_args+=(--profile "$profile")

if [[ -z "$region" ]]; then
    region="$(aws ${aws_args[@]+"${aws_args[@]}"} configure get region 2>/dev/null || true)"
    [[ -n "$region" ]] || region="${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
fi

account="$(aws ${aws_args[@]+"${aws_args[@]}"} sts get-caller-identity --query Account --output text 2>/dev/null)" ||
    die "no usable AWS credentials: 'aws sts get-caller-identity' failed (run 'aws configure' or 'aws sso login', or pass --profile)"
[[ "$account" =~ ^[0-9]{12}$ ]] ||
    die "unexpected answer from 'aws sts get-caller-identity': '$account'"

# Everything runs from the repository root; SAM build output stays in deploy/.
script_dir="${BASH_SOURCE[0]%/*}"
[[ "$script_dir" != "${BASH_SOURCE[0]}" ]] || script_dir=.
cd "$script_dir/.."
build_dir="deploy/.aws-sam"
edge_stack="${stack_name}-edge"

stack_output() { # STACK REGION OUTPUT-KEY
    aws ${aws_args[@]+"${aws_args[@]}"} cloudformation describe-stacks \
        --stack-name "$1" --region "$2" \
        --query "Stacks[0].Outputs[?OutputKey=='$3'].OutputValue" \
        --output text
}

# 1. The edge stack, in us-east-1.
step "Building the edge hasher (deploy/template_le.yaml)"
sam build ${aws_args[@]+"${aws_args[@]}"} \
    --template-file deploy/template_le.yaml \
    --build-dir "$build_dir/edge" \
    --region "$EDGE_REGION"

step "Deploying stack $edge_stack in $EDGE_REGION"
sam deploy ${aws_args[@]+"${aws_args[@]}"} \
    --template-file "$build_dir/edge/template.yaml" \
    --stack-name "$edge_stack" \
    --region "$EDGE_REGION" \
    --resolve-s3 \
    --capabilities CAPABILITY_IAM \
    --no-confirm-changeset \
    --no-fail-on-empty-changeset

edge_arn="$(stack_output "$edge_stack" "$EDGE_REGION" EdgeHasherVersionArn)" ||
    die "could not read the EdgeHasherVersionArn output of stack $edge_stack"
[[ "$edge_arn" =~ ^arn:aws[a-zA-Z-]*:lambda:us-east-1:[0-9]{12}:function:[A-Za-z0-9_-]+:[0-9]+$ ]] ||
    die "stack $edge_stack gave no numbered version ARN for EdgeHasherVersionArn (got '$edge_arn')"
step "Edge hasher version: $edge_arn"

# 2. The main stack. `sam build` ignores the template's conditions, so only
# the function that PackageType selects is built.
build_args=()
deploy_args=()
if [[ "$package_type" == image ]]; then
    build_args+=(--exclude GatewayZipFunction)
    deploy_args+=(--resolve-image-repos)
else
    # SAM's Cargo Lambda builder is a beta feature.
    build_args+=(--exclude GatewayImageFunction --beta-features)
    # `sam deploy` wants an image repository for every image function in the
    # template, built or not; the unbuilt one is never pushed, nor created.
    deploy_args+=(--image-repositories "GatewayImageFunction=${account}.dkr.ecr.${region}.amazonaws.com/unused")
fi
# The timeouts are always given, defaults too: sam deploy keeps a parameter
# it is not given at its previous value.
parameters=(
    "EdgeHasherVersionArn=$edge_arn"
    "PackageType=$template_package_type"
    "FunctionTimeout=$function_timeout"
    "OriginReadTimeout=$origin_read_timeout"
    "ResponseCompletionTimeout=$completion_timeout"
)
[[ -n "$config_path" ]] && parameters+=("ConfigPath=$config_path")
[[ -n "$subnets" ]] && parameters+=("SubnetIds=$subnets" "SecurityGroupIds=$security_groups")
# Always given: sam deploy keeps a parameter it is not given at its previous
# value, and a deploy without --credential-cookie forwards no cookie. `""` is
# how --parameter-overrides writes the empty string.
if [[ -n "$credential_cookie" ]]; then
    parameters+=("CredentialCookie=$credential_cookie")
else
    parameters+=('CredentialCookie=""')
fi

step "Building the gateway ($package_type, deploy/template.yaml)"
sam build ${aws_args[@]+"${aws_args[@]}"} \
    --template-file deploy/template.yaml \
    --build-dir "$build_dir/main" \
    --region "$region" \
    "${build_args[@]}"

step "Deploying stack $stack_name in $region"
sam deploy ${aws_args[@]+"${aws_args[@]}"} \
    --template-file "$build_dir/main/template.yaml" \
    --stack-name "$stack_name" \
    --region "$region" \
    --resolve-s3 \
    "${deploy_args[@]}" \
    --capabilities CAPABILITY_IAM \
    --no-confirm-changeset \
    --no-fail-on-empty-changeset \
    --parameter-overrides "${parameters[@]}"

distribution_url="$(stack_output "$stack_name" "$region" DistributionUrl)" ||
    die "could not read the DistributionUrl output of stack $stack_name"
curl_command="$(stack_output "$stack_name" "$region" CurlCommand)" ||
    die "could not read the CurlCommand output of stack $stack_name"

printf '\nThe gateway is deployed (a new distribution takes a few minutes to reach every edge location).\n\n'
printf 'Distribution URL: %s\n' "$distribution_url"
printf 'Watch a stream:   %s\n' "$curl_command"
