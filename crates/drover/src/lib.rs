//! The `drover` command: `drover serve` runs the server; every other subcommand is an admin client
//! of the REST API (the same API the web UI and scripts use).
//!
//! # Layout
//! - [`serve`]: configuration (defaults, TOML file, environment, flags) and running the server.
//! - [`bench`]: `drover bench`, reproducible benchmarks against a real server.
//! - [`sim`]: `drover sim`, a simulated fleet (crate `drover-sim`) against a server.
//! - [`demo`]: `drover demo`, a server, releases and a simulated fleet in one process, narrating
//!   a bad rollout rolled back and a good one completed.
//! - [`cli`]: admin subcommands (devices, groups, claims, tokens, audit), output and exit codes.

pub mod bench;
mod bench_dashboard;
mod bench_delta;
mod bench_device;
mod bench_download;
mod bench_mqtt;
mod bench_rollout_safety;
mod bench_rollout_scale;
pub mod cli;
pub mod demo;
pub mod serve;
pub mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Drover: fleet management and over-the-air updates for IoT devices.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about, propagate_version = true, after_help = cli::EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub client: cli::ClientOptions,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Drover server (admin API, device API, metrics).
    Serve(serve::ServeArgs),
    /// Create a new admin token directly in the store, when every admin token is lost.
    RecoverAdmin(serve::RecoverArgs),
    /// Run a benchmark against a real server on a fresh store (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run a simulated fleet (a scenario file) against a server, over the real device APIs.
    Sim(sim::SimArgs),
    /// Show what Drover does: a server, three releases and a simulated fleet in this process, with
    /// a bad rollout caught and rolled back and a good one completed, narrated.
    Demo(demo::DemoArgs),
    #[command(flatten)]
    Admin(cli::AdminCommand),
}

/// Entry point shared by the binary: parse, run, print errors in one line, map them to exit codes.
pub fn main() -> ExitCode {
    let args = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match args.command {
        Command::Serve(serve_args) => finish(runtime.block_on(serve::run(serve_args))),
        Command::RecoverAdmin(recover) => finish(runtime.block_on(serve::recover_admin(recover))),
        Command::Bench(command) => finish(runtime.block_on(bench::run(command))),
        Command::Sim(sim_args) => {
            let client = args.client;
            finish(runtime.block_on(sim::run(sim_args, client.server, client.token, client.json)))
        }
        Command::Demo(demo_args) => finish(runtime.block_on(demo::run(demo_args))),
        Command::Admin(command) => runtime.block_on(cli::run(args.client, command)),
    }
}

/// Prints a server-side command's error chain in one line; exit code 1 on failure.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks every subcommand's arguments (unique names, valid defaults) only when that
    /// subcommand is parsed in a debug build; this checks them all at once.
    #[test]
    fn every_subcommand_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
