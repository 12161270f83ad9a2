//! `eslstream-simulate` (also reached as `eslstream simulate`): a fake FreeSWITCH event socket
//! that plays realistic call traffic.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "eslstream-simulate",
    version,
    about = "A fake FreeSWITCH event socket that plays realistic call traffic"
)]
struct Cli {
    #[command(flatten)]
    args: eslstream_simulate::SimulateArgs,
}

fn main() -> ExitCode {
    ExitCode::from(eslstream_simulate::run_cli(Cli::parse().args) as u8)
}
