//! anonclient: fetch the page an anonserver serves. See `anonclient --help`.

use std::process::ExitCode;

use anon::cli::{ClientArgs, client_main, init_tracing};
use clap::Parser;

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    init_tracing();
    client_main(args)
}
