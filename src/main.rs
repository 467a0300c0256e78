//! The `tollgate` binary: parse the command line, run, map the outcome to an exit
//! code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tollgate::cli::Cli::parse();
    tollgate::telemetry::init(cli.log_format);
    match tollgate::commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "tollgate: error: {error}");
            ExitCode::FAILURE
        }
    }
}
