//! The regcred binary: parse the command line, pick a runtime, turn the outcome into an
//! exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use regcred::cli::Cli;
use regcred::{Exit, telemetry};

fn main() -> ExitCode {
    // One TLS provider for kube and the AWS SDK alike.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(&cli.log) {
        #[allow(clippy::print_stderr)] // Logging is what failed to start.
        {
            eprintln!("regcred: {e}");
        }
        return ExitCode::from(Exit::Usage as u8);
    }
    let runtime = match cli.command.runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    let exit = match runtime.block_on(cli.command.dispatch()) {
        Ok(exit) => exit,
        Err(e) => {
            let exit = e.exit();
            tracing::error!("{}", regcred::chain(&e));
            exit
        }
    };
    ExitCode::from(exit as u8)
}
