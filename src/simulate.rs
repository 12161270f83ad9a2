//! Simulator.
#[derive(clap::Args)]
pub struct SimulateArgs {}
pub fn run_cli(_a: SimulateArgs) -> i32 {
    0
}
