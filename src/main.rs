//! The `fleetgate` binary: the global allocator, then the command line
//! ([`fleetgate::tools::cli`]).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fleetgate::tools::cli::main()
}
