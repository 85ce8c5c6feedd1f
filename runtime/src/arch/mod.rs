//! Architecture support. kiln targets x86-64 hosts only (VT-x or AMD-V).

pub mod x86_64;
