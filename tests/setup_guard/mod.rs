//! Pieces of `tests/setup_packages.rs`: finding element names in source
//! text (`scan`) and asking Debian about packages (`debian`).

pub mod debian;
pub mod scan;
