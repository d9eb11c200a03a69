//! The `gale` binary: command line → the matching `gale::cli` function → exit code.
//! Everything of substance lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = gale::cli::Args::parse();
    gale::cli::main(args).into()
}
