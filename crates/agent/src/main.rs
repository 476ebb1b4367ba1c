//! `drover-agent`: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    drover_agent::agent::main(drover_agent::Cli::parse())
}
