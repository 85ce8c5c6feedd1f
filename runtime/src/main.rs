//! `kiln-runtime run CONFIG.toml`: run one VM on this host's KVM.
//! As PID 1 it is the appliance's init instead.

use kiln_abi::error::Chain;
use kiln_abi::exit::{CODE_USAGE, CODE_VMM_ERROR};
use kiln_runtime::status::{Emit, StatusLine, VmState};
use kiln_runtime::vmm;
use kiln_schema::config::{self, KeyPath, VmSpec};
use std::path::Path;

const USAGE: &str = "usage: kiln-runtime run CONFIG.toml\n       kiln-runtime --version";

fn main() {
    if std::process::id() == 1 {
        kiln_runtime::init::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version" | "-V"] => {
            println!("kiln-runtime {}", env!("CARGO_PKG_VERSION"));
            0
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            0
        }
        ["run", file] => run(Path::new(file)),
        _ => {
            eprintln!("{USAGE}");
            CODE_USAGE
        }
    };
    std::process::exit(code);
}

fn run(file: &Path) -> i32 {
    // A VM config as users write it: its `[test]` table is `kiln test`'s
    // and ignored here, and a source other than a file is refused below.
    let (spec, src) = match config::load::<VmSpec>(file) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("kiln-runtime: {}", Chain::new(&e));
            return CODE_USAGE;
        }
    };
    let base_dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = spec.name.as_str();
    if let Err(e) = spec.check(file, &src, &KeyPath::root(), base_dir) {
        eprintln!("kiln-runtime: {}", Chain::new(&e));
        return CODE_USAGE;
    }
    StatusLine::vm(name, VmState::Starting).print();
    let on_running = &mut || StatusLine::vm(name, VmState::Running).print();
    let options = vmm::RunOptions::from_env();
    match vmm::run_form(&spec).and_then(|cfg| vmm::run_with(&cfg, base_dir, options, on_running)) {
        Ok(exit) => {
            exit.status_line(name).print();
            exit.exit_code()
        }
        Err(e) => {
            // The status line carries the whole error; a copy on stderr
            // would reach the appliance console unordered with it.
            StatusLine::vm(name, VmState::Failed)
                .with_code(CODE_VMM_ERROR)
                .with_reason(Chain::new(&e))
                .print();
            CODE_VMM_ERROR
        }
    }
}
