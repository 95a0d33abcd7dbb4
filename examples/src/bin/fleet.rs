//! The fleet simulation (the project's main job).

fn main() {
    eprintln!("fleet: not yet available (the fleet simulation lands with the end-to-end sync)");
}
