//! The `fleetgate` binary.

fn main() {
    println!(
        "fleetgate {}: the wire protocol, journal and sans-IO session engine are built; `serve`, `load` and `demo` are not yet",
        env!("CARGO_PKG_VERSION")
    );
}
