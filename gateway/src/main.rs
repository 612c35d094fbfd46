//! The `gateway` binary: [`gateway::cli::main`].

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
