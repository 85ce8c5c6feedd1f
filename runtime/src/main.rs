fn main() {
    if std::process::id() == 1 {
        kiln_runtime::init::main();
    }
}
