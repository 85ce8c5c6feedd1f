//! PID 1: read /etc/kiln/appliance.toml, load modules, bind devices and run
//! the appliance's VMs. (Written by the lead; this is a placeholder.)

/// Entry point when the runtime runs as PID 1.
pub fn main() {
    println!("kiln-runtime: PID 1 mode is not implemented yet");
}
