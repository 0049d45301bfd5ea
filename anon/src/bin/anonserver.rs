//! anonserver: serve one web page over UDP. See `anonserver --help`.

use std::process::ExitCode;

use anon::cli::{ServerArgs, init_tracing, server_main};
use clap::Parser;

fn main() -> ExitCode {
    let args = ServerArgs::parse();
    init_tracing();
    server_main(args)
}
