//! Config loading: any TOML text and `GATEWAY__…` variables give a config
//! that validates, or problems that each name an origin and a reason (never
//! a panic, never an empty list of problems).
#![no_main]

use std::collections::HashMap;

use gateway::Gateway;
use gateway::config::{Source, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The text up to the first NUL is the file; lines after it are
    // variables (`NAME=value`, prefixed with GATEWAY__ when not already).
    let (file, vars) = text.split_once('\0').unwrap_or((&text, ""));
    let env: HashMap<String, String> = vars
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| {
            let name = if name.starts_with("GATEWAY__") {
                name.to_string()
            } else {
                format!("GATEWAY__{name}")
            };
            (name, value.to_string())
        })
        .collect();
    match load(
        Source::Text {
            origin: "fuzz.toml",
            text: file,
        },
        Some(env),
    ) {
        Ok(config) => {
            assert!(config.validate().is_empty(), "a loaded config validates");
            // Building the gateway from it: routes, paths, templates. A
            // runtime without drivers holds whatever it spawns (a JWKS
            // fetch), which never runs and goes with it; a JWKS file could
            // name anything on this machine (`/dev/zero`), so not those.
            if config.routes.values().all(|r| r.auth.jwks_file.is_none()) {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a runtime");
                let _entered = runtime.enter();
                let _ = Gateway::from_config(&config);
            }
        }
        Err(error) => {
            assert!(!error.problems.is_empty());
            for problem in &error.problems {
                assert!(
                    !problem.origin.is_empty() && !problem.reason.is_empty(),
                    "{problem:?}"
                );
            }
            let _ = error.to_string();
        }
    }
});
