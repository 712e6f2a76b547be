//! Kernel BTF as a broken or hostile file could present it: parsing and member lookups accept
//! or refuse, never panic or loop.
//!
//! Run by `cargo xtask test` and `cargo xtask fuzz`.

#![no_main]

use latch_agent::kernel::btf::Btf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data.to_vec()) {
        let _ = btf.member_offset("linux_binprm", "filename");
        let _ = btf.member_offset("", "");
    }
});
