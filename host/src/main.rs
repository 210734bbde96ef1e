//! `vsockenc-host`: placeholder until the daemon lands (issue 4).

fn main() {
    eprintln!("vsockenc-host: the daemon is not implemented yet");
    std::process::exit(2);
}
